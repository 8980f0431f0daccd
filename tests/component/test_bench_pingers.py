"""bench/propagation.py's live sessions: their round trips are the proxy's, not the
benchmark's own stalls; and bench/spy.py names what a proxy ran while they were slow."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from bench import spy
from bench.propagation import Pingers
from tests.support import TOKEN, Admin, copy_quickstart, eventually, metric_value
from wsgate.processes import WsgateProcess


@pytest.fixture(scope="module")
def proxy(tmp_path_factory, echo_a, echo_b) -> Iterator[WsgateProcess]:
    manifests = copy_quickstart(tmp_path_factory.mktemp("quickstart"), echo_a.port, echo_b.port)
    with WsgateProcess("proxy", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
                       "--manifests", str(manifests), env={"WSGATE_ADMIN_TOKEN": TOKEN},
                       name="proxy") as proc:
        proc.wait_for_log(lambda r: r.get("event") == "config applied")
        yield proc


def hold_this_loop(seconds: float) -> tuple[float, float]:
    """This process's loop held, as a Popen or a collection in the benchmark holds it."""
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        pass
    return start, time.perf_counter()


async def relayed_past(admin: Admin, count: float) -> float:
    """Waits until the proxy has relayed more than ``count`` messages; returns how many."""
    async def check() -> float:
        relayed = metric_value(await admin.metrics(), "wsgate_relayed_messages_total",
                               direction="client_to_upstream")
        assert relayed > count
        return relayed
    return await eventually(check)


@pytest.mark.serial  # bounds round trips: not with other tests' load on the cores
async def test_a_stall_of_the_benchmark_is_no_round_trip(proxy) -> None:
    admin = Admin(proxy.admin_port)
    url = f"ws://127.0.0.1:{proxy.port}/.ws"
    async with Pingers([url], ["john-key", "john-key"]) as pingers:
        before = await relayed_past(admin, 20)
        stall_start, stall_end = hold_this_loop(0.5)
        await relayed_past(admin, before + 20)
    during = [rtt for sent, rtt, _proxy in pingers.samples
              if sent <= stall_end and sent + rtt >= stall_start]
    # The sessions kept pinging through this process's stall and never waited for it
    # (pinged from this process, they sent nothing meanwhile, and a ping in flight when
    # the stall began counted all 500 ms of it).
    assert len(during) >= 10
    assert max(during) < 0.25
    assert {proxy for _sent, _rtt, proxy in pingers.samples} == {0}
    assert pingers.failures == 0
    assert pingers.phase("stall", stall_start, stall_end)["count"] >= len(during) - 2


async def test_what_the_proxy_ran_is_named_for_a_window(proxy, tmp_path) -> None:
    admin = Admin(proxy.admin_port)
    url = f"ws://127.0.0.1:{proxy.port}/.ws"
    with spy.Recording([proxy.proc.pid], tmp_path, "test") as recording:
        async with Pingers([url], ["john-key"]):
            before = await relayed_past(admin, 0)
            start = time.perf_counter()
            await relayed_past(admin, before + 20)
            end = time.perf_counter()
    trace = recording.traces[0]
    assert trace is not None
    assert recording.recorded[0][0].exists()
    held = trace.held(start, end)
    # An idle proxy's loop thread waits for events (in uvloop's C) most of any window.
    share, stack = held["MainThread"][0]
    assert stack[-1].startswith("Runner.run ("), spy.described(held)
    assert share > 0.5, spy.described(held)
