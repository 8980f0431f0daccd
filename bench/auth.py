"""Handshake cost per authentication method.

  - through the proxy: H handshakes, C at a time, for KeyAuth, BasicAuth, JWT HS256 and
    JWT RS256, against the same handshakes direct to the upstream (no auth), one run;
  - in process: the time the authenticator takes per handshake, for each method
    (BasicAuth both with its cache warm and cold: PBKDF2 is slow on purpose).
Prints tables; writes bench/results/auth.json.
"""

from __future__ import annotations

import argparse
import base64
import statistics
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import jwt
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from multidict import CIMultiDict, CIMultiDictProxy

from bench.common import echo_service, handshakes, run_main, table, write_results
from wsgate.processes import WsgateProcess
from wsgate_operator.compiler import Snapshot, compile_snapshot
from wsgate_proxy.auth import Authenticator
from wsgate_proxy.config import GatewayConfig
from wsgate_proxy.passwords import PasswordVerifier

HMAC = "bench-hmac-secret-of-at-least-32-bytes"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_PEM = RSA_KEY.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def objects(echo_port: int) -> list[dict]:
    def consumer(name: str, kind: str, data: dict[str, str]) -> list[dict]:
        return [
            {"apiVersion": "v1", "kind": "Secret",
             "metadata": {"name": name, "labels": {"wsgate.io/credential": "true"}},
             "stringData": data},
            {"apiVersion": "wsgate.io/v1alpha1", "kind": "WsConsumer", "metadata": {"name": name},
             "spec": {"credentials": [{"type": kind, "secretRef": {"name": name}}]}},
        ]
    return [
        *echo_service(echo_port),
        {"apiVersion": "wsgate.io/v1alpha1", "kind": "WsRoute", "metadata": {"name": "echo"},
         "spec": {"paths": [{"value": "/"}], "backend": {"service": {"name": "echo", "port": 8080}},
                  "auth": {"methods": ["KeyAuth", "BasicAuth", "JWT"]}}},
        *consumer("key", "KeyAuth", {"key": "the-key"}),
        *consumer("basic", "BasicAuth", {"username": "user", "password": "the-password"}),
        *consumer("hs", "JWT", {"issuer": "hs", "secret": HMAC}),
        *consumer("rs", "JWT", {"issuer": "rs", "algorithm": "RS256", "publicKey": RSA_PEM}),
    ]


def credentials() -> dict[str, dict[str, str]]:
    exp = int(time.time()) + 3600
    return {
        "KeyAuth": {"apikey": "the-key"},
        "BasicAuth": {"Authorization": "Basic " + base64.b64encode(b"user:the-password").decode()},
        "JWT HS256": {"Authorization": "Bearer "
                      + jwt.encode({"iss": "hs", "exp": exp}, HMAC, algorithm="HS256")},
        "JWT RS256": {"Authorization": "Bearer "
                      + jwt.encode({"iss": "rs", "exp": exp}, RSA_KEY, algorithm="RS256")},
    }


async def in_process(config: GatewayConfig, rounds: int) -> dict[str, float]:
    """Microseconds the authenticator spends on one handshake, per method."""
    route = config.routes[0]
    results = {}
    for method, headers in credentials().items():
        verifier = PasswordVerifier()
        auth = Authenticator(config.consumers, verifier)
        h = CIMultiDictProxy(CIMultiDict(headers))
        if method == "BasicAuth":
            start = time.perf_counter()
            await auth.authenticate(route, h, "", [])
            results["BasicAuth (cold cache)"] = (time.perf_counter() - start) * 1e6
        samples = []
        for _ in range(rounds):
            start = time.perf_counter()
            await auth.authenticate(route, h, "", [])
            samples.append(time.perf_counter() - start)
        results[method + (" (warm cache)" if method == "BasicAuth" else "")] = (
            statistics.median(samples) * 1e6)
    return results


async def run(args: argparse.Namespace) -> None:
    with ExitStack() as stack:
        echo = stack.enter_context(WsgateProcess("echo", "--listen", "127.0.0.1:0"))
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        (tmp / "all.yaml").write_text(yaml.safe_dump_all(objects(echo.port)))
        proxy = stack.enter_context(WsgateProcess(
            "proxy", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
            "--manifests", str(tmp)))
        proxy.wait_for_log(lambda r: r.get("event") == "config applied")
        rates = {"direct (no auth)": await handshakes(f"ws://127.0.0.1:{echo.port}/", {},
                                                      args.handshakes, args.concurrency)}
        for method, headers in credentials().items():
            url = f"ws://127.0.0.1:{proxy.port}/"
            await handshakes(url, headers, 50, 5)  # warm up (and fill the Basic cache)
            rates[method] = await handshakes(url, headers, args.handshakes, args.concurrency)

    config = compile_snapshot(Snapshot.of(objects(1))).config
    costs = await in_process(config, args.rounds)

    print(f"\nhandshakes through wsgate: {args.handshakes}, {args.concurrency} at a time\n")
    key_rate = rates["KeyAuth"]
    rows = [["method", "handshakes/s", "vs KeyAuth"]]
    rows += [[m, f"{r:,.0f}", f"{r / key_rate:.2f}"] for m, r in rates.items()]
    print(table(rows))
    print(f"\nauthenticator time per handshake, in process (median of {args.rounds})\n")
    rows = [["method", "µs"]] + [[m, f"{us:,.1f}"] for m, us in costs.items()]
    print(table(rows))
    out = write_results("auth", {"args": vars(args), "handshakes_per_s": rates,
                                 "authenticator_us": costs})
    print(f"\nwrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--handshakes", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2000)
    run_main(run, parser)


if __name__ == "__main__":
    main()
