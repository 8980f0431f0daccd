"""kubectl, where it is installed, against the emulator: apply the examples, read the
printer columns the CRDs define, with the operator filling in the status."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess

import pytest

from tests.support import QUICKSTART, eventually

KUBECTL = shutil.which("kubectl")
pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed here")


async def kubectl(*args: str) -> str:
    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run([KUBECTL, *args], capture_output=True, text=True, timeout=60,
                              env=os.environ.copy(), check=False)

    result = await asyncio.to_thread(run)
    assert result.returncode == 0, result.stderr
    return result.stdout


def table(text: str) -> list[dict[str, str]]:
    lines = [line for line in text.splitlines() if line.strip()]
    header = lines[0]
    starts = [i for i, c in enumerate(header) if c != " " and (i == 0 or header[i - 1] == " ")]
    names = header.split()
    rows = []
    for line in lines[1:]:
        cells = [line[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
        rows.append(dict(zip(names, cells, strict=True)))
    return rows


async def test_apply_the_quickstart_and_get_the_printer_columns(api, proxies, operator):
    proxies.start("proxy-a", 0)
    out = await kubectl("apply", "--validate=false", "-f", str(QUICKSTART))
    assert "wsroute.wsgate.io/echo created" in out
    assert "wsconsumer.wsgate.io/john created" in out

    async def ready():
        (route,) = table(await kubectl("get", "wsr"))
        # A route without hosts shows nothing under HOSTS (not "[]").
        assert route == {"NAME": "echo", "HOSTS": "", "PATH": "/.ws", "BACKEND": "echo",
                         "ENDPOINTS": "2", "READY": "True", "AGE": route["AGE"]}
        (consumer,) = table(await kubectl("get", "wsc"))
        assert (consumer["USERNAME"], consumer["CREDENTIALS"], consumer["READY"]) == (
            "john", "1", "True")

    await eventually(ready, timeout=20, interval=0.3)
    both = await kubectl("get", "wsgate")
    assert "wsroute.wsgate.io/echo" in both
    assert "wsconsumer.wsgate.io/john" in both
