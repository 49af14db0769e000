"""The public HTTP edge: OAuth2 token endpoint, JWKS, clients, and the forwarding routes.

Every ``/v1`` request is, in order: authenticated (Bearer JWT), checked for its scope,
its body parsed and validated against the public schema, its Idempotency-Key honoured,
and then forwarded to the service that owns the resource.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import parse_qs, quote

import asyncpg
import orjson
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from paystream.contracts.api import CardCreate, ClientCreate, UserCreate
from paystream.gateway.audit import AuditRecord
from paystream.gateway.audit import append as append_audit
from paystream.gateway.cards import CardRejected, check_cvc, check_expiry, parse_number
from paystream.gateway.domain import Principal, fingerprint, idempotency_verdict, valid_idempotency_key
from paystream.gateway.edge import (
    MAX_BODY_BYTES,
    MAX_JSON_DEPTH,
    ApiError,
    HeaderLimit,
    basic_credentials,
    deeper_than,
    nul_error,
    nul_errors,
    oauth_error,
    object_id,
    read_limited,
)
from paystream.gateway.grants import Grants
from paystream.gateway.ratelimit import LimiterUnavailable, RateLimiter
from paystream.gateway.routes import ROUTES, Route, route_class
from paystream.gateway.store import ClientStore, IdempotencyStore
from paystream.gateway.tokens import InvalidToken, TokenService
from paystream.gateway.users import UserExists, UserStore
from paystream.gateway.vault import CardVault, card_body
from paystream.platform.crypto import Keyring, Sealed, open_sealed, seal
from paystream.platform.errors import DomainError
from paystream.platform.http import Caller, JSONResponse, problem, validation_problem
from paystream.platform.internal import InternalClient
from paystream.platform.observability import bound, get_logger

log = get_logger(__name__)

Handler = Callable[[Request], Awaitable[Response]]
"""A route's endpoint: a request in, a response out."""

ModelT = TypeVar("ModelT", bound=BaseModel)


def unauthorized() -> Response:
    return problem(
        401, "unauthorized", "Unauthorized", "missing or invalid access token",
        headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
    )


class Gateway:
    """The edge's behaviour, independent of how routes are registered."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        tokens: TokenService,
        services: dict[str, InternalClient],
        internal_token: str,
        limiter: RateLimiter | None = None,
        vault: CardVault | None = None,
    ) -> None:
        self.pool = pool
        self.limiter = limiter
        self.vault = vault
        self.tokens = tokens
        self.services = services
        self.clients = ClientStore()
        self.idempotency = IdempotencyStore()
        self.users = UserStore(vault.keyring) if vault is not None else None
        self.grants = Grants(pool=pool, clients=self.clients, users=self.users, tokens=tokens)
        self._internal_token = internal_token

    # -- authentication ------------------------------------------------------------------

    def authenticate(self, request: Request) -> Principal | None:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        try:
            return self.tokens.verify(token.strip())
        except InvalidToken as exc:
            log.info("token_rejected", reason=str(exc))
            return None

    # -- body ----------------------------------------------------------------------------

    async def parse_body(self, request: Request, model: type[BaseModel], required: bool) -> Any:
        raw = await read_limited(request, MAX_BODY_BYTES)
        if not raw.strip():
            if not required:
                return {}
            raise ApiError(400, "body_required", "Bad request", "a JSON object body is required")
        content_type = request.headers.get("content-type", "application/json")
        if "json" not in content_type.lower():
            raise ApiError(415, "unsupported_media_type", "Unsupported media type",
                           "send the body as application/json")
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise ApiError(400, "malformed_json", "Malformed JSON",
                           "the request body is not valid JSON") from None
        if not isinstance(data, dict):
            raise _Invalid([{"type": "model_type", "loc": ("body",),
                             "msg": "the body must be a JSON object"}])
        if deeper_than(data, MAX_JSON_DEPTH):
            raise ApiError(400, "json_too_deep", "JSON nested too deeply",
                           f"request bodies may nest objects and arrays {MAX_JSON_DEPTH} levels deep")
        try:
            model.model_validate(data)
        except ValidationError as exc:
            raise _Invalid(exc.errors(include_url=False)) from None
        # PostgreSQL text cannot hold U+0000: refuse it here rather than fail with a 500
        # downstream. The body matches its schema by now, so it is only a few levels deep.
        nul = nul_errors(data, ("body",))
        if nul:
            raise _Invalid(nul)
        return data

    # -- forwarding ----------------------------------------------------------------------

    async def forward(
        self, route: Route, request: Request, principal: Principal, body: Any, key: str | None,
        correlation_id: str,
    ) -> Response:
        path_params = {k: quote(str(v), safe="") for k, v in request.path_params.items()}
        internal_path = "/internal" + route.path.removeprefix("/v1").format(**path_params)
        caller = Caller(
            tenant_id=principal.tenant_id,
            client_id=principal.client_id,
            user_id=principal.user_id,
            scopes=principal.scopes,
            correlation_id=correlation_id,
            idempotency_key=key,
        )
        content = orjson.dumps(body) if route.body is not None else None
        upstream = await self.services[route.service].request(
            route.method, internal_path, caller, content=content,
            params=request.url.query or None,
        )
        headers = {"x-correlation-id": correlation_id}
        log.info("api_request", method=route.method, route=route.path,
                 status=upstream.status_code, object_id=object_id(upstream.content))
        return Response(
            upstream.content,
            status_code=upstream.status_code,
            media_type=upstream.headers.get("content-type"),
            headers=headers,
        )

    # -- rate limits ---------------------------------------------------------------------

    async def rate_limit(self, route_class: str, request: Request, client_id: str | None) -> Response | None:
        """None when the request may go on; else the 429 (or, failing closed, 503) to send."""
        if self.limiter is None:
            return None
        subjects = [f"addr:{request.client.host if request.client else 'unknown'}"]
        if client_id:
            subjects.append(f"client:{client_id}")
        try:
            decision = await self.limiter.check(route_class, *subjects)
        except LimiterUnavailable:
            return problem(503, "rate_limiter_unavailable", "Service unavailable",
                           "this request cannot be checked against its rate limit now; retry shortly",
                           headers={"Retry-After": "5"})
        if decision.allowed:
            return None
        return problem(429, "rate_limited", "Too many requests",
                       f"the {route_class} rate limit ({decision.limit.count} per "
                       f"{decision.limit.period:g}s) is exhausted; retry after the Retry-After delay",
                       headers=decision.headers())

    # -- audit ---------------------------------------------------------------------------

    async def audited(
        self, action: str, request: Request, call: Handler
    ) -> Response:
        """Run a state-changing request and append its audit record, whatever the outcome."""
        status, response = 500, None
        try:
            response = await call(request)
            status = response.status_code
            return response
        except DomainError as exc:
            status = exc.status
            raise
        finally:
            await self._audit(action, request, status, response)

    async def _audit(self, action: str, request: Request, status: int, response: Response | None) -> None:
        if getattr(request.state, "audited", False):
            return  # appended with the idempotency record, in the same transaction
        record = self._audit_record(action, request, status, response)
        try:
            async with self.pool.acquire() as conn:
                await append_audit(conn, record)
        except Exception as exc:  # the request happened; losing its record must be loud
            log.error("audit_append_failed", action=action, outcome=status, error=repr(exc))

    def _audit_record(self, action: str, request: Request, status: int, response: Response | None) -> AuditRecord:
        principal: Principal | None = getattr(request.state, "principal", None)
        return AuditRecord(
            actor=principal.client_id if principal else getattr(request.state, "actor", None) or "anonymous",
            user_id=principal.user_id if principal else None,
            tenant_id=principal.tenant_id if principal else None,
            source=request.client.host if request.client else "unknown",
            action=action,
            outcome=status,
            object_id=getattr(request.state, "object_id", None) or (
                object_id(bytes(response.body)) if response is not None and status < 300 else None
            ),
            correlation_id=response.headers.get("x-correlation-id") if response is not None else None,
        )

    async def handle(self, route: Route, request: Request) -> Response:
        principal = self.authenticate(request)
        request.state.principal = principal
        limited = await self.rate_limit(route_class(route), request,
                                        principal.client_id if principal else None)
        if limited is not None:
            return limited
        if principal is None:
            return unauthorized()
        if route.scope not in principal.scopes:
            return problem(403, "insufficient_scope", "Forbidden",
                           f"this route needs the {route.scope} scope")
        correlation_id = request.headers.get("x-correlation-id", "")[:128] or uuid.uuid4().hex
        with bound(correlation_id=correlation_id, client_id=principal.client_id):
            nul = [
                *(nul_error(("path", k)) for k, v in request.path_params.items() if "\x00" in v),
                *(nul_error(("query", k)) for k, v in request.query_params.multi_items()
                  if "\x00" in k or "\x00" in v),
            ]
            if nul:
                return validation_problem_from(nul)
            try:
                body = (
                    await self.parse_body(request, route.body, route.body_required)
                    if route.body is not None else None
                )
            except _Invalid as exc:
                return validation_problem_from(exc.errors)
            key = request.headers.get("idempotency-key")
            if key is None and route.idempotency == "required":
                return problem(400, "idempotency_key_required", "Idempotency-Key required",
                               "send an Idempotency-Key header (1-255 characters) with this request")
            if key is not None and not valid_idempotency_key(key):
                return problem(400, "invalid_idempotency_key", "Invalid Idempotency-Key",
                               "the Idempotency-Key must be 1-255 printable ASCII characters")
            if key is None or route.idempotency == "none":
                return await self.forward(route, request, principal, body, None, correlation_id)
            return await self._idempotent(
                request, principal, key, fingerprint(route.method, request.url.path, body),
                f"{route.method} {route.path}",
                lambda: self.forward(route, request, principal, body, key, correlation_id), correlation_id,
            )

    async def _idempotent(
        self, request: Request, principal: Principal, key: str, request_fp: str, action: str,
        produce: Callable[[], Awaitable[Response]], correlation_id: str, *, keep: Keep | None = None,
    ) -> Response:
        """Answer a request with an Idempotency-Key: the first answer again for the same key and
        request, 422 for another request, 409 while the first runs; else ``produce`` it. ``keep``
        says how the answer is stored and read back, when it holds what must not lie in clear."""
        now = datetime.now(UTC)
        async with self.pool.acquire() as conn:
            stored = await self.idempotency.begin(conn, principal.client_id, key, request_fp, now)
            if stored is not None:
                verdict = idempotency_verdict(stored, request_fp, now)
                if verdict == "replay":
                    assert stored.status_code is not None and stored.response_body is not None
                    body = stored.response_body
                    if keep is not None and stored.status_code < 300:
                        body = keep.replayed(body)
                    return Response(
                        body, status_code=stored.status_code,
                        media_type=stored.response_type,
                        headers={"Idempotent-Replayed": "true", "x-correlation-id": correlation_id},
                    )
                if verdict == "mismatch":
                    return problem(422, "idempotency_key_reused", "Idempotency-Key reused",
                                   "this Idempotency-Key was used with a different request")
                if verdict == "in_progress" or not await self.idempotency.take_over(
                    conn, principal.client_id, key, now
                ):
                    return problem(409, "idempotency_key_in_use", "Request in progress",
                                   "a request with this Idempotency-Key is still being processed")
        try:
            response = await produce()
        except BaseException:
            await self._abandon(principal.client_id, key)
            raise
        if response.status_code >= 500:
            await self._abandon(principal.client_id, key)
            return response
        # The stored answer and the audit record in one commit (one WAL flush, one round trip
        # fewer than appending the record on its own).
        record = self._audit_record(action, request, response.status_code, response)
        body = bytes(response.body)
        async with self.pool.acquire() as conn, conn.transaction():
            await self.idempotency.finish(
                conn, principal.client_id, key, response.status_code,
                keep.stored(body) if keep is not None and response.status_code < 300 else body,
                response.media_type or "application/json",
            )
            await append_audit(conn, record)
        request.state.audited = True
        return response

    async def _abandon(self, client_id: str, key: str) -> None:
        try:
            async with self.pool.acquire() as conn:
                await self.idempotency.abandon(conn, client_id, key)
        except Exception as exc:  # the lease will expire and let a retry take over
            log.warning("idempotency_abandon_failed", error=repr(exc))

    # -- OAuth2 --------------------------------------------------------------------------

    async def token(self, request: Request) -> Response:
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

    async def _local_write(
        self, request: Request, scope: str, model: type[ModelT], *, users_may: bool = True
    ) -> tuple[Principal, ModelT] | Response:
        """What every write the gateway serves itself does first: authenticate, rate-limit,
        check the scope and the Idempotency-Key, validate the body. Returns the caller and the
        body, or the answer."""
        principal = self.authenticate(request)
        request.state.principal = principal
        limited = await self.rate_limit("write", request, principal.client_id if principal else None)
        if limited is not None:
            return limited
        if principal is None:
            return unauthorized()
        if scope not in principal.scopes or (principal.user_id is not None and not users_may):
            return problem(403, "insufficient_scope", "Forbidden", f"this route needs the {scope} scope")
        key = request.headers.get("idempotency-key")
        if key is not None and not valid_idempotency_key(key):
            return problem(400, "invalid_idempotency_key", "Invalid Idempotency-Key",
                           "the Idempotency-Key must be 1-255 printable ASCII characters")
        try:
            body = await self.parse_body(request, model, True)
        except _Invalid as exc:
            return validation_problem_from(exc.errors)
        return principal, model.model_validate(body)

    async def _once(
        self, request: Request, principal: Principal, same: Any, produce: Callable[[], Awaitable[Response]],
        *, keep: Keep | None = None,
    ) -> Response:
        """A local write, under its Idempotency-Key when it has one (``same``: what makes two
        requests the same one, with nothing secret in it)."""
        key = request.headers.get("idempotency-key")
        if key is None:
            return await produce()
        action = f"POST {request.url.path}"
        correlation_id = request.headers.get("x-correlation-id", "")[:128] or uuid.uuid4().hex
        return await self._idempotent(request, principal, key, fingerprint("POST", request.url.path, same),
                                      action, produce, correlation_id, keep=keep)

    async def create_card(self, request: Request) -> Response:
        checked = await self._local_write(request, "cards:write", CardCreate)
        if isinstance(checked, Response):
            return checked
        principal, spec = checked
        if self.vault is None:
            return problem(503, "vault_unavailable", "Service unavailable", "the card vault has no keyring")
        today = datetime.now(UTC)
        try:
            card = parse_number(spec.number)
            check_cvc(card, spec.cvc)
            check_expiry(spec.exp_month, spec.exp_year, today_year=today.year, today_month=today.month)
        except CardRejected as exc:
            return validation_problem_from([{"type": "card", "loc": ("body", exc.field), "msg": str(exc)}])
        owner = principal.user_id or spec.owner_user_id
        vault = self.vault

        async def store() -> Response:
            async with self.pool.acquire() as conn:
                row = await vault.store(conn, tenant_id=principal.tenant_id, owner_user_id=owner, card=card,
                                        exp_month=spec.exp_month, exp_year=spec.exp_year)
            request.state.object_id = row["id"]
            return JSONResponse(card_body(row), status_code=201)

        # "The same request" without the number or the CVC in clear: their keyed blind indexes.
        def blind(purpose: str, value: str) -> str:
            return vault.keyring.blind_index(f"{purpose}:{principal.tenant_id}", value).hex()

        same = {"number": blind("idempotency-card", card.digits), "cvc": blind("idempotency-cvc", spec.cvc),
                "exp_month": spec.exp_month, "exp_year": spec.exp_year, "owner_user_id": owner}
        return await self._once(request, principal, same, store)

    async def create_user(self, request: Request) -> Response:
        checked = await self._local_write(request, "users:write", UserCreate, users_may=False)
        if isinstance(checked, Response):
            return checked
        principal, spec = checked
        users = self.users
        if users is None:
            return problem(503, "vault_unavailable", "Service unavailable", "users need the vault's keyring")

        async def create() -> Response:
            try:
                async with self.pool.acquire() as conn:
                    row = await users.create(conn, tenant_id=principal.tenant_id, email=spec.email,
                                             name=spec.name, password=spec.password)
            except UserExists:
                return problem(409, "user_exists", "Conflict", "a user with this email already exists")
            request.state.object_id = row["id"]
            return JSONResponse(row, status_code=201)

        # The password only as a keyed blind index (the key store of the vault), never in clear.
        same = {"email": spec.email, "name": spec.name,
                "password": users.keyring.blind_index(f"idempotency-password:{principal.tenant_id}",
                                                      spec.password).hex()}
        return await self._once(request, principal, same, create, keep=_sealed(users.keyring, principal, request))

    async def create_client(self, request: Request) -> Response:
        checked = await self._local_write(request, "admin", ClientCreate, users_may=False)
        if isinstance(checked, Response):
            return checked
        principal, spec = checked

        async def create() -> Response:
            async with self.pool.acquire() as conn:
                row, secret = await self.clients.create_client(
                    conn, tenant_id=spec.tenant, name=spec.name, scopes=spec.scopes
                )
            request.state.object_id = row["id"]
            log.info("client_created", new_client_id=row["id"], tenant=spec.tenant, by=principal.client_id)
            return JSONResponse(
                {"client_id": row["id"], "client_secret": secret, "name": row["name"],
                 "tenant": row["tenant_id"], "scopes": list(row["scopes"]), "created_at": row["created_at"]},
                status_code=201,
            )

        return await self._once(request, principal, spec.model_dump(mode="json"), create,
                                keep=Keep(stored=_without_secret, replayed=lambda body: body))


@dataclass(frozen=True, slots=True)
class Keep:
    """How an answer is stored under its Idempotency-Key, and read back for a replay."""

    stored: Callable[[bytes], bytes]
    replayed: Callable[[bytes], bytes]


def _sealed(keyring: Keyring, principal: Principal, request: Request) -> Keep:
    """A created user's answer (email, name: personal data) kept sealed like the user row."""
    context = f"idempotency:{principal.client_id}:{request.headers.get('idempotency-key')}"

    def stored(body: bytes) -> bytes:
        box = seal(keyring, body.decode(), context)
        return orjson.dumps({"sealed": [box.kek_version, *(base64.b64encode(b).decode()
                                                            for b in (box.wrapped_dek, box.nonce, box.ciphertext))]})

    def replayed(body: bytes) -> bytes:
        version, *parts = orjson.loads(body)["sealed"]
        wrapped, nonce, ciphertext = (base64.b64decode(part) for part in parts)
        return open_sealed(keyring, Sealed(version, wrapped, nonce, ciphertext), context).encode()

    return Keep(stored=stored, replayed=replayed)


def _without_secret(body: bytes) -> bytes:
    """A created client as its Idempotency-Key keeps it: the secret is shown once, never stored
    in clear, so a replay answers ``client_secret: null`` (the client exists once either way)."""
    created = orjson.loads(body)
    created["client_secret"] = None
    return orjson.dumps(created)


class _Invalid(Exception):
    """A body that does not fit its schema; ``errors`` are pydantic-style error dicts."""

    def __init__(self, errors: Sequence[Any]) -> None:
        self.errors = errors


def validation_problem_from(errors: Sequence[Any]) -> Response:
    return validation_problem(RequestValidationError(errors))


def install_routes(app: FastAPI, gateway: Gateway) -> None:
    """Register the OAuth2, JWKS, clients and every forwarding route of `ROUTES`."""
    app.add_middleware(HeaderLimit)

    async def jwks() -> Response:
        return JSONResponse(gateway.tokens.jwks(), headers={"Cache-Control": "max-age=60"})

    async def token(request: Request) -> Response:
        return await gateway.audited("POST /oauth/token", request, gateway.token)

    async def create_client(request: Request) -> Response:
        return await gateway.audited("POST /v1/clients", request, gateway.create_client)

    async def create_user(request: Request) -> Response:
        return await gateway.audited("POST /v1/users", request, gateway.create_user)

    async def create_card(request: Request) -> Response:
        return await gateway.audited("POST /v1/cards", request, gateway.create_card)

    app.add_api_route("/oauth/token", token, methods=["POST"], include_in_schema=False)
    app.add_api_route("/.well-known/jwks.json", jwks, methods=["GET"], include_in_schema=False)
    app.add_api_route("/v1/clients", create_client, methods=["POST"], include_in_schema=False)
    app.add_api_route("/v1/users", create_user, methods=["POST"], include_in_schema=False)
    app.add_api_route("/v1/cards", create_card, methods=["POST"], include_in_schema=False)
    # One route per path, whatever its methods: a request with another method then gets a
    # 405 whose Allow names all of them (with a route per method, only the first one's).
    by_path: dict[str, dict[str, Route]] = {}
    for route in ROUTES:
        by_path.setdefault(route.path, {})[route.method] = route
    for path, routes in by_path.items():
        handlers = {method: _endpoint(gateway, route) for method, route in routes.items()}
        app.add_api_route(path, _by_method(handlers), methods=sorted(routes), include_in_schema=False,
                          name=path)


def _by_method(handlers: dict[str, Handler]) -> Handler:
    async def dispatch(request: Request) -> Response:
        return await handlers[request.method](request)

    return dispatch


def _endpoint(gateway: Gateway, route: Route) -> Handler:
    if route.method == "GET":
        async def read(request: Request) -> Response:
            return await gateway.handle(route, request)

        return read
    action = f"{route.method} {route.path}"

    async def change(request: Request) -> Response:
        return await gateway.audited(action, request, lambda r: gateway.handle(route, r))

    return change


