"""Signed-in wallet users for `paystream bench --users`, each on its own keep-alive connection.

`set_up_users` makes N users of the API (``POST /v1/users``), signs each one in (the password
grant through the admin client, as a wallet app would) and gives each a USD wallet it owns,
N at a time over the shared admin client; then every user opens one HTTP/1.1 connection to
the gateway that it keeps for the whole run. Password hashing (argon2id, twice per user:
sign-up and sign-in) makes this slow, so it runs concurrently and is timed apart from the
measurement.

`UserConnection` is a minimal HTTP/1.1 client on `h11` over one asyncio stream: an httpx
`AsyncClient` per user is heavy at ten thousand users (its pool, its transport, its
``Limits``), and a user needs only one request at a time on one connection. Its answers are
`httpx.Response` objects and its failures `httpx.TransportError`s, so the load engine
treats it as it treats the shared client (`load.Sender`). A connection the server closed
while it sat idle is opened again before the next request (``reconnects``); a failure to
connect, a reset or a timeout during a request is a *connection error* (``errors``), and the
engine retries the POST with the same Idempotency-Key.
"""

from __future__ import annotations

import asyncio
import secrets
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import h11
import httpx
import orjson

from paystream.tools.client import PaystreamClient, StackInfo
from paystream.tools.load_runs import bounded_gather

SETUP_CONCURRENCY = 16  # sign-ups and sign-ins at once: each is an argon2 hash on the gateway
CONNECT_CONCURRENCY = 64  # connections opened at once when the users come online
REQUEST_TIMEOUT = 30.0
READ_CHUNK = 65_536


class UserConnection:
    """One user's keep-alive HTTP/1.1 connection, carrying one request at a time."""

    def __init__(self, base_url: str, token: str, *, ssl_context: ssl.SSLContext | None = None,
                 timeout: float = REQUEST_TIMEOUT) -> None:
        parts = urlsplit(base_url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or (443 if self._https else 80)
        self._authority = parts.netloc
        self._base_url = base_url.rstrip("/")
        self._ssl = ssl_context if self._https else None
        self._timeout = timeout
        self._token = token
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._h11: h11.Connection | None = None
        self.connects = 0
        self.reconnects = 0  # opened again after the server closed it while idle
        self.errors = 0  # failed to connect, or broke during a request

    @property
    def connected(self) -> bool:
        return self._writer is not None

    async def connect(self) -> None:
        """Open the connection (once more if it was open); a failure counts as an error."""
        self.close()
        try:
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_connection(self._host, self._port, ssl=self._ssl), self._timeout)
        except (OSError, TimeoutError) as exc:
            self.errors += 1
            raise httpx.ConnectError(f"cannot connect to {self._authority}: {exc!r}") from exc
        self._h11 = h11.Connection(our_role=h11.CLIENT)
        self.connects += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = self._h11 = None

    async def aclose(self) -> None:
        writer = self._writer
        self.close()
        if writer is not None:
            try:
                await writer.wait_closed()
            except OSError:
                pass

    async def request(
        self, method: str, path: str, *, json_body: Any = None, idempotency_key: str | None = None,
    ) -> httpx.Response:
        """Send one request on this connection and return its answer, whatever its status."""
        if self._reader is None or self._reader.at_eof() or self._h11 is None \
                or self._h11.our_state is not h11.IDLE:
            if self._writer is not None:
                self.reconnects += 1
            await self.connect()
        try:
            return await asyncio.wait_for(self._exchange(method, path, json_body, idempotency_key),
                                          self._timeout)
        except TimeoutError:
            self.errors += 1
            self.close()
            raise httpx.ReadTimeout(f"{method} {path}: no answer within {self._timeout:g} s") from None
        except (OSError, h11.ProtocolError) as exc:
            self.errors += 1
            self.close()
            raise httpx.ReadError(f"{method} {path}: {exc!r}") from exc

    async def _exchange(self, method: str, path: str, json_body: Any, idempotency_key: str | None) -> httpx.Response:
        assert self._reader is not None and self._writer is not None and self._h11 is not None
        conn = self._h11
        body = orjson.dumps(json_body) if json_body is not None else b""
        headers = [("Host", self._authority), ("Authorization", f"Bearer {self._token}"),
                   ("Accept", "application/json"), ("Content-Length", str(len(body)))]
        if json_body is not None:
            headers.append(("Content-Type", "application/json"))
        if idempotency_key is not None:
            headers.append(("Idempotency-Key", idempotency_key))
        out = conn.send(h11.Request(method=method, target=path, headers=headers)) or b""
        if body:
            out += conn.send(h11.Data(data=body)) or b""
        out += conn.send(h11.EndOfMessage()) or b""
        self._writer.write(out)
        await self._writer.drain()
        status = 0
        answer_headers: list[tuple[bytes, bytes]] = []
        chunks: list[bytes] = []
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await self._reader.read(READ_CHUNK))  # b"": the server closed
                continue
            if isinstance(event, h11.Response):
                status, answer_headers = event.status_code, list(event.headers)
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionResetError("the server closed the connection before answering")
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        else:  # the server asked to close: the next request opens a new connection
            self.close()
        return httpx.Response(status, headers=answer_headers, content=b"".join(chunks),
                              request=httpx.Request(method, self._base_url + path))


@dataclass(slots=True)
class WalletUser:
    """A signed-in user, the wallet it owns and its connection."""

    user_id: str
    email: str
    wallet: str
    connection: UserConnection
    expires_at: float  # time.monotonic() when its access token expires (it is not renewed)


@dataclass(frozen=True, slots=True)
class UsersReady:
    users: list[WalletUser]
    seconds: float  # sign-ups, sign-ins, wallets and connections, all together
    connect_seconds: float  # of which opening the connections

    @property
    def connection_errors(self) -> int:
        return sum(u.connection.errors for u in self.users)

    @property
    def reconnects(self) -> int:
        return sum(u.connection.reconnects for u in self.users)


async def set_up_users(client: PaystreamClient, info: StackInfo, count: int, *,
                       progress: Callable[[int], None] | None = None) -> UsersReady:
    """``count`` signed-in users, each with a wallet of its own and an open connection."""
    began = time.perf_counter()
    run = uuid.uuid4().hex[:8]
    password = secrets.token_urlsafe(18)
    context = ssl.create_default_context(cafile=info.ca_file) if info.ca_file else None
    done = 0

    def job(index: int) -> Callable[[], Awaitable[WalletUser]]:
        async def one() -> WalletUser:
            nonlocal done
            email = f"bench-{run}-{index}@example.com"
            user = await client.call("POST", "/v1/users", json_body={
                "email": email, "password": password, "name": f"bench user {index}"})
            signed_in = time.monotonic()
            tokens = await client.sign_in_user(email, password)
            wallet = await client.create_account("USD", owner_user_id=user["id"],
                                                 metadata={"tool": "bench", "user": str(index)})
            done += 1
            if progress is not None:
                progress(done)
            return WalletUser(user_id=str(user["id"]), email=email, wallet=str(wallet["id"]),
                              connection=UserConnection(info.gateway_url, str(tokens["access_token"]),
                                                        ssl_context=context),
                              expires_at=signed_in + float(tokens["expires_in"]))
        return one

    users = await bounded_gather([job(i) for i in range(count)], SETUP_CONCURRENCY)
    connecting = time.perf_counter()
    await bounded_gather([_opener(u.connection) for u in users], CONNECT_CONCURRENCY)
    now = time.perf_counter()
    return UsersReady(users=users, seconds=now - began, connect_seconds=now - connecting)


def _opener(connection: UserConnection) -> Callable[[], Awaitable[None]]:
    async def open_it() -> None:
        try:
            await connection.connect()
        except httpx.ConnectError:
            pass  # counted on the connection; its first request tries again
    return open_it


async def close_users(users: list[WalletUser]) -> None:
    await asyncio.gather(*(u.connection.aclose() for u in users))
