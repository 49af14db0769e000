"""The OAuth2 grants of the token endpoint: client credentials for API clients, and for
wallet users (through a wallet app's client) the password and refresh-token grants.

`TokenEndpoint` reads and rate-limits the request; `Grants.answer` decides it. Every
refusal is an RFC 6749 error body (`oauth_error`) that says no more than it must: an
unknown client and a wrong secret get the same answer.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

import asyncpg
from fastapi import Request, Response

from paystream.gateway.domain import parse_scope
from paystream.gateway.edge import ApiError, basic_credentials, oauth_error, read_limited
from paystream.gateway.identity.clients import ClientStore, secret_matches
from paystream.gateway.identity.tokens import TokenService
from paystream.gateway.identity.users import USER_SCOPES, UserStore
from paystream.gateway.rate_limit import RateLimit
from paystream.platform.http import JSONResponse


class Grants:
    """Answers a token request's form once the edge has read and rate-limited it."""

    def __init__(self, *, pool: asyncpg.Pool, clients: ClientStore, users: UserStore | None,
                 tokens: TokenService) -> None:
        self.pool = pool
        self.clients = clients
        self.users = users
        self.tokens = tokens

    async def answer(self, form: dict[str, str], client_id: str | None, client_secret: str | None) -> Response:
        """The token response (or OAuth error) for ``form``, from a client that presented
        ``client_id`` and ``client_secret`` (in the form or by HTTP Basic)."""
        grant_type = form.get("grant_type")
        if grant_type == "password":
            return await self._password_grant(form, client_id, client_secret)
        if grant_type == "refresh_token":
            return await self._refresh_grant(form, client_id, client_secret)
        if grant_type != "client_credentials":
            return oauth_error(400, "unsupported_grant_type",
                                "grant_type must be client_credentials, password or refresh_token")
        return await self._client_credentials(form, client_id, client_secret)

    async def _client_credentials(self, form: dict[str, str], client_id: str | None,
                                  client_secret: str | None) -> Response:
        if not client_id or not client_secret or len(client_id) > 64 or len(client_secret) > 256:
            return oauth_error(401, "invalid_client", "client authentication failed")
        async with self.pool.acquire() as conn:
            client = await self.clients.get_client(conn, client_id)
        if client is None or client["disabled"] or not secret_matches(client_secret, client["secret_hash"]):
            return oauth_error(401, "invalid_client", "client authentication failed")
        scopes = parse_scope(form.get("scope"), frozenset(client["scopes"]))
        if scopes is None:
            return oauth_error(400, "invalid_scope", "a requested scope is not granted to this client")
        token = self.tokens.issue(client_id=client["id"], tenant_id=client["tenant_id"], scopes=scopes)
        return JSONResponse(
            {"access_token": token, "token_type": "Bearer", "expires_in": self.tokens.ttl,
             "scope": " ".join(sorted(scopes))},
            headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
        )

    async def _wallet_client(self, client_id: str | None, client_secret: str | None) -> Any:
        """The client a user signs in through (or the OAuth error to answer): it must exist
        and be enabled; a secret, if sent, must be right (wallet apps are public clients)."""
        if self.users is None:
            return oauth_error(400, "unsupported_grant_type", "wallet users need the vault's keyring")
        refused = oauth_error(401, "invalid_client", "client authentication failed")
        if not client_id or len(client_id) > 64 or (client_secret is not None and len(client_secret) > 256):
            return refused
        async with self.pool.acquire() as conn:
            client = await self.clients.get_client(conn, client_id)
        if client is None or client["disabled"]:
            return refused
        if client_secret is not None and not secret_matches(client_secret, client["secret_hash"]):
            return refused
        return client

    def _user_tokens(self, *, client_id: str, tenant_id: str, user_id: str, scopes: frozenset[str],
                     refresh_token: str) -> Response:
        token = self.tokens.issue(client_id=client_id, tenant_id=tenant_id, scopes=scopes, user_id=user_id)
        return JSONResponse(
            {"access_token": token, "token_type": "Bearer", "expires_in": self.tokens.ttl,
             "scope": " ".join(sorted(scopes)), "refresh_token": refresh_token},
            headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
        )

    async def _password_grant(self, form: dict[str, str], client_id: str | None,
                              client_secret: str | None) -> Response:
        client = await self._wallet_client(client_id, client_secret)
        if isinstance(client, Response):
            return client
        assert self.users is not None
        username, password = form.get("username", ""), form.get("password", "")
        scopes = parse_scope(form.get("scope"), USER_SCOPES & frozenset(client["scopes"]))
        if scopes is None:
            return oauth_error(400, "invalid_scope", "a requested scope is not granted to users")
        now = datetime.now(UTC)
        if not username or not password or len(username) > 320 or len(password) > 1024:
            return oauth_error(400, "invalid_grant", "the user credentials are not valid")
        async with self.pool.acquire() as conn:
            user = await self.users.sign_in(conn, tenant_id=client["tenant_id"], email=username,
                                            password=password, now=now)
            if user is None:
                return oauth_error(400, "invalid_grant", "the user credentials are not valid")
            refresh = await self.users.issue_refresh(
                conn, user_id=user.user_id, tenant_id=user.tenant_id, client_id=client["id"],
                scopes=sorted(scopes), now=now,
            )
        return self._user_tokens(client_id=client["id"], tenant_id=user.tenant_id, user_id=user.user_id,
                                 scopes=scopes, refresh_token=refresh)

    async def _refresh_grant(self, form: dict[str, str], client_id: str | None,
                             client_secret: str | None) -> Response:
        client = await self._wallet_client(client_id, client_secret)
        if isinstance(client, Response):
            return client
        assert self.users is not None
        presented = form.get("refresh_token", "")
        if not presented or len(presented) > 256:
            return oauth_error(400, "invalid_grant", "the refresh token is not valid")
        async with self.pool.acquire() as conn:
            refreshed = await self.users.rotate_refresh(conn, token=presented, client_id=client["id"],
                                                        now=datetime.now(UTC))
        if refreshed is None:
            return oauth_error(400, "invalid_grant", "the refresh token is not valid")
        return self._user_tokens(client_id=client["id"], tenant_id=refreshed.tenant_id,
                                 user_id=refreshed.user_id, scopes=refreshed.scopes,
                                 refresh_token=refreshed.refresh_token)


class TokenEndpoint:
    """``POST /oauth/token``: the form read, its client rate-limited ("auth"), then `Grants`."""

    def __init__(self, *, grants: Grants, rate_limit: RateLimit) -> None:
        self.grants = grants
        self.rate_limit = rate_limit

    async def __call__(self, request: Request) -> Response:
        try:
            raw = await read_limited(request, 8192)
        except ApiError:
            return oauth_error(413, "invalid_request", "request too large")
        content_type = request.headers.get("content-type", "")
        if "application/x-www-form-urlencoded" not in content_type.lower():
            return oauth_error(400, "invalid_request", "send the form as application/x-www-form-urlencoded")
        try:
            form = {k: v[0] for k, v in parse_qs(raw.decode(), strict_parsing=False).items()}
        except UnicodeDecodeError:
            return oauth_error(400, "invalid_request", "the form is not valid UTF-8")
        client_id, client_secret = form.get("client_id"), form.get("client_secret")
        basic = basic_credentials(request.headers.get("authorization", ""))
        if basic is not None:
            client_id, client_secret = basic
        request.state.actor = client_id[:64] if client_id else None
        limited = await self.rate_limit("auth", request, client_id[:64] if client_id else None)
        if limited is not None:
            return limited
        return await self.grants.answer(form, client_id, client_secret)
