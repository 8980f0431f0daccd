"""The image's install step, without Docker: the project built as a wheel and installed
into a fresh virtual environment (as the Dockerfile does), then run from there."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from tests.support import ROOT
from wsgate.processes import WsgateProcess


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--wheel-dir", str(work / "wheels"), str(ROOT)], check=True, timeout=300)
    (wheel,) = (work / "wheels").glob("wsgate-*.whl")
    env_dir = work / "env"
    venv.create(env_dir)  # pip is the test environment's, run for this one (--python)
    # The dependencies come from the test environment, on a path entry after the fresh
    # environment's own site-packages (downloading and installing them again cost 90 s of
    # CI's budget); the wheel's packages and commands are installed for real, and
    # `pip check` proves the wheel's declared requirements are all met.
    python = env_dir / "bin" / "python"
    fresh_site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    Path(fresh_site, "zz-test-dependencies.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n")
    pip = [sys.executable, "-m", "pip", "--python", str(python)]
    subprocess.run([*pip, "install", "--quiet", "--no-deps", str(wheel)], check=True, timeout=300)
    subprocess.run([*pip, "check"], check=True, timeout=120)
    return env_dir


@pytest.mark.timeout(900)
def test_wsgate_help_from_the_installed_wheel(installed):
    result = subprocess.run([str(installed / "bin" / "wsgate"), "--help"], capture_output=True,
                            text=True, check=True, cwd=installed, timeout=60)
    for command in ("proxy", "echo", "compile", "operator"):
        assert command in result.stdout


async def test_wsgate_echo_from_the_installed_wheel(installed):
    # Run outside the checkout, by the fresh environment's own Python.
    python = str(installed / "bin" / "python")
    with WsgateProcess("echo", "--listen", "127.0.0.1:0", "--id", "wheel", python=python,
                       cwd=str(installed)) as echo:
        async with connect(f"ws://127.0.0.1:{echo.port}/") as ws:
            assert await ws.recv() == "Request served by wheel"
            await ws.send("from the wheel")
            assert await ws.recv() == "from the wheel"



def test_the_installed_packages_are_the_wheels(installed):
    where = subprocess.run(
        [str(installed / "bin" / "python"), "-c",
         "import wsgate, wsgate_proxy, wsgate_operator as o; print(o.__file__)"],
        capture_output=True, text=True, check=True, cwd=installed, timeout=60)
    assert where.stdout.startswith(str(installed))  # the wheel's copy, not the checkout's
