"""Password hashes in the compiled config, and verifying against them.

The format is part of the config contract: ``pbkdf2_sha256$<iterations>$<salt>$<key>``
(base64 salt and derived key). PBKDF2-HMAC-SHA256 with 100,000 iterations costs about
30 ms per verification here: too slow for every handshake, so successful
verifications are remembered in a bounded cache (see PasswordVerifier), and the
slow hash runs on a small thread pool, off the event loop (hashlib releases the GIL).

The pool's queue is bounded: wrong passwords are never cached, so a flood of them
would otherwise queue work without limit and make a legitimate first login wait
behind all of it (400 queued attempts: 8 s). A check is refused at once (503 with
Retry-After) when ``max_pending`` verifications are already waiting or running, or
when the expected wait (those ahead of it times the recent time per hash, over the
threads) exceeds MAX_WAIT_SECONDS: on a busy machine a hash takes several times its
30 ms, and the bound is on what the client waits, not on a count.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from .refusals import Overloaded

SCHEME = "pbkdf2_sha256"
ITERATIONS = 100_000
CACHE_ENTRIES = 10_000
HASH_THREADS = 2
MAX_PENDING = 32
MAX_WAIT_SECONDS = 0.5


def hash_password(password: str, salt: bytes, iterations: int = ITERATIONS) -> str:
    derived = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return "$".join((SCHEME, str(iterations), base64.b64encode(salt).decode(),
                     base64.b64encode(derived).decode()))


def _timed_verify(password: str, encoded: str) -> tuple[bool, float]:
    started = time.perf_counter()
    return verify_password(password, encoded), time.perf_counter() - started


def verify_password(password: str, encoded: str) -> bool:
    """The slow check: derive the key again and compare in constant time."""
    scheme, iterations, salt, expected = encoded.split("$")
    if scheme != SCHEME:
        return False
    derived = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(salt),
                                  int(iterations))
    return hmac.compare_digest(derived, base64.b64decode(expected))


class PasswordVerifier:
    """Verifies passwords against hashes, remembering the successes.

    The cache holds at most CACHE_ENTRIES entries, least recently used out first. An
    entry is a keyed BLAKE2b digest (key random per process) of the stored hash and the
    password: the cache holds no password, and an entry stops matching as soon as the
    stored hash changes (a new password, a new salt). Failures are not remembered: each
    wrong password pays the slow hash, on at most HASH_THREADS threads.
    """

    def __init__(self, max_entries: int = CACHE_ENTRIES, max_pending: int = MAX_PENDING
                 ) -> None:
        self._secret = os.urandom(32)
        self._known: OrderedDict[bytes, None] = OrderedDict()
        self._max = max_entries
        self.max_pending = max_pending
        self.pending = 0  # verifications waiting for or running on the pool
        self.hash_seconds = 0.03  # recent time per hash (moving average), for the wait bound
        self._pool = ThreadPoolExecutor(HASH_THREADS, thread_name_prefix="wsgate-pbkdf2")

    def _entry(self, password: str, encoded: str) -> bytes:
        data = encoded.encode() + b"\0" + password.encode()
        return hashlib.blake2b(data, key=self._secret, digest_size=32).digest()

    async def verify(self, password: str, encoded: str) -> bool:
        entry = self._entry(password, encoded)
        if entry in self._known:
            self._known.move_to_end(entry)
            return True
        expected_wait = (self.pending + 1) * self.hash_seconds / HASH_THREADS
        if self.pending >= self.max_pending or expected_wait > MAX_WAIT_SECONDS:
            raise Overloaded(f"too many password checks in progress ({self.pending}); "
                             "retry in a second")
        loop = asyncio.get_running_loop()
        job = self._pool.submit(_timed_verify, password, encoded)
        # Counted until the hash itself is done, even when the handshake waiting for it
        # has gone: the thread is busy all the same.
        self.pending += 1
        job.add_done_callback(lambda _job: _call_soon(loop, self._finished))
        valid, seconds = await asyncio.wrap_future(job)
        self.hash_seconds = 0.8 * self.hash_seconds + 0.2 * seconds
        if not valid:
            return False
        self._known[entry] = None
        if len(self._known) > self._max:
            self._known.popitem(last=False)
        return True

    def _finished(self) -> None:
        self.pending -= 1

    def __len__(self) -> int:
        return len(self._known)


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    with contextlib.suppress(RuntimeError):  # the loop has closed: nothing left to count
        loop.call_soon_threadsafe(callback)
