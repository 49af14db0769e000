"""Step 1 of the request path: who is calling (a Bearer access token), and may they.

`Authenticate` turns a request into its `Principal`, or None when the token is missing or
not accepted; `unauthorized` and `insufficient_scope` are the answers the pipeline sends then.
"""

from __future__ import annotations

from fastapi import Request, Response

from paystream.gateway.domain import Principal
from paystream.gateway.identity.tokens import InvalidToken, TokenService
from paystream.platform.http import problem
from paystream.platform.observability import get_logger

log = get_logger(__name__)


class Authenticate:
    """The caller of a request, from its ``Authorization: Bearer`` access token."""

    def __init__(self, tokens: TokenService) -> None:
        self.tokens = tokens

    def __call__(self, request: Request) -> Principal | None:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        try:
            return self.tokens.verify(token.strip())
        except InvalidToken as exc:
            log.info("token_rejected", reason=str(exc))
            return None


def unauthorized() -> Response:
    """401: no access token, or one that is not accepted (which, the client is not told)."""
    return problem(
        401, "unauthorized", "Unauthorized", "missing or invalid access token",
        headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
    )


def insufficient_scope(scope: str) -> Response:
    """403: a valid token without the scope the route needs."""
    return problem(403, "insufficient_scope", "Forbidden", f"this route needs the {scope} scope")
