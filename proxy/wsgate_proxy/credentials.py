"""Finding the credential a handshake presents, and removing it before forwarding.

Browsers cannot set headers on ``new WebSocket(url, protocols)``; the one thing they
can send is a list of subprotocols. So besides the header, query parameter and
cookie, a key may arrive as the subprotocol entry ``base64url.apikey.wsgate.io.<key>``
(the key base64url-encoded without padding, as Kubernetes does for bearer tokens).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from typing import Literal
from urllib.parse import unquote_plus

from multidict import CIMultiDictProxy

from .config import KeyAuthSources

KEY_SUBPROTOCOL_PREFIX = "base64url.apikey.wsgate.io."

Source = Literal["header", "query", "cookie", "subprotocol"]


class MalformedCredential(ValueError):
    """A credential is present but cannot be read (answered with 401)."""


@dataclass(frozen=True, slots=True)
class PresentedKey:
    value: str
    source: Source
    # The exact subprotocol entry that carried it, so it can be stripped.
    subprotocol_entry: str | None = None


def offered_subprotocols(headers: CIMultiDictProxy[str]) -> list[str]:
    return [
        token.strip()
        for value in headers.getall("Sec-WebSocket-Protocol", ())
        for token in value.split(",")
        if token.strip()
    ]


def encode_key_subprotocol(key: str) -> str:
    """The subprotocol entry a browser offers to present ``key``."""
    return KEY_SUBPROTOCOL_PREFIX + base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")


def find_key(
    sources: KeyAuthSources,
    headers: CIMultiDictProxy[str],
    raw_query: str,
    protocols: list[str],
) -> PresentedKey | None:
    """The first key presented, looking in header, query, cookie, subprotocol order."""
    if sources.header and (value := headers.get(sources.header)):
        return PresentedKey(value.strip(), "header")
    if sources.query and (value := query_value(raw_query, sources.query)) is not None:
        return PresentedKey(value, "query")
    if sources.cookie and (value := cookie_value(headers, sources.cookie)) is not None:
        return PresentedKey(value, "cookie")
    if sources.subprotocol:
        for entry in protocols:
            if entry.startswith(KEY_SUBPROTOCOL_PREFIX):
                return PresentedKey(_decode_b64url(entry[len(KEY_SUBPROTOCOL_PREFIX):]),
                                    "subprotocol", entry)
    return None


def _decode_b64url(text: str) -> str:
    try:
        padded = text + "=" * (-len(text) % 4)
        return base64.b64decode(padded, altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise MalformedCredential(
            "the credential subprotocol entry is not base64url-encoded UTF-8"
        ) from None


def query_value(raw_query: str, name: str) -> str | None:
    for pair in raw_query.split("&"):
        key, _, value = pair.partition("=")
        if unquote_plus(key) == name:
            return unquote_plus(value)
    return None


def strip_query(raw_query: str, name: str) -> str:
    return "&".join(
        pair for pair in raw_query.split("&")
        if pair and unquote_plus(pair.partition("=")[0]) != name
    )


def cookie_value(headers: CIMultiDictProxy[str], name: str) -> str | None:
    for header in headers.getall("Cookie", ()):
        jar = SimpleCookie()
        try:
            jar.load(header)
        except CookieError:
            continue
        if name in jar:
            return jar[name].value
    return None


def strip_cookie(header: str, name: str) -> str:
    return "; ".join(
        part.strip() for part in header.split(";")
        if part.strip() and part.strip().partition("=")[0] != name
    )
