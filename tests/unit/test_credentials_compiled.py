"""BasicAuth and JWT credentials: what the compiler makes of Secrets, and verifying them."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.support import credential_objects, quickstart_objects
from wsgate_operator.compiler import Snapshot, compile_snapshot
from wsgate_proxy.passwords import PasswordVerifier, verify_password

EC_PEM = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
RSA_PEM = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key() \
    .public_bytes(serialization.Encoding.PEM,
                  serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def compile_(objects):
    return compile_snapshot(Snapshot.of(quickstart_objects(1, 2) + objects))


def consumer(compiled, name):
    return next(c for c in compiled.config.consumers if c.name == name)


def test_basic_auth_compiles_to_a_salted_hash_deterministically():
    objects = credential_objects("alice", "BasicAuth", {"username": "al", "password": "pw"})
    one, two = compile_(objects), compile_(objects)
    assert one.problems == []
    (cred,) = consumer(one, "alice").basic
    assert cred.username == "al"
    assert cred.password_hash.startswith("pbkdf2_sha256$100000$")
    assert verify_password("pw", cred.password_hash)
    assert not verify_password("PW", cred.password_hash)
    assert one.config.version == two.config.version  # the same objects, the same config
    assert '"pw"' not in json.dumps(one.config.model_dump(mode="json"))


def test_the_same_password_gets_another_salt_elsewhere():
    objects = (credential_objects("a", "BasicAuth", {"username": "a", "password": "same"})
               + credential_objects("b", "BasicAuth", {"username": "b", "password": "same"}))
    compiled = compile_(objects)
    assert consumer(compiled, "a").basic[0].password_hash != \
        consumer(compiled, "b").basic[0].password_hash


@pytest.mark.parametrize(
    ("data", "algorithm"),
    [({"issuer": "i", "secret": "s" * 32}, "HS256"),
     ({"issuer": "i", "algorithm": "RS256", "publicKey": RSA_PEM}, "RS256"),
     ({"issuer": "i", "algorithm": "ES256", "publicKey": EC_PEM}, "ES256")],
)
def test_jwt_credentials(data, algorithm):
    compiled = compile_(credential_objects("j", "JWT", data))
    assert compiled.problems == []
    (cred,) = consumer(compiled, "j").jwt
    assert (cred.issuer, cred.algorithm) == ("i", algorithm)


@pytest.mark.parametrize(
    ("data", "reason", "words"),
    [
        ({"secret": "s"}, "SecretKeyMissing", "'issuer'"),
        ({"issuer": "i"}, "SecretKeyMissing", "key 'secret', which algorithm HS256 needs"),
        ({"issuer": "i", "algorithm": "RS256"}, "SecretKeyMissing", "'publicKey'"),
        ({"issuer": "i", "algorithm": "PS512", "secret": "s"}, "InvalidCredential",
         "'PS512' is not one of HS256, RS256, ES256"),
        ({"issuer": "i", "algorithm": "RS256", "publicKey": "junk"}, "InvalidCredential",
         "not a PEM public key"),
        ({"issuer": "i", "algorithm": "RS256", "publicKey": EC_PEM}, "InvalidCredential",
         "RS256 needs an RSA public key"),
    ],
)
def test_jwt_credential_problems(data, reason, words):
    compiled = compile_(credential_objects("j", "JWT", data))
    (problem,) = compiled.problems
    assert (problem.reason, problem.field) == (reason, "spec.credentials[0].secretRef")
    assert words in problem.message
    assert consumer(compiled, "j").jwt == ()


def test_duplicate_basic_user_names_and_jwt_issuers():
    objects = (credential_objects("a", "BasicAuth", {"username": "u", "password": "1"})
               + credential_objects("b", "BasicAuth", {"username": "u", "password": "2"})
               + credential_objects("c", "JWT", {"issuer": "iss", "secret": "x" * 32})
               + credential_objects("d", "JWT", {"issuer": "iss", "secret": "y" * 32}))
    compiled = compile_(objects)
    assert sorted((p.ref.name, p.reason) for p in compiled.problems) == [
        ("a", "DuplicateCredential"), ("b", "DuplicateCredential"),
        ("c", "DuplicateCredential"), ("d", "DuplicateCredential")]
    assert "BasicAuth user name" in compiled.problems[0].message
    for name in "abcd":
        c = consumer(compiled, name)
        assert (c.basic, c.jwt) == ((), ())


def test_first_message_mode_and_audience_compile():
    objects = quickstart_objects(1, 2)
    route = next(o for o in objects if o["kind"] == "WsRoute")
    route["spec"]["auth"].update(mode="FirstMessage", methods=["JWT", "KeyAuth"],
                                 jwt={"audience": "chat"}, firstMessageTimeoutSeconds=3)
    (r,) = compile_snapshot(Snapshot.of(objects)).config.routes
    assert (r.auth.mode, r.auth.methods) == ("FirstMessage", ("JWT", "KeyAuth"))
    assert (r.auth.jwt.audience, r.auth.first_message_timeout_seconds) == ("chat", 3)


async def test_verifier_caches_successes_only_and_is_bounded():
    objects = credential_objects("alice", "BasicAuth", {"username": "a", "password": "pw"})
    encoded = consumer(compile_(objects), "alice").basic[0].password_hash
    verifier = PasswordVerifier(max_entries=2)
    assert not await verifier.verify("wrong", encoded)
    assert len(verifier) == 0
    assert await verifier.verify("pw", encoded)
    assert await verifier.verify("pw", encoded)
    assert len(verifier) == 1
    other = credential_objects("bob", "BasicAuth", {"username": "b", "password": "pw"})
    encoded_b = consumer(compile_(other), "bob").basic[0].password_hash
    assert await verifier.verify("pw", encoded_b)
    third = credential_objects("carl", "BasicAuth", {"username": "c", "password": "pw"})
    assert await verifier.verify("pw", consumer(compile_(third), "carl").basic[0].password_hash)
    assert len(verifier) == 2  # the least recently used went out


def test_a_key_shared_by_thousands_names_a_few_and_counts_the_rest():
    # One key pasted into 2,000 consumers: each holder's problem names three others and
    # counts the rest (a status message of bounded size; the holders sorted once, where
    # a sort per holder made this build quadratic and timed out a CI run).
    objects = []
    for i in range(2000):
        objects += credential_objects(f"c{i:04d}", "KeyAuth", {"key": "pasted-everywhere"})
    compiled = compile_(objects)
    problems = [p for p in compiled.problems if p.reason == "DuplicateCredential"]
    assert len(problems) == 2000
    first = next(p for p in problems if p.ref.name == "c0000")
    assert "WsConsumer c0001, c0002, c0003 and 1996 more in this namespace" in first.message
    other = next(p for p in problems if p.ref.name == "c0002")
    assert "WsConsumer c0000, c0001, c0003 and 1996 more" in other.message
    assert max(len(p.message) for p in problems) < 300
    assert all(consumer(compiled, f"c{i:04d}").keys == () for i in (0, 999, 1999))
