"""A small async client of the public API, used by the demo, the benchmark and the tests."""

from __future__ import annotations

import itertools
import ssl
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import stamina

from paystream.platform.home import read_admin_client, read_secrets, read_stack
from paystream.platform.http import H_CLIENT, H_INTERNAL_TOKEN, H_TENANT


@dataclass(frozen=True, slots=True)
class StackInfo:
    """What `paystream up` wrote: where everything is, and the admin client's credentials."""

    home: Path
    gateway_url: str
    postgres_url: str
    nats_url: str
    redis_url: str
    operations_urls: dict[str, str]
    client_id: str
    client_secret: str
    ca_file: str | None = None  # the local CA's certificate when the gateway serves TLS

    @classmethod
    def load(cls, home: Path) -> StackInfo:
        home = home.resolve()
        stack, admin = read_stack(home), read_admin_client(home)
        return cls(
            home=home,
            gateway_url=stack["gateway_url"],
            postgres_url=stack["postgres_url"],
            nats_url=stack["nats_url"],
            redis_url=stack["redis_url"],
            operations_urls=stack["operations_urls"],
            client_id=admin["client_id"],
            client_secret=admin["client_secret"],
            ca_file=stack.get("ca_file"),
        )


class ApiError(Exception):
    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.status = response.status_code
        try:
            self.problem = response.json()
        except ValueError:
            self.problem = {"detail": response.text}
        super().__init__(f"{response.request.method} {response.request.url.path}: "
                         f"{self.status} {self.problem.get('code')} {self.problem.get('detail')}")


RETRY_AFTER_CAP = 30.0
"""The longest wait a Retry-After may ask of the client, in seconds."""


def _rate_limited(exc: Exception) -> bool | float:
    """stamina's backoff hook: a 429 is retried after its Retry-After (the gateway refused
    the request before doing anything, so sending it again is always safe); nothing else is."""
    if not isinstance(exc, ApiError) or exc.status != 429:
        return False
    try:
        wait = float(exc.response.headers.get("Retry-After", "1"))
    except ValueError:
        wait = 1.0
    return min(max(wait, 0.0), RETRY_AFTER_CAP)


# httpx's pool looks at every connection it holds on each request, so one big pool costs
# O(connections) per call; several small pools used in turn keep that cost flat.
CONNECTIONS_PER_POOL = 8


class PaystreamClient:
    """Client-credentials auth with automatic token renewal; keep-alive pools used in turn."""

    def __init__(
        self, base_url: str, client_id: str, client_secret: str, *, max_connections: int = 100,
        timeout: float = 30.0, ca_file: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._client_id = client_id
        self._client_secret = client_secret
        self._token: str | None = None
        self._token_expires = 0.0
        pools = max(1, -(-max_connections // CONNECTIONS_PER_POOL))
        per_pool = -(-max_connections // pools)
        self._pools = [
            httpx.AsyncClient(
                base_url=base_url,
                timeout=timeout,
                verify=ssl.create_default_context(cafile=ca_file) if ca_file else True,
                limits=httpx.Limits(max_connections=per_pool, max_keepalive_connections=per_pool),
                transport=transport,
            )
            for _ in range(pools)
        ]
        self._turn = itertools.cycle(self._pools)

    @property
    def http(self) -> httpx.AsyncClient:
        """The next keep-alive pool in turn."""
        return next(self._turn)

    @classmethod
    def for_stack(cls, info: StackInfo, **kwargs: Any) -> PaystreamClient:
        return cls(info.gateway_url, info.client_id, info.client_secret, ca_file=info.ca_file, **kwargs)

    async def __aenter__(self) -> PaystreamClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        for pool in self._pools:
            await pool.aclose()

    async def token(self) -> str:
        if self._token is None or time.monotonic() > self._token_expires:
            response = await self.http.post(
                "/oauth/token",
                data={"grant_type": "client_credentials", "client_id": self._client_id,
                      "client_secret": self._client_secret},
            )
            if response.status_code != 200:
                raise ApiError(response)
            body = response.json()
            self._token = body["access_token"]
            self._token_expires = time.monotonic() + body["expires_in"] - 60
        assert self._token is not None
        return self._token

    @stamina.retry(on=_rate_limited, attempts=20, timeout=120.0)
    async def sign_in_user(self, username: str, password: str) -> dict[str, Any]:
        """A wallet user's tokens (the password grant through this client; no secret sent, as
        a wallet app would). A 429 of the token endpoint's limit is waited out as in `call`."""
        response = await self.http.post(
            "/oauth/token",
            data={"grant_type": "password", "client_id": self._client_id, "username": username,
                  "password": password},
        )
        if response.status_code != 200:
            raise ApiError(response)
        tokens: dict[str, Any] = response.json()
        return tokens

    async def request(
        self, method: str, path: str, *, json_body: Any = None, idempotency_key: str | None = None,
        params: dict[str, Any] | None = None, headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """Send a request; the response is returned whatever its status."""
        sent = {"Authorization": f"Bearer {await self.token()}"}
        if idempotency_key is not None:
            sent["Idempotency-Key"] = idempotency_key
        if headers:
            sent.update(headers)
        return await self.http.request(method, path, json=json_body, params=params, headers=sent)

    @stamina.retry(on=_rate_limited, attempts=20, timeout=120.0)
    async def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send a request and return its JSON; a non-2xx answer raises `ApiError`.

        A request refused by the rate limit (429) is sent again after its Retry-After, up to
        20 times in 2 minutes, so a tool that creates many objects slows down to the limit
        instead of failing.
        """
        response = await self.request(method, path, **kwargs)
        if response.status_code >= 300:
            raise ApiError(response)
        return response.json() if response.content else None

    # -- conveniences --------------------------------------------------------------------

    async def create_account(self, currency: str = "USD", **fields: Any) -> dict[str, Any]:
        result: dict[str, Any] = await self.call(
            "POST", "/v1/accounts", json_body={"currency": currency, **fields}
        )
        return result

    async def get_account(self, account_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.call("GET", f"/v1/accounts/{account_id}")
        return result

    async def deposit(
        self, account_id: str, amount: int, currency: str = "USD", *, key: str | None = None
    ) -> dict[str, Any]:
        result: dict[str, Any] = await self.call(
            "POST", "/v1/deposits",
            json_body={"account_id": account_id, "amount": amount, "currency": currency},
            idempotency_key=key or uuid.uuid4().hex,
        )
        return result

    async def pay(
        self, source: str, destination: str, amount: int, currency: str = "USD", *, key: str | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        result: dict[str, Any] = await self.call(
            "POST", "/v1/payments",
            json_body={"source_account_id": source, "destination_account_id": destination,
                       "amount": amount, "currency": currency, **fields},
            idempotency_key=key or uuid.uuid4().hex,
        )
        return result

    async def get_payment(self, payment_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.call("GET", f"/v1/payments/{payment_id}")
        return result

    async def open_reviews(self, limit: int = 100) -> list[dict[str, Any]]:
        page = await self.call("GET", "/v1/reviews", params={"status": "open", "limit": limit})
        return list(page["data"])

    async def decide_review(self, review_id: str, approve: bool) -> dict[str, Any]:
        verb = "approve" if approve else "decline"
        result: dict[str, Any] = await self.call("POST", f"/v1/reviews/{review_id}/{verb}")
        return result

    async def create_webhook_endpoint(self, url: str, events: list[str]) -> dict[str, Any]:
        result: dict[str, Any] = await self.call(
            "POST", "/v1/webhook_endpoints", json_body={"url": url, "events": events}
        )
        return result


class FraudFaults:
    """The fraud service's game-day fault switch (``/internal/faults``), for tools and tests.

    It is an internal route, never reachable through the gateway: this talks to the fraud
    service directly with the stack's internal token (``secrets.json``, 0600, in the home).
    """

    def __init__(self, fraud_url: str, internal_token: str, *, timeout: float = 10.0) -> None:
        self._url = fraud_url.rstrip("/") + "/internal/faults"
        self._headers = {H_INTERNAL_TOKEN: internal_token, H_TENANT: "operator",
                         H_CLIENT: "paystream-cli"}
        self._timeout = timeout

    @classmethod
    def for_home(cls, home: Path) -> FraudFaults:
        info = StackInfo.load(home)
        token = read_secrets(info.home)["internal_token"]
        return cls(info.operations_urls["fraud"], token)

    async def get(self) -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=self._timeout) as http:
            response = await http.get(self._url, headers=self._headers)
        if response.status_code != 200:
            raise ApiError(response)
        return dict(response.json())

    async def set(self, *, decision_delay_ms: int) -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=self._timeout) as http:
            response = await http.put(self._url, headers=self._headers,
                                      json={"decision_delay_ms": decision_delay_ms})
        if response.status_code != 200:
            raise ApiError(response)
        return dict(response.json())
