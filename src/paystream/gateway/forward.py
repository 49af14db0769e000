"""Step 4 of the request path: the request read (path, query, body against its public
schema) and forwarded to the service that owns the resource, over internal HTTP.

`read_body` and `nul_in_params` refuse what the owning service must never see (bodies
that do not fit, U+0000 that PostgreSQL text cannot hold); they raise or return `Invalid`
errors, which `validation_problem_from` turns into the 422 problem. `Forward` sends the
checked request on and relays the answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import orjson
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from paystream.gateway.domain import Principal
from paystream.gateway.edge import (
    MAX_BODY_BYTES,
    MAX_JSON_DEPTH,
    ApiError,
    deeper_than,
    nul_error,
    nul_errors,
    object_id,
    read_limited,
)
from paystream.gateway.routes import Route
from paystream.platform.http import Caller, validation_problem
from paystream.platform.internal import InternalClient
from paystream.platform.observability import get_logger

log = get_logger(__name__)


class Invalid(Exception):
    """A body that does not fit its schema; ``errors`` are pydantic-style error dicts."""

    def __init__(self, errors: Sequence[Any]) -> None:
        self.errors = errors


def validation_problem_from(errors: Sequence[Any]) -> Response:
    """The 422 problem for pydantic-style ``errors``."""
    return validation_problem(RequestValidationError(errors))


def nul_in_params(request: Request) -> list[dict[str, Any]]:
    """The errors for U+0000 in the path parameters or the query string (none: [])."""
    return [
        *(nul_error(("path", k)) for k, v in request.path_params.items() if "\x00" in v),
        *(nul_error(("query", k)) for k, v in request.query_params.multi_items()
          if "\x00" in k or "\x00" in v),
    ]


async def read_body(request: Request, model: type[BaseModel], required: bool) -> Any:
    """The body as a JSON object that fits ``model`` ({} when absent and not ``required``).
    Raises `ApiError` (400, 413, 415) or `Invalid` (422)."""
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
        raise Invalid([{"type": "model_type", "loc": ("body",),
                        "msg": "the body must be a JSON object"}])
    if deeper_than(data, MAX_JSON_DEPTH):
        raise ApiError(400, "json_too_deep", "JSON nested too deeply",
                       f"request bodies may nest objects and arrays {MAX_JSON_DEPTH} levels deep")
    try:
        model.model_validate(data)
    except ValidationError as exc:
        raise Invalid(exc.errors(include_url=False)) from None
    # PostgreSQL text cannot hold U+0000: refuse it here rather than fail with a 500
    # downstream. The body matches its schema by now, so it is only a few levels deep.
    nul = nul_errors(data, ("body",))
    if nul:
        raise Invalid(nul)
    return data


class Forward:
    """Sends a checked request to the service that owns its route, and relays the answer."""

    def __init__(self, services: dict[str, InternalClient]) -> None:
        self.services = services

    async def __call__(
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
