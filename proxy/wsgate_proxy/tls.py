"""TLS: serving certificates chosen by SNI, and verifying wss:// upstreams.

Certificates arrive in the config and change with it (a renewed Secret is a new
config): each apply builds contexts for new certificates, keeps those unchanged, and
the next handshake picks from the new set. Connections already open keep theirs.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import ssl
import tempfile
from pathlib import Path

from .config import Certificate

log = logging.getLogger("wsgate.tls")


def _server_context(certificate: Certificate) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # The ssl module loads a chain only from files: a private directory, gone at once.
    with tempfile.TemporaryDirectory(prefix="wsgate-tls-") as directory:
        cert, key = Path(directory) / "tls.crt", Path(directory) / "tls.key"
        cert.write_text(certificate.cert_pem)
        key.touch(0o600)
        key.write_text(certificate.key_pem)
        context.load_cert_chain(cert, key)
    return context


class CertificateStore:
    """Serving certificates by host name: exact names first, then the longest wildcard."""

    def __init__(self) -> None:
        self._exact: dict[str, ssl.SSLContext] = {}
        self._wildcard: list[tuple[str, ssl.SSLContext]] = []  # (".suffix", ctx), longest first
        self._default: ssl.SSLContext | None = None
        self._built: dict[str, ssl.SSLContext] = {}  # by content digest, across updates

    def update(self, certificates: tuple[Certificate, ...]) -> None:
        built: dict[str, ssl.SSLContext] = {}
        exact: dict[str, ssl.SSLContext] = {}
        wildcard: dict[str, ssl.SSLContext] = {}
        default = None
        for certificate in certificates:
            digest = hashlib.sha256(
                (certificate.cert_pem + certificate.key_pem).encode()).hexdigest()
            context = self._built.get(digest)
            if context is None:
                try:
                    context = _server_context(certificate)
                except (ssl.SSLError, OSError, ValueError) as exc:
                    log.error("cannot load certificate",
                              extra={"secret": certificate.key, "error": str(exc)})
                    continue
            built[digest] = context
            default = default or context
            for host in certificate.hosts:
                if host.startswith("*."):
                    wildcard.setdefault(host[1:], context)
                else:
                    exact.setdefault(host, context)
        self._built, self._exact, self._default = built, exact, default
        self._wildcard = sorted(wildcard.items(), key=lambda item: len(item[0]), reverse=True)

    def context_for(self, server_name: str | None) -> ssl.SSLContext | None:
        if server_name is None:
            return self._default  # a client that sends no SNI gets the first certificate
        name = server_name.lower().rstrip(".")
        if (context := self._exact.get(name)) is not None:
            return context
        for suffix, context in self._wildcard:
            if name.endswith(suffix) and len(name) > len(suffix):
                return context
        return None

    def listener_context(self) -> ssl.SSLContext:
        """The context the TLS listener starts with; SNI switches to the host's own."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.sni_callback = self._sni
        return context

    def _sni(self, ssl_object: ssl.SSLObject, server_name: str | None,
             _listener: ssl.SSLContext) -> int | None:
        context = self.context_for(server_name)
        if context is None:
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        ssl_object.context = context
        return None


@functools.lru_cache(maxsize=256)
def upstream_context(ca_pem: str | None) -> ssl.SSLContext:
    """A client context verifying upstreams: against this CA, else the system's roots.
    A CA that cannot be loaded trusts nothing (never falls back to the system's roots).
    One context per CA, kept across configs: loading roots costs tens of milliseconds,
    and a config push must not pay it again for every wss:// route."""
    if ca_pem is None:
        return ssl.create_default_context()
    try:
        return ssl.create_default_context(cadata=ca_pem)
    except (ssl.SSLError, ValueError):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # no roots: every handshake fails
        log.error("cannot load an upstream CA; its backends' handshakes will fail")
        return context
