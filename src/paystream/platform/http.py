"""HTTP plumbing every service shares: RFC 9457 problems, operations routes, metrics, callers.

Errors leave as ``application/problem+json`` with a stable ``code``; validation errors
list ``errors: [{field, message}]``; nothing ever leaks a stack trace.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from paystream.contracts.api import Problem
from paystream.platform.db import is_transient
from paystream.platform.errors import DomainError, InfrastructureError
from paystream.platform.observability import Metrics, bound, get_logger

log = get_logger(__name__)

PROBLEM_BASE = "https://paystream.dev/problems/"
PROBLEM_TYPE = "application/problem+json"

# Internal headers the gateway sets when it forwards a request to a service.
H_INTERNAL_TOKEN = "x-paystream-internal-token"  # noqa: S105 - a name, not a secret
H_TENANT = "x-paystream-tenant"
H_CLIENT = "x-paystream-client"
H_USER = "x-paystream-user"
H_SCOPES = "x-paystream-scopes"
H_CORRELATION = "x-correlation-id"
H_IDEMPOTENCY = "x-paystream-idempotency-key"


class JSONResponse(Response):
    """A JSON response encoded by orjson (datetimes as RFC 3339)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def problem(
    status: int,
    code: str,
    title: str,
    detail: str,
    *,
    errors: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """An RFC 9457 problem response (`Problem`; ``errors`` only for validation)."""
    body = Problem.body(type=PROBLEM_BASE + code, title=title, status=status, detail=detail,
                        code=code, errors=errors)
    return Response(
        orjson.dumps(body), status_code=status, media_type=PROBLEM_TYPE, headers=headers
    )


_TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Payload too large",
    415: "Unsupported media type",
    422: "Unprocessable request",
    429: "Too many requests",
    500: "Internal error",
    502: "Bad gateway",
    503: "Service unavailable",
    504: "Gateway timeout",
}


def _field(loc: Iterable[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def validation_problem(exc: RequestValidationError) -> Response:
    """400 for a body that is not JSON at all, 422 for JSON that does not fit the schema."""
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return problem(400, "malformed_json", "Malformed JSON", "the request body is not valid JSON")
    fields = []
    for error in errors:
        message = str(error.get("msg", "invalid"))
        if error.get("type") == "extra_forbidden":
            message = "unknown field"
        elif error.get("type") == "missing" and _field(error.get("loc", ())) == "body":
            message = "a JSON object body is required"
        fields.append({"field": _field(error.get("loc", ())), "message": message})
    return problem(
        422, "validation_error", "Validation failed",
        "the request does not match the schema", errors=fields,
    )


def install_error_handlers(app: FastAPI) -> None:
    """Map every error to a problem response; unexpected ones are logged, never shown."""

    async def on_domain(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, DomainError)
        return problem(exc.status, exc.code, exc.title, exc.detail)

    async def on_validation(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return validation_problem(exc)

    async def on_http(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        status = exc.status_code
        code = {404: "not_found", 405: "method_not_allowed"}.get(status, f"http_{status}")
        detail = exc.detail if isinstance(exc.detail, str) else _TITLES.get(status, "error")
        return problem(status, code, _TITLES.get(status, "Error"), detail,
                       headers=dict(exc.headers) if exc.headers else None)

    async def on_unavailable(_: Request, exc: Exception) -> Response:
        log.warning("dependency_unavailable", error=repr(exc))
        return problem(
            503, "service_unavailable", "Service unavailable",
            "a dependency is not answering; retry shortly with the same Idempotency-Key",
            headers={"Retry-After": "1"},
        )

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        if is_transient(exc):
            # The database (or another server) went away mid-request. Whether or not its work
            # committed, the same request with the same Idempotency-Key is safe to send again.
            return await on_unavailable(request, exc)
        log.error("unhandled_error", error=repr(exc), exc_info=exc)
        return problem(500, "internal_error", "Internal error", "an unexpected error occurred")

    app.add_exception_handler(DomainError, on_domain)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(InfrastructureError, on_unavailable)
    app.add_exception_handler(Exception, on_unexpected)


ReadinessCheck = Callable[[], Awaitable[str | None]]


def install_operations_routes(
    app: FastAPI, metrics: Metrics, readiness: list[ReadinessCheck]
) -> None:
    """``/healthz`` (alive), ``/readyz`` (can take work now) and ``/metrics``."""

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> Response:
        return JSONResponse({"status": "ok", "service": metrics.service})

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> Response:
        reasons = [reason for check in readiness if (reason := await check())]
        metrics.ready.set(0 if reasons else 1)
        if reasons:
            return problem(503, "not_ready", "Not ready", "; ".join(reasons))
        return JSONResponse({"status": "ready", "service": metrics.service})

    @app.get("/metrics", include_in_schema=False)
    async def metrics_route() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


OPERATIONS_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


class OperationsListener:
    """Pure ASGI middleware that keeps operations data off the service's own port: with an
    operations port, ``/readyz`` and ``/metrics`` answer only there, and that port answers
    nothing but ``/healthz``, ``/readyz`` and ``/metrics`` (anything else: 404 problem)."""

    def __init__(self, app: ASGIApp, port: int) -> None:
        self.app = app
        self.port = port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            server = scope.get("server")
            on_operations = server is not None and server[1] == self.port
            path = scope["path"]
            if on_operations != (path in OPERATIONS_PATHS) and path != "/healthz":
                where = "the operations port" if not on_operations else "the service's own port"
                response = problem(404, "not_found", "Not found", f"{path} is served on {where}")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class MetricsMiddleware:
    """Pure ASGI middleware: request counts and latency by route template, log context."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        correlation = ""
        for key, value in scope.get("headers", ()):
            if key == b"x-correlation-id":
                correlation = value.decode("latin-1")[:128]
                break
        self.metrics.http_in_flight.inc()
        try:
            with bound(correlation_id=correlation) if correlation else nullcontext():
                await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.http_in_flight.dec()
            route = scope.get("route")
            template = getattr(route, "path", "unmatched")
            self.metrics.http_requests.labels(scope["method"], template, str(status)).inc()
            self.metrics.http_seconds.labels(template).observe(time.perf_counter() - started)


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling an internal route, as the gateway established it."""

    tenant_id: str
    client_id: str
    user_id: str | None
    scopes: frozenset[str]
    correlation_id: str
    idempotency_key: str | None


class InternalAuth:
    """FastAPI dependency: accepts only requests carrying the gateway's internal token."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("an internal token is required")
        self._token = token.encode()

    async def __call__(self, request: Request) -> Caller:
        headers = request.headers
        presented = headers.get(H_INTERNAL_TOKEN, "").encode()
        tenant = headers.get(H_TENANT, "")
        if not hmac.compare_digest(presented, self._token) or not tenant:
            raise StarletteHTTPException(401, "internal route: missing or wrong credentials")
        return Caller(
            tenant_id=tenant,
            client_id=headers.get(H_CLIENT, ""),
            user_id=headers.get(H_USER) or None,
            scopes=frozenset(headers.get(H_SCOPES, "").split()),
            correlation_id=headers.get(H_CORRELATION, ""),
            idempotency_key=headers.get(H_IDEMPOTENCY) or None,
        )
