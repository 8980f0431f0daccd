"""Why a handshake is refused: one exception tree, one answer in two forms.

Before the upgrade a refusal is an HTTP answer: ``status``, ``headers`` and ``message``
(a plain-text body that says what to change). After it (FirstMessage mode, where the
credential comes in the first message) it is a close frame: ``close_code`` and
``reason``, which is short and names nobody (it may be shown to anyone). Each
refusal is counted under its ``outcome``, a label from a fixed set.

    Refusal
    ├── BadRequest          400 (426 for a wrong version)     1002
    │   └── UpgradeRequired 426 (not an upgrade at all)
    ├── NoRoute             404
    ├── Unavailable         503 (no config yet, no endpoints)  1014
    │   └── AuthUnavailable 503 (an auth server or an identity
    │                       provider cannot answer: fail closed) 1013
    ├── AuthFailure
    │   ├── Unauthorized    401 + WWW-Authenticate            4401
    │   └── Forbidden       403                               4403
    ├── LimitReached        429 / 503                         1013
    │   └── LimitsUnavailable 503 (shared store down, closed)  1013
    ├── Overloaded          503 + Retry-After                 1013
    └── BadGateway          502                               1014

An External auth server's 401 or 403 is passed on as it is: its status, its
``WWW-Authenticate`` and ``Location`` headers and its ``body`` (bounded).
"""

from __future__ import annotations

from collections.abc import Iterable

from .frames import CloseCode


class Refusal(Exception):
    """A handshake the proxy will not serve."""

    status = 400
    outcome = "bad_request"
    close_code = CloseCode.POLICY_VIOLATION
    # The close reason when none is given; None: the message itself (it names nobody).
    default_reason: str | None = "refused"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        headers: Iterable[tuple[str, str]] = (),
        reason: str | None = None,
        body: bytes | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        self.headers: tuple[tuple[str, str], ...] = tuple(headers)
        self.reason = reason or self.default_reason or message
        # The HTTP answer's body when it is not the message (an auth server's own answer).
        self.body = body

    def __str__(self) -> str:
        return f"{self.status} {self.outcome}: {self.message}"


class BadRequest(Refusal):
    """The request is not a well-formed WebSocket handshake."""

    outcome = "bad_request"
    close_code = CloseCode.PROTOCOL_ERROR
    default_reason = "bad request"


class UpgradeRequired(BadRequest):
    """A plain HTTP request on a WebSocket route."""

    status = 426
    outcome = "upgrade_required"


class NoRoute(Refusal):
    status = 404
    outcome = "no_route"
    default_reason = "no route"


class Unavailable(Refusal):
    """Nothing can serve the handshake now (no config yet, no ready endpoints)."""

    status = 503
    outcome = "no_upstream"
    close_code = CloseCode.BAD_GATEWAY
    default_reason = "no upstream available"


class AuthUnavailable(Unavailable):
    """Authentication cannot be decided now: an External auth server failed to answer
    (or answered something other than 2xx, 401 or 403), or an identity provider's keys
    are not available. The handshake is refused (fail closed), never let through."""

    outcome = "auth_unavailable"
    close_code = CloseCode.TRY_AGAIN_LATER
    default_reason = "authentication unavailable"

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message, headers=(("Retry-After", str(retry_after)),))


class AuthFailure(Refusal):
    """Refused by authentication or access control."""

    def __init__(self, message: str, *, challenges: tuple[str, ...] = (),
                 reason: str | None = None, headers: Iterable[tuple[str, str]] = (),
                 body: bytes | None = None) -> None:
        super().__init__(message, headers=[*(("WWW-Authenticate", c) for c in challenges),
                                           *headers],
                         reason=reason, body=body)
        self.challenges = challenges


class Unauthorized(AuthFailure):
    status = 401
    outcome = "unauthorized"
    close_code = CloseCode.AUTH_FAILED
    default_reason = None  # what is wrong with the credential, which names nobody


class Forbidden(AuthFailure):
    status = 403
    outcome = "forbidden"
    close_code = CloseCode.AUTH_FORBIDDEN
    default_reason = "not allowed on this route"


class LimitReached(Refusal):
    """A connection limit of the route (503) or of the consumer (429)."""

    status = 503
    outcome = "rate_limited"
    close_code = CloseCode.TRY_AGAIN_LATER
    default_reason = "connection limit reached"


class LimitsUnavailable(LimitReached):
    """Connection limits cannot be counted (the shared store is unavailable and the
    failure mode is closed)."""

    outcome = "limits_unavailable"
    default_reason = "connection limits unavailable"


class Overloaded(Refusal):
    """The proxy sheds work it cannot do promptly (the password check's queue is full)."""

    status = 503
    outcome = "overloaded"
    close_code = CloseCode.TRY_AGAIN_LATER
    default_reason = "busy, retry later"

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message, headers=(("Retry-After", str(retry_after)),))


class BadGateway(Refusal):
    """No upstream completed a valid WebSocket handshake."""

    status = 502
    outcome = "upstream_error"
    close_code = CloseCode.BAD_GATEWAY
    default_reason = "no upstream accepted the session"
