"""Independent peers the auth tests talk to, each a separate process on 127.0.0.1:
the forward-auth server (tests/auth_server.py) and an OpenID Connect provider we did
not write (PyPI ``oidc-provider-mock``: one RSA signing key per process, so restarting
it on the same port is a key rotation)."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp

from tests.support import ROOT


class _Process:
    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 (closed by stop)

    def _spawn(self, args: list[str], stdout: Any = subprocess.DEVNULL) -> None:
        self.proc = subprocess.Popen([sys.executable, *args], stdin=subprocess.DEVNULL,
                                     stdout=stdout, stderr=self._log, cwd=ROOT,
                                     env={**os.environ, "NO_COLOR": "1"})

    def log(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


class AuthServerProcess(_Process):
    """``python -m tests.auth_server`` in its own process."""

    def __init__(self, tls: tuple[str, str] | None = None, ca_pem: str | None = None) -> None:
        super().__init__()
        self.tls = tls
        self.port = 0
        # What the test's own calls trust (the auth server's CA, with tls).
        self.client_ssl: ssl.SSLContext | bool = (
            ssl.create_default_context(cadata=ca_pem) if ca_pem else True)

    def start(self) -> AuthServerProcess:
        self._spawn(["-m", "tests.auth_server", *(("--tls", *self.tls) if self.tls else ())],
                    stdout=subprocess.PIPE)
        assert self.proc is not None
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the auth server did not start:\n" + self.log())
        self.port = json.loads(line)["port"]
        return self

    @property
    def base(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def url(self, query: str = "") -> str:
        return f"{self.base}/verify" + (f"?{query}" if query else "")

    async def login(self, user: str) -> str:
        """A session cookie for ``user``: the value of ``session``."""
        async with aiohttp.ClientSession() as http, http.post(
                f"{self.base}/login", params={"user": user}, ssl=self.client_ssl) as response:
            return (await response.json())["session"]

    async def logout(self, session: str) -> None:
        async with aiohttp.ClientSession(cookies={"session": session}) as http, \
                http.post(f"{self.base}/logout", ssl=self.client_ssl) as response:
            assert response.status == 200

    async def calls(self) -> list[dict[str, list[str]]]:
        """The headers of each /verify call, by lower-case name."""
        async with aiohttp.ClientSession() as http, \
                http.get(f"{self.base}/_calls", ssl=self.client_ssl) as r:
            raw = await r.json()
        calls = []
        for headers in raw:
            by_name: dict[str, list[str]] = {}
            for name, value in headers:
                by_name.setdefault(name.lower(), []).append(value)
            calls.append(by_name)
        return calls

    async def reset(self) -> None:
        async with aiohttp.ClientSession() as http, \
                http.post(f"{self.base}/_reset", ssl=self.client_ssl):
            pass


def free_port() -> int:
    """A port nothing listens on (until something binds it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OidcProvider(_Process):
    """oidc-provider-mock on a port of its own; tokens are ID tokens (RS256 JWTs) got
    through its authorize and token endpoints, as an app's login would."""

    def __init__(self, token_max_age: int = 3600) -> None:
        super().__init__()
        self.port = free_port()
        self.token_max_age = token_max_age

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> OidcProvider:
        self._spawn(["-m", "oidc_provider_mock", "--host", "127.0.0.1", "--port",
                     str(self.port), "--token-max-age", str(self.token_max_age)])
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            assert self.proc is not None
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError("oidc-provider-mock did not start:\n" + self.log())

    def restart(self) -> OidcProvider:
        """A new process on the same port: a new signing key (key rotation)."""
        self.stop()
        return self.start()

    async def token(self, sub: str, client_id: str = "chat-app",
                    claims: dict[str, Any] | None = None) -> str:
        redirect = "http://127.0.0.1/callback"
        async with aiohttp.ClientSession() as http:
            if claims is not None:
                async with http.put(f"{self.issuer}/users/{sub}", json=claims) as r:
                    assert r.status == 204, await r.text()
            async with http.post(
                    f"{self.issuer}/oauth2/authorize",
                    params={"client_id": client_id, "redirect_uri": redirect,
                            "response_type": "code", "scope": "openid", "state": "s"},
                    data={"sub": sub}, allow_redirects=False) as r:
                location = r.headers["Location"]
            code = parse_qs(urlsplit(location).query)["code"][0]
            basic = base64.b64encode(f"{client_id}:secret".encode()).decode()
            async with http.post(
                    f"{self.issuer}/oauth2/token",
                    data={"grant_type": "authorization_code", "code": code,
                          "redirect_uri": redirect},
                    headers={"Authorization": f"Basic {basic}"}) as r:
                answer = await r.json()
        return answer["id_token"]
