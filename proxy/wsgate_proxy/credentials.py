"""Finding the credential a handshake presents, and removing it before forwarding.

Browsers cannot set headers on ``new WebSocket(url, protocols)``; the one thing they
can send is a list of subprotocols. So besides headers, query parameters and cookies,
a credential may arrive as a subprotocol entry: ``base64url.apikey.wsgate.io.<key>``
(the key base64url-encoded without padding, as Kubernetes does for bearer tokens)
or ``base64url.bearer.wsgate.io.<JWT>`` (a JWT is base64url already; an encoded one
is accepted too).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from typing import Any, Literal
from urllib.parse import unquote_plus

from multidict import CIMultiDictProxy

from .config import AuthMethod, RouteAuth

KEY_SUBPROTOCOL_PREFIX = "base64url.apikey.wsgate.io."
BEARER_SUBPROTOCOL_PREFIX = "base64url.bearer.wsgate.io."
BEARER_QUERY = "access_token"

Source = Literal["header", "query", "cookie", "subprotocol", "message"]


class MalformedCredential(ValueError):
    """A credential is present but cannot be read (answered with 401)."""


@dataclass(frozen=True, slots=True)
class Presented:
    method: AuthMethod
    value: str  # the key, the password or the token
    source: Source
    name: str = ""  # the header, query parameter or cookie it came in
    username: str = ""  # BasicAuth's user name
    subprotocol_entry: str | None = None  # the exact entry that carried it


def offered_subprotocols(headers: CIMultiDictProxy[str]) -> list[str]:
    return [
        token.strip()
        for value in headers.getall("Sec-WebSocket-Protocol", ())
        for token in value.split(",")
        if token.strip()
    ]


def encode_key_subprotocol(key: str) -> str:
    """The subprotocol entry a browser offers to present ``key``."""
    return KEY_SUBPROTOCOL_PREFIX + _b64url(key)


def encode_bearer_subprotocol(token: str) -> str:
    return BEARER_SUBPROTOCOL_PREFIX + token


def _b64url(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def find_credential(
    auth: RouteAuth,
    headers: CIMultiDictProxy[str],
    raw_query: str,
    protocols: list[str],
) -> Presented | None:
    """The first credential presented, trying the route's methods in their order."""
    for method in auth.methods:
        found = _FINDERS[method](auth, headers, raw_query, protocols)
        if found is not None:
            return found
    return None


def _find_key(auth: RouteAuth, headers: CIMultiDictProxy[str], raw_query: str,
              protocols: list[str]) -> Presented | None:
    sources = auth.key_auth
    if sources.header and (value := headers.get(sources.header)):
        return Presented("KeyAuth", value.strip(), "header", sources.header)
    if sources.query and (value := query_value(raw_query, sources.query)) is not None:
        return Presented("KeyAuth", value, "query", sources.query)
    if sources.cookie and (value := cookie_value(headers, sources.cookie)) is not None:
        return Presented("KeyAuth", value, "cookie", sources.cookie)
    if sources.subprotocol:
        for entry in protocols:
            if entry.startswith(KEY_SUBPROTOCOL_PREFIX):
                key = _decode_b64url(entry[len(KEY_SUBPROTOCOL_PREFIX):])
                return Presented("KeyAuth", key, "subprotocol", subprotocol_entry=entry)
    return None


def _authorization(headers: CIMultiDictProxy[str], scheme: str) -> str | None:
    value = headers.get("Authorization", "")
    given, _, rest = value.strip().partition(" ")
    return rest.strip() if given.lower() == scheme else None


def _find_basic(auth: RouteAuth, headers: CIMultiDictProxy[str], raw_query: str,
                protocols: list[str]) -> Presented | None:
    encoded = _authorization(headers, "basic")
    if encoded is None:
        return None
    try:
        decoded = base64.b64decode(encoded, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise MalformedCredential("the Basic credentials are not base64 of 'user:password'"
                                  ) from None
    username, sep, password = decoded.partition(":")
    if not sep:
        raise MalformedCredential("the Basic credentials lack the ':' between user and password")
    return Presented("BasicAuth", password, "header", "Authorization", username=username)


def _find_bearer(auth: RouteAuth, headers: CIMultiDictProxy[str], raw_query: str,
                 protocols: list[str]) -> Presented | None:
    if (token := _authorization(headers, "bearer")) is not None:
        return Presented("JWT", token, "header", "Authorization")
    if (token := query_value(raw_query, BEARER_QUERY)) is not None:
        return Presented("JWT", token, "query", BEARER_QUERY)
    for entry in protocols:
        if entry.startswith(BEARER_SUBPROTOCOL_PREFIX):
            token = entry[len(BEARER_SUBPROTOCOL_PREFIX):]
            if token.count(".") != 2:  # not a JWT as it is: base64url of one
                token = _decode_b64url(token)
            return Presented("JWT", token, "subprotocol", subprotocol_entry=entry)
    cookie = auth.jwt.cookie
    if cookie and (token := cookie_value(headers, cookie)) is not None:
        return Presented("JWT", token, "cookie", cookie)
    return None


def _find_external(auth: RouteAuth, headers: CIMultiDictProxy[str], raw_query: str,
                   protocols: list[str]) -> Presented:
    """External always decides when it is reached: the auth server is asked even when
    none of the headers it reads is present (it may answer with a login Location)."""
    return Presented("External", "", "header")


_FINDERS: dict[str, Callable[..., Presented | None]] = {
    "KeyAuth": _find_key,
    "BasicAuth": _find_basic,
    "JWT": _find_bearer,
    "External": _find_external,
}


def from_auth_message(auth: RouteAuth, message: dict[str, Any]) -> Presented | None:
    """The credential of a FirstMessage-mode auth message, for the route's methods:
    ``{"type": "auth", "apikey": ...}``, ``{..., "username": ..., "password": ...}`` or
    ``{..., "token": <JWT>}``."""
    for method in auth.methods:
        if method == "KeyAuth" and isinstance(key := message.get("apikey"), str):
            return Presented("KeyAuth", key, "message")
        if method == "BasicAuth" and isinstance(user := message.get("username"), str) \
                and isinstance(password := message.get("password"), str):
            return Presented("BasicAuth", password, "message", username=user)
        if method == "JWT" and isinstance(token := message.get("token"), str):
            return Presented("JWT", token, "message")
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
        jar: SimpleCookie = SimpleCookie()
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
