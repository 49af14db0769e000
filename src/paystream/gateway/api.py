"""The gateway's HTTP routes, thin: each URL mapped to its step of the pipeline.

`api.py` keeps the role every service's `api.py` has (ARCHITECTURE §4: HTTP routes, thin);
the request path itself is `pipeline.py`, and the writes the gateway serves itself live
with their sub-package (`identity/`, `vault/`). State-changing routes run inside the
audited step (`audit.Audit.audited`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import FastAPI, Request, Response

from paystream.gateway.edge import HeaderLimit
from paystream.gateway.identity.tokens import TokenService
from paystream.gateway.pipeline import Pipeline
from paystream.gateway.routes import ROUTES, Route
from paystream.platform.http import JSONResponse

Handler = Callable[[Request], Awaitable[Response]]
"""A route's endpoint: a request in, a response out."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoints:
    """What the routes call: the pipeline, and the endpoints the gateway answers itself."""

    pipeline: Pipeline
    tokens: TokenService  # for the JWKS
    token: Handler  # POST /oauth/token
    create_client: Handler  # POST /v1/clients
    create_user: Handler  # POST /v1/users
    create_card: Handler  # POST /v1/cards


def install_routes(app: FastAPI, endpoints: Endpoints) -> None:
    """Register the OAuth2, JWKS, clients, users, cards and every forwarding route of `ROUTES`."""
    app.add_middleware(HeaderLimit)
    audited = endpoints.pipeline.audit.audited

    async def jwks() -> Response:
        return JSONResponse(endpoints.tokens.jwks(), headers={"Cache-Control": "max-age=60"})

    def audit(action: str, call: Handler) -> Handler:
        async def endpoint(request: Request) -> Response:
            return await audited(action, request, call)

        return endpoint

    app.add_api_route("/oauth/token", audit("POST /oauth/token", endpoints.token), methods=["POST"],
                      include_in_schema=False, name="token")
    app.add_api_route("/.well-known/jwks.json", jwks, methods=["GET"], include_in_schema=False)
    for path, call, name in (("/v1/clients", endpoints.create_client, "create_client"),
                             ("/v1/users", endpoints.create_user, "create_user"),
                             ("/v1/cards", endpoints.create_card, "create_card")):
        app.add_api_route(path, audit(f"POST {path}", call), methods=["POST"], include_in_schema=False,
                          name=name)
    # One route per path, whatever its methods: a request with another method then gets a
    # 405 whose Allow names all of them (with a route per method, only the first one's).
    by_path: dict[str, dict[str, Route]] = {}
    for route in ROUTES:
        by_path.setdefault(route.path, {})[route.method] = route
    for path, routes in by_path.items():
        handlers = {method: _endpoint(endpoints.pipeline, route) for method, route in routes.items()}
        app.add_api_route(path, _by_method(handlers), methods=sorted(routes), include_in_schema=False,
                          name=path)


def _by_method(handlers: dict[str, Handler]) -> Handler:
    async def dispatch(request: Request) -> Response:
        return await handlers[request.method](request)

    return dispatch


def _endpoint(pipeline: Pipeline, route: Route) -> Handler:
    if route.method == "GET":
        async def read(request: Request) -> Response:
            return await pipeline.handle(route, request)

        return read
    action = f"{route.method} {route.path}"

    async def change(request: Request) -> Response:
        return await pipeline.audit.audited(action, request, lambda r: pipeline.handle(route, r))

    return change
