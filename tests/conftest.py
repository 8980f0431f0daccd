from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.support import TOKEN
from wsgate.processes import WsgateProcess


@pytest.fixture(scope="module")
def echo_a() -> Iterator[WsgateProcess]:
    with WsgateProcess("echo", "--listen", "127.0.0.1:0", "--id", "a", name="echo a") as proc:
        yield proc


@pytest.fixture(scope="module")
def echo_b() -> Iterator[WsgateProcess]:
    with WsgateProcess("echo", "--listen", "127.0.0.1:0", "--id", "b", name="echo b") as proc:
        yield proc


@pytest.fixture
def start_proxy() -> Iterator[Callable[..., WsgateProcess]]:
    """Start proxies on free ports (admin token set); all are stopped after the test."""
    started: list[WsgateProcess] = []

    def start(*args: str, token: str | None = TOKEN) -> WsgateProcess:
        env = {"WSGATE_ADMIN_TOKEN": token} if token else {"WSGATE_ADMIN_TOKEN": ""}
        if "--drain-seconds" not in args:
            args = (*args, "--drain-seconds", "0")
        proc = WsgateProcess("proxy", "--listen", "127.0.0.1:0", "--admin-listen",
                             "127.0.0.1:0", *args, env=env, name="proxy")
        started.append(proc)
        return proc.start()

    yield start
    for proc in started:
        proc.stop()
        print(f"--- {proc.name} log ---\n{proc.output()}")  # shown when the test failed
