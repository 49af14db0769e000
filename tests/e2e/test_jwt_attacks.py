"""The JWT attack suite (RFC 8725): every forged, confused, stale or malformed access token
is refused with a 401 problem — never accepted, never a 5xx.

Tokens are built here: some with an attacker's own keys, some with the gateway's real
signing key (read from the stack's database) so that each is wrong in exactly one way.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from paystream.tools.client import PaystreamClient

from .stack import UpProcess

ISS, AUD = "paystream", "paystream-api"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _raw(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    return ".".join([_b64(json.dumps(header).encode()), _b64(json.dumps(claims).encode()), _b64(signature)])


@dataclass
class Keys:
    kid: str
    private: Ed25519PrivateKey
    client_id: str
    attacker: Ed25519PrivateKey

    @property
    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    @property
    def public_raw(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    def claims(self, **changes: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": ISS, "aud": AUD, "sub": self.client_id, "client_id": self.client_id,
            "tenant": "default", "scope": "payments:read", "iat": now, "nbf": now,
            "exp": now + 300, "jti": uuid.uuid4().hex,
        }
        for name, value in changes.items():
            if value is _DROP:
                claims.pop(name, None)
            else:
                claims[name] = value
        return claims

    def sign(self, claims: dict[str, Any] | None = None, *, key: Any = None, alg: str = "EdDSA",
             **header: Any) -> str:
        fields = {"kid": self.kid, "typ": "at+jwt", **header}
        fields = {k: v for k, v in fields.items() if v is not _DROP}
        return jwt.encode(claims or self.claims(), key if key is not None else self.private,
                          algorithm=alg, headers=fields)


_DROP = object()


@pytest.fixture(scope="module")
async def keys(stack: UpProcess) -> Keys:
    assert stack.info is not None
    conn = await asyncpg.connect(stack.info.postgres_url)
    try:
        row = await conn.fetchrow(
            "SELECT kid, private_pem FROM gateway.signing_keys WHERE retired_at IS NULL "
            "ORDER BY created_at DESC LIMIT 1")
    finally:
        await conn.close()
    private = serialization.load_pem_private_key(row["private_pem"].encode(), password=None)
    assert isinstance(private, Ed25519PrivateKey)
    return Keys(row["kid"], private, stack.info.client_id, Ed25519PrivateKey.generate())


def _flip(segment: str) -> str:
    return segment[:-2] + ("A" if segment[-2] != "A" else "B") + segment[-1]


def _alg_none(spelling: str) -> Callable[[Keys], str]:
    return lambda k: _raw({"alg": spelling, "typ": "at+jwt", "kid": k.kid}, k.claims(scope="admin"))


def _hmac_with_public(encoding: str, alg: str = "HS256") -> Callable[[Keys], str]:
    def build(k: Keys) -> str:
        secret = k.public_pem if encoding == "pem" else k.public_raw
        payload = _b64(json.dumps({"alg": alg, "typ": "at+jwt", "kid": k.kid}).encode()) + "." + \
            _b64(json.dumps(k.claims()).encode())
        import hashlib
        import hmac as hmac_module

        digest = {"HS256": hashlib.sha256, "HS512": hashlib.sha512}[alg]
        return payload + "." + _b64(hmac_module.new(secret, payload.encode(), digest).digest())
    return build


def _relabelled(alg: str) -> Callable[[Keys], str]:
    """Our genuine signature, under a header that names another algorithm."""
    def build(k: Keys) -> str:
        _, payload, signature = k.sign().split(".")
        return ".".join([_b64(json.dumps({"alg": alg, "typ": "at+jwt", "kid": k.kid}).encode()),
                         payload, signature])
    return build


def _tampered_claims(k: Keys) -> str:
    header, _, signature = k.sign().split(".")
    return ".".join([header, _b64(json.dumps(k.claims(scope="admin payments:write")).encode()), signature])


def _tampered_signature(k: Keys) -> str:
    header, payload, signature = k.sign().split(".")
    return ".".join([header, payload, _flip(signature)])


def _attacker_jwk(k: Keys) -> dict[str, str]:
    raw = k.attacker.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"kty": "OKP", "crv": "Ed25519", "x": _b64(raw), "kid": "attacker"}


ATTACKS: dict[str, Callable[[Keys], str]] = {
    "alg none": _alg_none("none"),
    "alg None": _alg_none("None"),
    "alg NONE": _alg_none("NONE"),
    "alg nOnE": _alg_none("nOnE"),
    "alg none with a real signature attached": lambda k: _raw(
        {"alg": "none", "typ": "at+jwt", "kid": k.kid}, k.claims(),
        base64.urlsafe_b64decode(k.sign().split(".")[2] + "==")),
    "HS256 keyed with the public key (PEM)": _hmac_with_public("pem"),
    "HS256 keyed with the public key (raw)": _hmac_with_public("raw"),
    "HS512 keyed with the public key": _hmac_with_public("pem", "HS512"),
    "RS256 header over our signature": _relabelled("RS256"),
    "ES256 header over our signature": _relabelled("ES256"),
    "EdDSA signed by an unknown key, unknown kid": lambda k: k.sign(key=k.attacker, kid="attacker"),
    "EdDSA signed by an unknown key under our kid": lambda k: k.sign(key=k.attacker),
    "no kid": lambda k: k.sign(kid=_DROP),
    "kid with path traversal": lambda k: k.sign(key=k.attacker, kid="../../../../dev/null"),
    "kid with SQL injection": lambda k: k.sign(key=k.attacker, kid="' OR '1'='1"),
    "jku pointing at the attacker's keys": lambda k: k.sign(
        key=k.attacker, kid="attacker", jku="https://attacker.example/jwks.json"),
    "x5u pointing at the attacker's certificate": lambda k: k.sign(
        key=k.attacker, kid="attacker", x5u="https://attacker.example/cert.pem"),
    "embedded jwk of the attacker": lambda k: k.sign(key=k.attacker, kid="attacker", jwk=_attacker_jwk(k)),
    "embedded jwk under our kid": lambda k: k.sign(key=k.attacker, jwk=_attacker_jwk(k)),
    "expired": lambda k: k.sign(k.claims(exp=int(time.time()) - 120, iat=int(time.time()) - 1000,
                                         nbf=int(time.time()) - 1000)),
    "expired just past the leeway": lambda k: k.sign(k.claims(exp=int(time.time()) - 61)),
    "not valid yet (nbf)": lambda k: k.sign(k.claims(nbf=int(time.time()) + 600)),
    "issued in the future (iat)": lambda k: k.sign(k.claims(iat=int(time.time()) + 3600)),
    "wrong issuer": lambda k: k.sign(k.claims(iss="https://evil.example")),
    "wrong audience": lambda k: k.sign(k.claims(aud="another-api")),
    "audience list without ours": lambda k: k.sign(k.claims(aud=["a", "b"])),
    "no exp": lambda k: k.sign(k.claims(exp=_DROP)),
    "no aud": lambda k: k.sign(k.claims(aud=_DROP)),
    "no iss": lambda k: k.sign(k.claims(iss=_DROP)),
    "exp as a string": lambda k: k.sign(k.claims(exp="9999999999")),
    "no tenant": lambda k: k.sign(k.claims(tenant=_DROP)),
    "typ JWT instead of at+jwt": lambda k: k.sign(typ="JWT"),
    "no typ": lambda k: k.sign(typ=_DROP),
    "crit header with an unknown extension": lambda k: k.sign(crit=["exp-unknown"], **{"exp-unknown": 1}),
    "payload tampered (scopes raised)": _tampered_claims,
    "signature tampered": _tampered_signature,
    "signature stripped": lambda k: ".".join(k.sign().split(".")[:2]) + ".",
    "two segments only": lambda k: ".".join(k.sign().split(".")[:2]),
    "five segments (JWE shape)": lambda k: k.sign() + ".AAAA.BBBB",
    "header not JSON": lambda k: _b64(b"not json") + "." + k.sign().split(".", 1)[1],
    "oversized token": lambda k: k.sign(k.claims(pad="x" * 6000)),
}


async def _call(stack: UpProcess, token: str) -> httpx.Response:
    assert stack.info is not None
    async with httpx.AsyncClient(base_url=stack.info.gateway_url, timeout=10) as http:
        return await http.get("/v1/payments", headers={"Authorization": f"Bearer {token}"})


def test_the_suite_has_at_least_thirty_attacks() -> None:
    assert len(ATTACKS) >= 30


async def test_a_genuine_token_built_the_same_way_is_accepted(stack: UpProcess, keys: Keys) -> None:
    # The control: the builder itself makes tokens the gateway accepts, so each refusal
    # below is for the one thing its attack changed.
    assert (await _call(stack, keys.sign())).status_code == 200


@pytest.mark.parametrize("attack", list(ATTACKS))
async def test_attack_is_refused_with_401(stack: UpProcess, keys: Keys, attack: str) -> None:
    response = await _call(stack, ATTACKS[attack](keys))
    assert response.status_code == 401, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.headers["www-authenticate"].startswith("Bearer")
    # The answer does not say which part of the credential was wrong.
    assert response.json()["detail"] == "missing or invalid access token"


async def test_the_admin_token_is_not_mistaken_for_its_bearer_scopes(stack: UpProcess) -> None:
    # A real token narrowed to read scopes cannot write, whatever its body claims.
    assert stack.info is not None
    async with PaystreamClient.for_stack(stack.info, max_connections=2) as client:
        response = await client.http.post("/oauth/token", data={
            "grant_type": "client_credentials", "client_id": stack.info.client_id,
            "client_secret": stack.info.client_secret, "scope": "payments:read"})
        token = response.json()["access_token"]
    async with httpx.AsyncClient(base_url=stack.info.gateway_url, timeout=10) as http:
        write = await http.post("/v1/accounts", json={"currency": "USD"},
                                headers={"Authorization": f"Bearer {token}"})
    assert write.status_code == 403
