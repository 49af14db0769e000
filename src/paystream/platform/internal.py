"""Calls between services over internal HTTP: keep-alive pool, timeouts, caller headers."""

from __future__ import annotations

from typing import Any

import httpx

from paystream.platform.errors import TransientError
from paystream.platform.http import (
    H_CLIENT,
    H_CORRELATION,
    H_IDEMPOTENCY,
    H_INTERNAL_TOKEN,
    H_SCOPES,
    H_TENANT,
    H_USER,
    Caller,
)


def caller_headers(caller: Caller, token: str) -> dict[str, str]:
    """The headers that carry a caller's identity to an internal route."""
    headers = {
        H_INTERNAL_TOKEN: token,
        H_TENANT: caller.tenant_id,
        H_CLIENT: caller.client_id,
        H_SCOPES: " ".join(sorted(caller.scopes)),
    }
    if caller.user_id:
        headers[H_USER] = caller.user_id
    if caller.correlation_id:
        headers[H_CORRELATION] = caller.correlation_id
    if caller.idempotency_key:
        headers[H_IDEMPOTENCY] = caller.idempotency_key
    return headers


class InternalClient:
    """A keep-alive HTTP client for one internal service."""

    def __init__(
        self, base_url: str, *, token: str, timeout: float, max_connections: int = 100
    ) -> None:
        self.base_url = base_url
        self._token = token
        self._client = httpx.AsyncClient(
            base_url=base_url,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 2.0)),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            http1=True,
        )

    async def request(
        self,
        method: str,
        path: str,
        caller: Caller,
        *,
        content: bytes | None = None,
        params: Any = None,
        extra_headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """Send one request; raises `TransientError` when the service cannot be reached in time."""
        headers = caller_headers(caller, self._token)
        if content is not None:
            headers["content-type"] = "application/json"
        if extra_headers:
            headers.update(extra_headers)
        try:
            return await self._client.request(
                method, path, content=content, params=params, headers=headers
            )
        except httpx.TimeoutException as exc:
            raise TransientError(f"{self.base_url}{path}: timed out") from exc
        except httpx.TransportError as exc:
            raise TransientError(f"{self.base_url}{path}: {exc!r}") from exc

    async def close(self) -> None:
        await self._client.aclose()
