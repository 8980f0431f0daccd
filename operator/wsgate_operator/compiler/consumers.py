"""WsConsumers: each consumer's credentials, read from its Secrets, in the form that
verifies them (a key's digest, a password's salted hash, a JWT key).

Two steps: ``credentials`` reads what the consumer's own Secrets give it; ``settle``
then refuses every credential another consumer of the namespace also holds (a key's
digest, a Basic user name, a JWT issuer: whoever presents it could be either).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Sequence

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from wsgate_proxy import config as cfg
from wsgate_proxy.passwords import hash_password

from ..resources import WsConsumerSpec
from .context import BuildContext
from .objects import ObjectRef
from .secrets import read_secret
from .shapes import uncompilable

# What each credential type reads from its Secret: required keys, optional keys.
SECRET_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "KeyAuth": (("key",), ()),
    "BasicAuth": (("username", "password"), ()),
    "JWT": (("issuer",), ("algorithm", "secret", "publicKey")),
}
JWT_ALGORITHMS = ("HS256", "RS256", "ES256")

Credential = cfg.KeyCredential | cfg.BasicCredential | cfg.JwtCredential
# What identifies a credential within a namespace: its type and a key's digest, a Basic
# user name or a JWT issuer.
Identifier = tuple[str, str]


def credentials(ctx: BuildContext, ref: ObjectRef, spec: WsConsumerSpec
                ) -> tuple[Credential, ...] | None:
    """The credentials the consumer's Secrets give it (problems reported for the rest);
    None for a disabled consumer, which authenticates nobody and is left out whole."""
    if spec.disabled:
        return None
    found: list[Credential] = []
    for i, cred in enumerate(spec.credentials):
        where = f"spec.credentials[{i}].secretRef"
        values = _secret_values(ctx, ref, where, cred.secret_ref.name, cred.type)
        if values is None:
            continue
        try:
            credential = _credential(ctx, ref, where, cred.type, cred.secret_ref.name, values)
        except (ValueError, TypeError) as exc:
            uncompilable(ctx, ref, exc, where)
            continue
        if credential is None or identifier(credential) in map(identifier, found):
            continue
        found.append(credential)
    return tuple(found)


def identifier(credential: Credential) -> Identifier:
    if isinstance(credential, cfg.KeyCredential):
        return ("key", credential.sha256)
    if isinstance(credential, cfg.BasicCredential):
        return ("basic", credential.username)
    return ("jwt", credential.issuer)


# The names of the consumers holding a credential identifier, (namespace, type,
# identifier), in order.
Holders = Callable[[tuple[str, str, str]], Sequence[str]]
# How many of the others a DuplicateCredential problem names (the rest are counted).
NAMED_HOLDERS = 3


def settle(ctx: BuildContext, ref: ObjectRef, spec: WsConsumerSpec,
           found: tuple[Credential, ...], holders: Holders) -> cfg.Consumer:
    """The compiled consumer: its credentials less those another consumer of the
    namespace holds too (a DuplicateCredential problem for each)."""
    kept = []
    for credential in found:
        kind, ident = identifier(credential)
        names = holders((ref.namespace, kind, ident))
        if len(names) < 2:
            kept.append(credential)
            continue
        others = [n for n in names[:NAMED_HOLDERS + 1] if n != ref.name][:NAMED_HOLDERS]
        more = len(names) - 1 - len(others)
        listed = ", ".join(others) + (f" and {more} more" if more else "")
        ctx.problem(ref, "spec.credentials", "DuplicateCredential",
                    f"its {_DESCRIBED[kind]} is also that of WsConsumer {listed} in this "
                    "namespace; it is refused for all of them until each has its own")
    return cfg.Consumer(
        namespace=ref.namespace,
        name=ref.name,
        username=spec.username or ref.name,
        keys=tuple(c for c in kept if isinstance(c, cfg.KeyCredential)),
        basic=tuple(c for c in kept if isinstance(c, cfg.BasicCredential)),
        jwt=tuple(c for c in kept if isinstance(c, cfg.JwtCredential)),
        max_connections=spec.limits.max_connections,
    )


_DESCRIBED = {"key": "KeyAuth key", "basic": "BasicAuth user name", "jwt": "JWT issuer"}


def _credential(
    ctx: BuildContext,
    ref: ObjectRef,
    where: str,
    kind: str,
    secret_name: str,
    values: dict[str, str],
) -> Credential | None:
    cred_id = f"secret/{secret_name}"
    if kind == "KeyAuth":
        return cfg.KeyCredential(id=cred_id, sha256=hashlib.sha256(values["key"].encode())
                                 .hexdigest())
    if kind == "BasicAuth":
        # A salt of its own per credential, derived rather than random so that the same
        # objects always compile to the same config (and the same version).
        salt = hashlib.sha256(f"{ref.namespace}/{secret_name}/{values['username']}".encode())
        return cfg.BasicCredential(
            id=cred_id, username=values["username"],
            password_hash=_password_hash(values["password"], salt.digest()[:16]),
        )
    algorithm = values.get("algorithm", "HS256")
    secret_where = f"Secret {ref.namespace}/{secret_name}"
    if algorithm not in JWT_ALGORITHMS:
        ctx.problem(ref, where, "InvalidCredential",
                    f"{secret_where}: algorithm {algorithm!r} is not one of "
                    f"{', '.join(JWT_ALGORITHMS)}")
        return None
    needed = "secret" if algorithm == "HS256" else "publicKey"
    key = values.get(needed)
    if not key:
        ctx.problem(ref, where, "SecretKeyMissing",
                    f"{secret_where} has no non-empty key {needed!r}, which algorithm "
                    f"{algorithm} needs")
        return None
    if algorithm != "HS256" and (error := _public_key_problem(algorithm, key)):
        ctx.problem(ref, where, "InvalidCredential", f"{secret_where}: {error}")
        return None
    return cfg.JwtCredential(id=cred_id, issuer=values["issuer"], algorithm=algorithm, key=key)


@functools.lru_cache(maxsize=100_000)
def _password_hash(password: str, salt: bytes) -> str:
    # PBKDF2 is slow on purpose: remember what was hashed, so a recompile (every
    # change of any object, in the operator) does not hash every password again.
    return hash_password(password, salt)


def _public_key_problem(algorithm: str, pem: str) -> str | None:
    try:
        key = serialization.load_pem_public_key(pem.encode())
    except ValueError:
        return "publicKey is not a PEM public key ('-----BEGIN PUBLIC KEY-----...')"
    expected = rsa.RSAPublicKey if algorithm == "RS256" else ec.EllipticCurvePublicKey
    if not isinstance(key, expected):
        kind = "an RSA" if algorithm == "RS256" else "an EC (P-256)"
        return f"algorithm {algorithm} needs {kind} public key"
    return None


def _secret_values(ctx: BuildContext, ref: ObjectRef, where: str, secret_name: str,
                   kind: str) -> dict[str, str] | None:
    """The Secret's values this credential type reads, or None (and a problem)."""
    required, optional = SECRET_KEYS[kind]
    data = read_secret(ctx, ref, where, secret_name, required, credential=True)
    if data is None:
        return None
    return {k: data[k] for k in (*required, *optional) if data.get(k)}
