"""Calls between services over internal HTTP: keep-alive pool, timeouts, caller headers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp

from paystream.platform import tracing
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


@dataclass(frozen=True, slots=True)
class InternalResponse:
    """What an internal call answered, read in full."""

    status_code: int
    content: bytes
    headers: Mapping[str, str]


class InternalClient:
    """A keep-alive HTTP client for one internal service (aiohttp: the gateway's hot path).

    Every call has a total deadline (``timeout``) and a connect deadline; a call that
    misses either, or cannot reach the service at all, raises `TransientError`.
    """

    def __init__(
        self, base_url: str, *, token: str, timeout: float, max_connections: int = 100
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=min(timeout, 2.0))
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        # Made on first use, inside the running event loop (aiohttp wants one).
        if self._session is None:
            self._session = aiohttp.ClientSession(
                base_url=self.base_url,
                timeout=self._timeout,
                connector=aiohttp.TCPConnector(
                    limit=self._max_connections, keepalive_timeout=30, ttl_dns_cache=300
                ),
                auto_decompress=False,
                raise_for_status=False,
                # With tracing on: a client span per call, and its traceparent sent along.
                trace_configs=tracing.client_trace_configs() or None,
            )
        return self._session

    async def request(
        self,
        method: str,
        path: str,
        caller: Caller,
        *,
        content: bytes | None = None,
        params: str | None = None,
        extra_headers: dict[str, str] | None = None,
    ) -> InternalResponse:
        """Send one request; raises `TransientError` when the service cannot be reached in time."""
        headers = caller_headers(caller, self._token)
        if content is not None:
            headers["content-type"] = "application/json"
        if extra_headers:
            headers.update(extra_headers)
        url = f"{path}?{params}" if params else path
        try:
            async with self._open().request(method, url, data=content, headers=headers) as response:
                body = await response.read()
                return InternalResponse(response.status, body, response.headers)
        except TimeoutError as exc:
            raise TransientError(f"{self.base_url}{path}: timed out") from exc
        except aiohttp.ClientError as exc:
            raise TransientError(f"{self.base_url}{path}: {exc!r}") from exc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
