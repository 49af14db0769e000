"""The gateway's edge checks, pure or nearly: limits on headers, bodies and JSON depth,
NUL characters, Basic credentials, OAuth error bodies, and the object id of an answer."""

from __future__ import annotations

import base64
import binascii
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from paystream.contracts.api import OAuthProblem
from paystream.platform.errors import DomainError
from paystream.platform.http import problem

MAX_BODY_BYTES = 64 * 1024
MAX_HEADER_BYTES = 16 * 1024
MAX_JSON_DEPTH = 16


class ApiError(DomainError):
    """A problem answered at the edge, with its own status and code."""

    def __init__(self, status: int, code: str, title: str, detail: str) -> None:
        super().__init__(detail, code=code)
        self.status = status
        self.title = title


def nul_error(loc: tuple[Any, ...]) -> dict[str, Any]:
    return {"type": "string_nul", "loc": loc, "msg": "must not contain NUL (U+0000) characters"}


def nul_errors(value: Any, loc: tuple[Any, ...]) -> list[dict[str, Any]]:
    """Where a parsed JSON value holds a string (or object key) containing U+0000."""
    if isinstance(value, str):
        return [nul_error(loc)] if "\x00" in value else []
    errors: list[dict[str, Any]] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if "\x00" in key:
                errors.append(nul_error(loc))
            errors += nul_errors(item, (*loc, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            errors += nul_errors(item, (*loc, index))
    return errors


def basic_credentials(header: str) -> tuple[str, str] | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    client_id, sep, secret = decoded.partition(":")
    return (client_id, secret) if sep else None


def oauth_error(status: int, error: str, description: str) -> Response:
    """RFC 6749 error members inside an RFC 9457 problem, so both kinds of client understand."""
    body = OAuthProblem.body(
        type=f"https://paystream.dev/problems/{error}",
        title={400: "Bad request", 401: "Unauthorized", 413: "Payload too large"}[status],
        status=status, detail=description, code=error, errors=None, error=error,
        error_description=description,
    )
    headers = {"Cache-Control": "no-store"}
    if status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="paystream"'
    return Response(orjson.dumps(body), status_code=status, media_type="application/problem+json",
                    headers=headers)


class HeaderLimit:
    """ASGI middleware: a request whose headers total more than ``limit`` bytes gets a 431
    problem before any route sees it (httptools itself sets no limit)."""

    def __init__(self, app: Any, limit: int = MAX_HEADER_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and sum(len(k) + len(v) for k, v in scope["headers"]) > self.limit:
            response = problem(431, "headers_too_large", "Request header fields too large",
                               f"request headers are limited to {self.limit} bytes in all")
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def object_id(content: bytes) -> str | None:
    """The ``id`` of the object an upstream answer carries (for the request log line)."""
    if not content.startswith(b'{"id":"'):
        return None
    end = content.find(b'"', 7)
    return content[7:end].decode("ascii", "replace") if 0 < end <= 80 else None


async def read_limited(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``limit`` bytes:
    from its Content-Length before reading anything, or while it streams in."""
    too_large = ApiError(413, "payload_too_large", "Payload too large",
                         f"request bodies are limited to {limit} bytes")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


def deeper_than(value: Any, limit: int) -> bool:
    """Whether ``value`` nests objects/arrays more than ``limit`` levels (iterative: a deep
    body cannot exhaust the stack here)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(item, dict):
            stack.extend((child, depth + 1) for child in item.values() if isinstance(child, (dict, list)))
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item if isinstance(child, (dict, list)))
    return False
