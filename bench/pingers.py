"""Live sessions pinging through the proxies, in a process of their own.

The benchmark that starts this process also makes the writes, polls for enforcement,
starts the operator and renders its tables; had it held the sessions too, every stall of
its own loop (a Popen, a poll's handshakes, a collection) would have counted as the
proxy's round trip. Here the sessions are the only thing the loop runs, and a ticker
records how late the loop itself ever was, so a slow round trip can be told from a
stall of this process.

Protocol (``python -m bench.pingers``): the first line of the standard input is a JSON
list of ``[proxy, url, key]`` (not an argument: keys stay out of the process list); the
process opens every session, prints ``ready`` on its standard output, pings every
``--interval`` seconds until its standard input ends, then
prints one JSON object: the samples as ``[sent, rtt, proxy]`` (``sent`` from
``time.perf_counter()``, CLOCK_MONOTONIC on Linux, the same clock as the benchmark's),
the failures, and the loop's longest gap.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import time
from array import array

import aiohttp

# The ticker's period: a gap is how much later than this the loop came back.
TICK_SECONDS = 0.002


class Recorder:
    """Every round trip, with when it was sent and through which proxy; kept in arrays
    (no objects for the collector to walk while the sessions run)."""

    def __init__(self) -> None:
        self.sent = array("d")
        self.rtt = array("d")
        self.proxy = array("b")
        self.failures = 0
        self.longest_gap = 0.0

    def add(self, sent: float, rtt: float, proxy: int) -> None:
        self.sent.append(sent)
        self.rtt.append(rtt)
        self.proxy.append(proxy)

    def as_json(self) -> str:
        return json.dumps({
            "samples": [[s, r, p] for s, r, p in zip(self.sent, self.rtt, self.proxy,
                                                       strict=True)],
            "failures": self.failures, "longest_loop_gap": self.longest_gap})


async def ping(ws: aiohttp.ClientWebSocketResponse, proxy: int, interval: float,
               recorder: Recorder, stop: asyncio.Event) -> None:
    payload = b"x" * 16
    while not stop.is_set():
        sent = time.perf_counter()
        await ws.send_bytes(payload)
        message = await ws.receive()
        if message.type != aiohttp.WSMsgType.BINARY:
            recorder.failures += 1
            return
        recorder.add(sent, time.perf_counter() - sent, proxy)
        await asyncio.sleep(interval)


async def tick(recorder: Recorder, stop: asyncio.Event) -> None:
    while not stop.is_set():
        before = time.perf_counter()
        await asyncio.sleep(TICK_SECONDS)
        recorder.longest_gap = max(recorder.longest_gap,
                                   time.perf_counter() - before - TICK_SECONDS)


async def run(interval: float) -> None:
    recorder, stop = Recorder(), asyncio.Event()
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    sessions = json.loads(await stdin.readline())
    async with aiohttp.ClientSession() as http:
        sockets = []
        for proxy, url, key in sessions:
            ws = await http.ws_connect(url, headers={"apikey": key}, max_msg_size=0)
            await ws.receive()  # the greeting
            sockets.append((proxy, ws))
        gc.collect()
        gc.freeze()
        tasks = [asyncio.create_task(ping(ws, proxy, interval, recorder, stop))
                 for proxy, ws in sockets]
        tasks.append(asyncio.create_task(tick(recorder, stop)))
        print("ready", flush=True)
        await stdin.read()  # until the benchmark closes our standard input
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        for _proxy, ws in sockets:
            await ws.close()
    print(recorder.as_json(), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--interval", type=float, default=0.01,
                        help="seconds between a session's answer and its next ping")
    args = parser.parse_args()
    asyncio.run(run(args.interval))


if __name__ == "__main__":
    main()
