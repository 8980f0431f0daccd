"""HTTP requests the proxy makes itself: to External auth servers and identity providers.

Both are trust boundaries, so every request is bounded: one client session per proxy
with keep-alive connections (at most MAX_CONNECTIONS, so a burst of handshakes reuses
connections instead of opening one each), a total timeout per request, response heads
held to aiohttp's limits (8 KiB lines, 128 headers), bodies read up to a given size and
the connection dropped beyond it, no redirects followed, and no compressed bodies asked
for or inflated (a small gzip body could inflate to gigabytes). TLS contexts come from
``tls.upstream_context``: one per CA, built once, never per request.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
from multidict import CIMultiDictProxy

from .tls import upstream_context

MAX_CONNECTIONS = 256
# Connections idle longer than this are closed (auth servers commonly keep 60 s or more).
KEEPALIVE_SECONDS = 30.0


class OutboundError(Exception):
    """A request that got no HTTP answer: refused, reset, timed out, TLS failed, or an
    answer that is not HTTP. The message names no credential."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes  # at most the size asked for
    truncated: bool  # the body was longer (and was not read)


class Outbound:
    """The proxy's HTTP client. Created outside the event loop; the session is made on
    first use, on the loop that uses it."""

    def __init__(self, max_connections: int = MAX_CONNECTIONS) -> None:
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections, keepalive_timeout=KEEPALIVE_SECONDS,
                enable_cleanup_closed=True)
            self._session = aiohttp.ClientSession(
                connector=connector, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=("User-Agent",))
        return self._session

    async def get(self, url: str, headers: list[tuple[str, str]], *, seconds: float,
                  max_body: int, ca_pem: str | None = None) -> Answer:
        """GET ``url``; the answer, whatever its status, or OutboundError (also when no
        answer came within ``seconds``)."""
        ssl = upstream_context(ca_pem) if url.startswith("https:") else True
        sent = [*headers, ("Accept-Encoding", "identity")]
        try:
            async with asyncio.timeout(seconds):
                async with self._client().get(url, headers=sent, allow_redirects=False,
                                              ssl=ssl) as response:
                    body, truncated = await _read(response, max_body)
                    return Answer(response.status, response.headers, body, truncated)
        except TimeoutError:
            raise OutboundError(f"no answer within {seconds:g} s") from None
        except aiohttp.ClientConnectorCertificateError as exc:
            raise OutboundError(f"TLS: the certificate is not trusted ({exc.certificate_error})"
                                ) from None
        except aiohttp.ClientConnectorError as exc:
            raise OutboundError(f"cannot connect: {exc.strerror or exc}") from None
        except aiohttp.ClientResponseError as exc:
            raise OutboundError(f"not a valid HTTP answer: {exc.message}") from None
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            raise OutboundError(f"{type(exc).__name__}: {exc}") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


async def _read(response: aiohttp.ClientResponse, limit: int) -> tuple[bytes, bool]:
    """At most ``limit`` bytes of the body; a longer one is cut and its connection closed
    rather than read to the end."""
    length = response.content_length
    if length is not None and length > limit:
        response.close()
        return b"", True
    body = bytearray()
    while len(body) <= limit:
        chunk = await response.content.read(limit + 1 - len(body))
        if not chunk:
            return bytes(body), False
        body += chunk
    response.close()
    return bytes(body[:limit]), True


def display_url(url: str) -> str:
    """A URL fit for a log line: no user info, no query (either may hold a secret)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}"
