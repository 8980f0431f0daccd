"""The world the propagation benchmark builds: R routes and C consumers, each consumer a
WsConsumer with its own KeyAuth Secret, all on one echo Service.

As objects for the API emulator, and as manifest files the way a user keeps them:
routes and consumers in files of ``PER_FILE`` each (a team's consumers in one file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

try:  # libyaml's emitter where available: writing 100k documents in Python takes long
    from yaml import CSafeDumper as Dumper
except ImportError:  # pragma: no cover
    from yaml import SafeDumper as Dumper  # type: ignore[assignment]

PER_FILE = 100
CR = "wsgate.io/v1alpha1"


def route(i: int) -> dict[str, Any]:
    return {"apiVersion": CR, "kind": "WsRoute",
            "metadata": {"name": f"route-{i}", "namespace": "default"},
            "spec": {"paths": [{"type": "Prefix", "value": f"/r{i}"}],
                     "backend": {"service": {"name": "echo", "port": 8080}},
                     "auth": {"methods": ["KeyAuth"]}}}


def key_secret(i: int, key: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": f"user-{i}-key", "namespace": "default",
                         "labels": {"wsgate.io/credential": "true"}},
            "stringData": {"key": key}}


def consumer(i: int) -> dict[str, Any]:
    return {"apiVersion": CR, "kind": "WsConsumer",
            "metadata": {"name": f"user-{i}", "namespace": "default"},
            "spec": {"credentials": [{"type": "KeyAuth",
                                      "secretRef": {"name": f"user-{i}-key"}}]}}


def backend(echo_port: int) -> list[dict[str, Any]]:
    return [
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": "echo", "namespace": "default"},
         "spec": {"ports": [{"name": "ws", "port": 8080, "targetPort": echo_port}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": "echo-1", "namespace": "default",
                      "labels": {"kubernetes.io/service-name": "echo"}},
         "addressType": "IPv4",
         "ports": [{"name": "ws", "port": echo_port, "protocol": "TCP"}],
         "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}]},
    ]


def original_key(i: int) -> str:
    return f"key-{i}"


def objects(routes: int, consumers: int, echo_port: int) -> list[dict[str, Any]]:
    found = backend(echo_port) + [route(i) for i in range(routes)]
    for i in range(consumers):
        found += [key_secret(i, original_key(i)), consumer(i)]
    return found


def consumer_text(first: int, keys: dict[int, str]) -> str:
    """The YAML of the file holding consumers first..first+PER_FILE-1 (with their
    Secrets)."""
    docs = []
    for i in range(first, first + PER_FILE):
        if i in keys:
            docs += [key_secret(i, keys[i]), consumer(i)]
    return yaml.dump_all(docs, Dumper=Dumper, sort_keys=False)


def consumer_path(directory: Path, first: int) -> Path:
    return directory / f"consumers-{first // PER_FILE:05d}.yaml"


def replace_file(path: Path, text: str) -> None:
    """Write ``text`` to a file beside ``path`` and rename it over ``path``: a watcher
    never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def consumer_file(directory: Path, first: int, keys: dict[int, str]) -> Path:
    """Write the file holding consumers first..first+PER_FILE-1 (with their Secrets)."""
    path = consumer_path(directory, first)
    replace_file(path, consumer_text(first, keys))
    return path


def write_files(directory: Path, routes: int, consumers: int, echo_port: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "backend.yaml").write_text(yaml.dump_all(backend(echo_port), Dumper=Dumper))
    for first in range(0, routes, PER_FILE):
        docs = [route(i) for i in range(first, min(routes, first + PER_FILE))]
        (directory / f"routes-{first // PER_FILE:05d}.yaml").write_text(
            yaml.dump_all(docs, Dumper=Dumper, sort_keys=False))
    keys = {i: original_key(i) for i in range(consumers)}
    for first in range(0, consumers, PER_FILE):
        consumer_file(directory, first, keys)
