"""Access tokens: EdDSA-signed JWTs (RFC 9068 profile), issued and verified.

The keys that sign them are made, stored, loaded and rotated in `identity.keys`.

Validation trusts nothing in the token's header but ``kid`` (to pick one of our own
keys) and ``typ``: the algorithm is the one configured for that key, and ``jku``,
``x5u`` and embedded ``jwk`` are ignored. ``iss``, ``aud``, ``exp``, ``nbf``, ``iat``
are required and checked with a small leeway.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import jwt

from paystream.gateway.domain import Principal
from paystream.gateway.identity.keys import ALGORITHM, LEEWAY_SECONDS, SigningKey, public_jwk

ACCEPTED_TYP = frozenset({"at+jwt", "application/at+jwt"})
_CACHE_LIMIT = 50_000


class InvalidToken(Exception):
    """The token cannot be accepted; the reason is for logs, never for the client."""


class TokenService:
    """Issues and verifies access tokens with a set of keys (newest signs, all verify)."""

    def __init__(self, *, issuer: str, audience: str, ttl_seconds: int) -> None:
        self.issuer = issuer
        self.audience = audience
        self.ttl = ttl_seconds
        self._keys: dict[str, SigningKey] = {}
        self._cache: dict[str, Principal] = {}

    def set_keys(self, keys: list[SigningKey]) -> None:
        new = {k.kid: k for k in keys}
        if set(self._keys) - set(new):
            self._cache.clear()  # a key was withdrawn: nothing it vouched for stays cached
        self._keys = new

    @property
    def has_keys(self) -> bool:
        return bool(self._keys)

    def jwks(self) -> dict[str, Any]:
        return {"keys": [public_jwk(k.kid, k.public) for k in self._keys.values()]}

    def issue(
        self, *, client_id: str, tenant_id: str, scopes: frozenset[str], user_id: str | None = None
    ) -> str:
        signer = max(self._keys.values(), key=lambda k: k.created_at)
        assert signer.private is not None
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": user_id or client_id,
            "client_id": client_id,
            "tenant": tenant_id,
            "scope": " ".join(sorted(scopes)),
            "iat": now,
            "nbf": now,
            "exp": now + self.ttl,
            "jti": secrets.token_hex(12),
        }
        if user_id:
            claims["uid"] = user_id
        return jwt.encode(
            claims, signer.private, algorithm=ALGORITHM, headers={"kid": signer.kid, "typ": "at+jwt"}
        )

    def verify(self, token: str) -> Principal:
        cached = self._cache.get(token)
        now = time.time()
        if cached is not None:
            if cached.expires_at + LEEWAY_SECONDS > now:
                return cached
            del self._cache[token]
        principal = self._verify(token)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[token] = principal
        return principal

    def _verify(self, token: str) -> Principal:
        if len(token) > 4096:
            raise InvalidToken("token too long")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"malformed header: {exc}") from exc
        if str(header.get("typ", "")).lower() not in ACCEPTED_TYP:
            raise InvalidToken("wrong typ")
        if header.get("alg") != ALGORITHM:
            raise InvalidToken("algorithm not accepted")
        key = self._keys.get(str(header.get("kid", "")))
        if key is None:
            raise InvalidToken("unknown kid")
        try:
            claims = jwt.decode(
                token,
                key=key.public,
                algorithms=[ALGORITHM],
                audience=self.audience,
                issuer=self.issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iat", "nbf", "iss", "aud", "sub", "jti"]},
            )
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"rejected: {exc}") from exc
        # RFC 7519 NumericDate: a JSON number. PyJWT would also take "9999999999" (a string).
        for name in ("exp", "nbf", "iat"):
            if type(claims[name]) not in (int, float):
                raise InvalidToken(f"{name} is not a NumericDate")
        tenant = claims.get("tenant")
        client_id = claims.get("client_id")
        scope = claims.get("scope", "")
        if not isinstance(tenant, str) or not isinstance(client_id, str) or not isinstance(scope, str):
            raise InvalidToken("missing tenant, client_id or scope")
        user_id = claims.get("uid")
        return Principal(
            client_id=client_id,
            tenant_id=tenant,
            scopes=frozenset(scope.split()),
            user_id=user_id if isinstance(user_id, str) else None,
            expires_at=int(claims["exp"]),
        )
