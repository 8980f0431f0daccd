"""Handshake cost per authentication method.

  - through the proxy: H handshakes, C at a time, for KeyAuth, BasicAuth, JWT HS256,
    JWT RS256 (a WsConsumer's key), JWT RS256 from an OpenID Connect provider (keys from
    its JWKS: oidc-provider-mock on loopback), and External (the forward-auth server of
    the tests, a process on loopback checking a session cookie), uncached and with
    cacheSeconds; against the same handshakes direct to the upstream (no auth), one run;
  - in process: the time the authenticator takes per handshake, for each method
    (BasicAuth both with its cache warm and cold: PBKDF2 is slow on purpose; the
    provider's keys already fetched).
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
from tests.peers import AuthServerProcess, OidcProvider
from wsgate.processes import WsgateProcess
from wsgate_operator.compiler import Snapshot, compile_snapshot
from wsgate_proxy.auth import Authenticator
from wsgate_proxy.config import GatewayConfig
from wsgate_proxy.jwks import KeySets
from wsgate_proxy.outbound import Outbound
from wsgate_proxy.passwords import PasswordVerifier

HMAC = "bench-hmac-secret-of-at-least-32-bytes"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_PEM = RSA_KEY.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def objects(echo_port: int, auth_url: str = "http://127.0.0.1:1/verify",
            issuer: str = "http://127.0.0.1:1") -> list[dict]:
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
                  "auth": {"methods": ["KeyAuth", "BasicAuth", "JWT"], "jwt": {
                      "providers": [{"issuer": issuer, "audiences": ["bench"]}]}}}},
        *(external_route(name, path, auth_url, cache)
          for name, path, cache in (("ext", "/ext", 0), ("extc", "/extc", 60))),
        *consumer("key", "KeyAuth", {"key": "the-key"}),
        *consumer("basic", "BasicAuth", {"username": "user", "password": "the-password"}),
        *consumer("hs", "JWT", {"issuer": "hs", "secret": HMAC}),
        *consumer("rs", "JWT", {"issuer": "rs", "algorithm": "RS256", "publicKey": RSA_PEM}),
    ]


def external_route(name: str, path: str, url: str, cache: float) -> dict:
    return {"apiVersion": "wsgate.io/v1alpha1", "kind": "WsRoute", "metadata": {"name": name},
            "spec": {"paths": [{"value": path}],
                     "backend": {"service": {"name": "echo", "port": 8080}},
                     "auth": {"methods": ["External"], "external": {
                         "url": url, "identityHeader": "X-User-Id", "cacheSeconds": cache}}}}


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


async def in_process(config: GatewayConfig, rounds: int,
                     methods: dict[str, dict[str, str]]) -> dict[str, float]:
    """Microseconds the authenticator spends on one handshake, per method."""
    route = config.routes[0]
    outbound = Outbound()
    keysets = KeySets(outbound)
    keysets.sync(route.auth.jwt.providers)
    results = {}
    for method, headers in methods.items():
        verifier = PasswordVerifier()
        auth = Authenticator(config.consumers, verifier, keysets)
        h = CIMultiDictProxy(CIMultiDict(headers))
        if method == "BasicAuth":
            start = time.perf_counter()
            await auth.authenticate(route, h, "", [])
            results["BasicAuth (cold cache)"] = (time.perf_counter() - start) * 1e6
        await auth.authenticate(route, h, "", [])  # the provider's keys fetched
        samples = []
        for _ in range(rounds):
            start = time.perf_counter()
            await auth.authenticate(route, h, "", [])
            samples.append(time.perf_counter() - start)
        results[method + (" (warm cache)" if method == "BasicAuth" else "")] = (
            statistics.median(samples) * 1e6)
    await keysets.close()
    await outbound.close()
    return results


async def run(args: argparse.Namespace) -> None:
    with ExitStack() as stack:
        echo = stack.enter_context(WsgateProcess("echo", "--listen", "127.0.0.1:0"))
        auth_server = AuthServerProcess().start()
        stack.callback(auth_server.stop)
        idp = OidcProvider().start()
        stack.callback(idp.stop)
        world = objects(echo.port, auth_server.url(), idp.issuer)
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        (tmp / "all.yaml").write_text(yaml.safe_dump_all(world))
        proxy = stack.enter_context(WsgateProcess(
            "proxy", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
            "--manifests", str(tmp)))
        proxy.wait_for_log(lambda r: r.get("event") == "config applied")
        cookie = {"Cookie": f"session={await auth_server.login('bench')}"}
        provider = {"Authorization": "Bearer " + await idp.token("bench", client_id="bench")}
        paths = {method: ("/", headers) for method, headers in credentials().items()}
        paths["JWT RS256, OIDC provider (JWKS)"] = ("/", provider)
        paths["External (uncached)"] = ("/ext", cookie)
        paths["External (cacheSeconds 60)"] = ("/extc", cookie)
        base = f"ws://127.0.0.1:{proxy.port}"
        targets = {"direct (no auth)": (f"ws://127.0.0.1:{echo.port}/", {})}
        targets |= {method: (base + path, headers) for method, (path, headers) in paths.items()}
        for url, headers in targets.values():
            await handshakes(url, headers, 50, 5)  # warm up (caches, keys)
        # Interleaved: each method in turn, several times, so that what else the shared
        # machine does falls on all of them alike; the median of the rounds is reported.
        samples: dict[str, list[float]] = {method: [] for method in targets}
        for _ in range(args.repeat):
            for method, (url, headers) in targets.items():
                samples[method].append(await handshakes(
                    url, headers, args.handshakes // args.repeat, args.concurrency))
        rates = {method: statistics.median(found) for method, found in samples.items()}
        config = compile_snapshot(Snapshot.of(world)).config
        costs = await in_process(config, args.rounds, {
            **credentials(), "JWT RS256, OIDC provider (JWKS)": provider})

    print(f"\nhandshakes through wsgate: {args.handshakes} per method in {args.repeat} "
          f"interleaved rounds (median), {args.concurrency} at a time\n")
    key_rate = rates["KeyAuth"]
    direct = rates["direct (no auth)"]
    rows = [["method", "handshakes/s", "vs KeyAuth", "vs direct"]]
    rows += [[m, f"{r:,.0f}", f"{r / key_rate:.2f}", f"{r / direct:.2f}"]
             for m, r in rates.items()]
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
    parser.add_argument("--repeat", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--rounds", type=int, default=2000)
    run_main(run, parser)


if __name__ == "__main__":
    main()
