"""Secrets: credential values, serving certificates and upstream CAs, read and checked.

One reader for all of them: a Secret that is missing, unlabelled (credentials only),
lacks a key or holds no PEM where one belongs is a problem on the object that names
it, with the Secret and the key named (never a value).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from wsgate_proxy import config as cfg

from ..resources import CREDENTIAL_LABEL, SecretRef, WsRouteSpec
from .context import BuildContext
from .objects import K8sObject, ObjectRef

# A CA that is named but cannot be read must not fall back to trusting the system's roots:
# such a backend gets a CA nothing is signed by, and its handshakes fail (502).
UNUSABLE_CA = "unusable"


def read_secret(
    ctx: BuildContext,
    ref: ObjectRef,
    where: str,
    secret_name: str,
    required: tuple[str, ...],
    *,
    credential: bool,
) -> dict[str, str] | None:
    """A Secret's decoded values, or None with the problem reported: not found, not
    labelled (credentials only), or lacking a required key."""
    name = f"Secret {ref.namespace}/{secret_name}"
    secret = ctx.secret(ref.namespace, secret_name)
    if secret is None:
        hint = (f"; create it with {' and '.join(repr(k) for k in required)} and the label "
                f"{CREDENTIAL_LABEL}: \"true\"" if credential else "")
        ctx.problem(ref, where, "SecretNotFound", f"{name} does not exist{hint}")
        return None
    labels = (secret.get("metadata") or {}).get("labels") or {}
    if credential and labels.get(CREDENTIAL_LABEL) != "true":
        ctx.problem(ref, where, "SecretNotLabelled",
                    f"{name} lacks the label {CREDENTIAL_LABEL}: \"true\" that marks it as a "
                    "wsgate credential")
        return None
    data = secret_data(secret)
    missing = " or ".join(repr(k) for k in required if not data.get(k))
    if missing:
        message = (f"has no non-empty key {missing} (set it under stringData or data)"
                   if credential else f"has no {missing}")
        ctx.problem(ref, where, "SecretKeyMissing", f"{name} {message}")
        return None
    return data


def secret_data(secret: K8sObject) -> dict[str, str]:
    """The Secret's values, decoded; stringData wins over data, as on the API server."""
    values: dict[str, str] = {}
    for k, v in (secret.get("data") or {}).items():
        try:
            values[k] = base64.b64decode(v or "", validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            continue
    for k, v in (secret.get("stringData") or {}).items():
        values[k] = str(v)
    return values


def pem_values(
    ctx: BuildContext,
    ref: ObjectRef,
    where: str,
    secret_name: str,
    keys: tuple[str, ...],
) -> dict[str, str] | None:
    """PEM values of a Secret (certificates need no credential label), each checked."""
    data = read_secret(ctx, ref, where, secret_name, keys, credential=False)
    if data is None:
        return None
    for key in keys:
        try:
            if key == "tls.key":
                serialization.load_pem_private_key(data[key].encode(), password=None)
            else:
                x509.load_pem_x509_certificates(data[key].encode())
        except (ValueError, TypeError):
            what = "a PEM private key" if key == "tls.key" else "PEM certificates"
            ctx.problem(ref, where, "InvalidCertificate",
                        f"Secret {ref.namespace}/{secret_name}: {key!r} is not {what}")
            return None
    return {k: data[k] for k in keys}


@dataclass(frozen=True)
class ServingCertificate:
    """What one route contributes to a serving certificate: the Secret and its hosts.
    Routes naming the same Secret share one certificate, for all their hosts."""

    namespace: str
    name: str
    hosts: tuple[str, ...]
    cert_pem: str
    key_pem: str


def serving_certificate(ctx: BuildContext, ref: ObjectRef, spec: WsRouteSpec
                        ) -> ServingCertificate | None:
    """The route's serving certificate (tls.secretName), for its hosts."""
    if spec.tls is None:
        return None
    name = spec.tls.secret_name
    values = pem_values(ctx, ref, "spec.tls.secretName", name, ("tls.crt", "tls.key"))
    if values is None:
        return None
    return ServingCertificate(ref.namespace, name, tuple(spec.hosts), values["tls.crt"],
                              values["tls.key"])


def merge_certificates(parts: list[ServingCertificate]) -> list[cfg.Certificate]:
    """One certificate per Secret, serving the hosts of every route that names it."""
    merged: dict[tuple[str, str], cfg.Certificate] = {}
    for part in parts:
        key = (part.namespace, part.name)
        hosts = set(part.hosts) | set(merged[key].hosts if key in merged else ())
        merged[key] = cfg.Certificate(namespace=part.namespace, name=part.name,
                                      hosts=tuple(sorted(hosts)), cert_pem=part.cert_pem,
                                      key_pem=part.key_pem)
    return list(merged.values())


def upstream_tls(ctx: BuildContext, ref: ObjectRef, spec: WsRouteSpec) -> cfg.UpstreamTls | None:
    """TLS to the backend (wss://): the name to verify and the CA to trust."""
    tls = spec.backend.tls
    if tls is None:
        return None
    server_name = tls.server_name or f"{spec.backend.service.name}.{ref.namespace}.svc"
    ca = ca_pem(ctx, ref, "spec.backend.tls.caSecretRef", tls.ca_secret_ref)
    return cfg.UpstreamTls(server_name=server_name, ca_pem=ca)


def ca_pem(ctx: BuildContext, ref: ObjectRef, where: str, secret_ref: SecretRef | None
           ) -> str | None:
    """The 'ca.crt' of a referenced Secret (a backend's, an External auth server's, an
    identity provider's); None when none is named; when the Secret is missing or
    unusable, a CA nothing is signed by (and a problem says so): never the system's
    roots, so those connections fail closed."""
    if secret_ref is None:
        return None
    values = pem_values(ctx, ref, where, secret_ref.name, ("ca.crt",))
    return UNUSABLE_CA if values is None else values["ca.crt"]
