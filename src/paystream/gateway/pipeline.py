"""The request path of the public edge, composed from one module per step:

    authenticate → rate_limit → (scope) → read → idempotency → forward (or a local write)

`Pipeline.handle` is that path for every forwarding route of `ROUTES`; `Pipeline.local_write`
and `Pipeline.once` are the same steps for the writes the gateway serves itself (clients in
`identity/clients.py`, users in `identity/users.py`, cards in `vault/cards.py`). The
audited step wraps a state-changing request from outside (`api.py`, which only maps
URLs to these). Each step is its own object, built in `service.py` and testable alone.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from paystream.gateway.audit import Audit
from paystream.gateway.authenticate import Authenticate, insufficient_scope, unauthorized
from paystream.gateway.domain import Principal, fingerprint
from paystream.gateway.forward import Forward, Invalid, nul_in_params, read_body, validation_problem_from
from paystream.gateway.idempotency import Idempotency, Keep, key_refused
from paystream.gateway.rate_limit import RateLimit
from paystream.gateway.routes import Route, route_class
from paystream.platform.observability import bound

ModelT = TypeVar("ModelT", bound=BaseModel)


def correlation_of(request: Request) -> str:
    """The caller's correlation id (at most 128 characters), or a new one."""
    return request.headers.get("x-correlation-id", "")[:128] or uuid.uuid4().hex


@dataclass(frozen=True, slots=True, kw_only=True)
class Pipeline:
    """The steps of the request path, in order."""

    authenticate: Authenticate
    rate_limit: RateLimit
    idempotency: Idempotency
    forward: Forward
    audit: Audit

    async def handle(self, route: Route, request: Request) -> Response:
        """A forwarding route's request, from its headers to the owning service's answer."""
        principal = self.authenticate(request)
        request.state.principal = principal
        limited = await self.rate_limit(route_class(route), request, principal.client_id if principal else None)
        if limited is not None:
            return limited
        if principal is None:
            return unauthorized()
        if route.scope not in principal.scopes:
            return insufficient_scope(route.scope)
        correlation_id = correlation_of(request)
        with bound(correlation_id=correlation_id, client_id=principal.client_id):
            nul = nul_in_params(request)
            if nul:
                return validation_problem_from(nul)
            try:
                body = await read_body(request, route.body, route.body_required) if route.body is not None else None
            except Invalid as exc:
                return validation_problem_from(exc.errors)
            key = request.headers.get("idempotency-key")
            refused = key_refused(key, required=route.idempotency == "required")
            if refused is not None:
                return refused
            if key is None or route.idempotency == "none":
                return await self.forward(route, request, principal, body, None, correlation_id)
            return await self.idempotency.run(
                request, principal, key, fingerprint(route.method, request.url.path, body),
                f"{route.method} {route.path}",
                lambda: self.forward(route, request, principal, body, key, correlation_id), correlation_id,
            )

    async def local_write(
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
            return insufficient_scope(scope)
        refused = key_refused(request.headers.get("idempotency-key"), required=False)
        if refused is not None:
            return refused
        try:
            body = await read_body(request, model, True)
        except Invalid as exc:
            return validation_problem_from(exc.errors)
        return principal, model.model_validate(body)

    async def once(
        self, request: Request, principal: Principal, same: Any, produce: Callable[[], Awaitable[Response]],
        *, keep: Keep | None = None,
    ) -> Response:
        """A local write, under its Idempotency-Key when it has one (``same``: what makes two
        requests the same one, with nothing secret in it)."""
        key = request.headers.get("idempotency-key")
        if key is None:
            return await produce()
        return await self.idempotency.run(
            request, principal, key, fingerprint("POST", request.url.path, same), f"POST {request.url.path}",
            produce, correlation_of(request), keep=keep,
        )
