"""`make e2e` without what it needs: it stops before doing anything, exit status 2,
naming what is missing (README, "Run it on kind"). These run everywhere: the tools are
absent or stand-ins."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.e2e.test_kind import TOOLS
from tests.support import ROOT

SETUP = ROOT / "tests" / "e2e" / "setup.sh"


def run_setup(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["/bin/bash", str(SETUP)], capture_output=True, text=True,
                          timeout=30, env={"PATH": str(path)}, check=False)


IMAGE_ID = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"


def stand_ins(directory: Path, *tools: str, docker_info_fails: bool = False) -> Path:
    """Executables that record their calls instead of doing anything (docker says its
    image's ID when asked)."""
    directory.mkdir()
    log = directory / "calls"
    for tool in tools:
        script = directory / tool
        lines = ["#!/bin/sh", f'echo "{tool} $*" >> {log}']
        if tool == "docker":
            lines.append('[ "$1" = info ] && exit ' + ("1" if docker_info_fails else "0"))
            lines.append(f'[ "$1" = image ] && echo {IMAGE_ID}')
        script.write_text("\n".join([*lines, "exit 0", ""]))
        script.chmod(0o755)
    for tool in ("grep", "sed", "cut"):  # what the script itself uses
        (directory / tool).symlink_to(shutil.which(tool))
    return directory


def test_without_the_tools_it_names_each_missing_one_and_exits_2(tmp_path):
    result = run_setup(stand_ins(tmp_path / "bin", "kubectl", "docker"))
    assert result.returncode == 2
    assert result.stderr.splitlines()[0] == (
        "make e2e needs kind, docker, kubectl and helm on PATH; missing: kind helm.")
    assert not (tmp_path / "bin" / "calls").exists()  # nothing was run
    assert TOOLS == ("kind", "docker", "kubectl", "helm")

    nothing = run_setup(stand_ins(tmp_path / "empty"))
    assert nothing.returncode == 2
    assert "missing: kind docker kubectl helm." in nothing.stderr


def test_without_a_docker_engine_it_says_so_and_exits_2(tmp_path):
    tools = stand_ins(tmp_path / "bin", *TOOLS, docker_info_fails=True)
    result = run_setup(tools)
    assert result.returncode == 2
    assert "make e2e needs a Docker engine" in result.stderr
    assert (tools / "calls").read_text() == "docker info\n"  # and nothing else ran


def test_each_build_is_a_new_tag_and_the_proxies_drain_briefly(tmp_path):
    # What a second `make e2e` relies on: the chart's pods run the image just built
    # (a tag of its own, so `helm upgrade` rolls them), the echo pods are restarted onto
    # the new wsgate:dev, and sessions on a replaced proxy drain for 2 s, not 30.
    tools = stand_ins(tmp_path / "bin", *TOOLS)
    result = run_setup(tools)
    assert result.returncode == 0, result.stderr
    tag = "dev-0123456789ab"
    assert (tools / "calls").read_text().splitlines() == [
        "docker info",
        "kind get clusters",
        "kind create cluster --name wsgate --config kind-config.yaml",
        "kubectl config use-context kind-wsgate",
        "docker build -t wsgate:dev .",
        "docker image inspect -f {{.Id}} wsgate:dev",
        f"docker tag wsgate:dev wsgate:{tag}",
        f"kind load docker-image wsgate:{tag} wsgate:dev --name wsgate",
        "kubectl apply -f crds/",
        "helm upgrade --install wsgate helm/wsgate --namespace wsgate-system "
        f"--create-namespace --set image.tag={tag} --set service.type=NodePort "
        "--set service.nodePort=30080 --set proxy.drainSeconds=2 --wait --timeout 5m",
        "kubectl apply -f examples/kind/",
        "kubectl rollout restart deployment/echo",
        "kubectl rollout status deployment/echo --timeout=120s",
    ]
