"""Wrong-password floods on BasicAuth: the PBKDF2 queue is bounded.

Each wrong password costs a slow hash (~30 ms) on a 2-thread pool and is never
cached; without a bound, 400 queued attempts made a legitimate first login wait 8 s.
"""

from __future__ import annotations

import asyncio
import base64
import time

from tests.support import (
    Bystander,
    credential_objects,
    handshake_head,
    raw_exchange,
    status_of,
)


def basic(user: str, password: str) -> str:
    return "Authorization: Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def test_a_legitimate_first_login_is_answered_promptly_during_a_flood(serve):
    served = await serve(*credential_objects("alice", "BasicAuth",
                                             {"username": "alice", "password": "s3cret!"}),
                         auth={"methods": ["KeyAuth", "BasicAuth"]})
    port = served.proxy.port
    wrong = handshake_head("/.ws", "h", basic("alice", "wrong"))
    right = handshake_head("/.ws", "h", basic("alice", "s3cret!"))

    async def login() -> tuple[int | None, bytes, float]:
        started = time.monotonic()
        answer = await raw_exchange(port, right, timeout=15)
        return status_of(answer), answer, time.monotonic() - started

    async with Bystander(served.url) as bystander:
        flood = [asyncio.create_task(raw_exchange(port, wrong, timeout=15)) for _ in range(300)]
        await asyncio.sleep(0.3)  # the queue is full by now
        status, answer, waited = await login()
        answers = await asyncio.gather(*flood)
    statuses = [status_of(a) for a in answers]
    print(f"FIGURES password flood: 300 wrong passwords, legitimate first login answered "
          f"{status} after {waited:.2f}s; flood answers 401 x{statuses.count(401)}, "
          f"503 x{statuses.count(503)}; bystander worst {bystander.worst:.2f}s")
    assert waited < 1.5, f"a legitimate first login waited {waited:.2f}s"
    assert status in (101, 503)
    if status == 503:
        assert b"Retry-After: 1" in answer
    assert set(statuses) <= {401, 503}
    assert statuses.count(503) > 0  # the queue was full: refused at once, not queued
    assert all(b"Retry-After: 1" in a for a in answers if status_of(a) == 503)
    bystander.assert_served()
    # Once the flood is over, the same login goes through.
    status, _, _ = await login()
    assert status == 101
