"""`tools.wallet_users.UserConnection`, the one keep-alive connection of each `bench --users`
user, against a small HTTP/1.1 server on a free port: it keeps its connection, opens it again
after the server closed it idle, and counts a connection that breaks mid-request as an error."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest

from paystream.tools.wallet_users import UserConnection


@dataclass
class TinyServer:
    """Answers 202 with what it was sent; ``close_after`` answers per connection, then closes;
    ``drop_next``: close the next connection's first request without answering."""

    close_after: int | None = None
    drop_next: bool = False
    connections: int = 0
    seen: list[dict[str, str]] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        answered = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                if self.drop_next:
                    self.drop_next = False
                    return
                self.seen.append({"line": lines[0], "auth": headers.get("authorization", ""),
                                  "key": headers.get("idempotency-key", ""), "body": body.decode()})
                answer = json.dumps({"id": f"pay_{len(self.seen)}", "status": "processing"}).encode()
                writer.write(b"HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\n"
                             b"Content-Length: " + str(len(answer)).encode() + b"\r\n\r\n" + answer)
                await writer.drain()
                answered += 1
                if self.close_after is not None and answered >= self.close_after:
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()


@pytest.fixture
async def server() -> AsyncIterator[tuple[TinyServer, str]]:
    tiny = TinyServer()
    listening = await asyncio.start_server(tiny.handle, "127.0.0.1", 0)
    port = listening.sockets[0].getsockname()[1]
    try:
        yield tiny, f"http://127.0.0.1:{port}"
    finally:
        listening.close()
        await listening.wait_closed()


async def _until(condition: object, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_two_requests_go_on_one_kept_connection_with_the_users_token(server: tuple[TinyServer, str]) -> None:
    tiny, url = server
    connection = UserConnection(url, "user-token")
    try:
        first = await connection.request("POST", "/v1/payments", json_body={"amount": 100}, idempotency_key="k1")
        second = await connection.request("POST", "/v1/payments", json_body={"amount": 200}, idempotency_key="k2")
    finally:
        await connection.aclose()
    assert (first.status_code, second.status_code) == (202, 202)
    assert first.json() == {"id": "pay_1", "status": "processing"} and second.json()["id"] == "pay_2"
    assert tiny.connections == 1 and connection.connects == 1
    assert [s["auth"] for s in tiny.seen] == ["Bearer user-token"] * 2
    assert [s["key"] for s in tiny.seen] == ["k1", "k2"]
    assert json.loads(tiny.seen[1]["body"]) == {"amount": 200}
    assert connection.errors == 0 and connection.reconnects == 0


async def test_a_connection_the_server_closed_while_idle_is_opened_again(server: tuple[TinyServer, str]) -> None:
    tiny, url = server
    tiny.close_after = 1
    connection = UserConnection(url, "t")
    try:
        await connection.request("POST", "/v1/payments", json_body={}, idempotency_key="a")
        await _until(lambda: connection._reader is not None and connection._reader.at_eof())
        again = await connection.request("POST", "/v1/payments", json_body={}, idempotency_key="b")
    finally:
        await connection.aclose()
    assert again.status_code == 202
    assert tiny.connections == 2
    assert connection.reconnects == 1 and connection.errors == 0


async def test_a_connection_broken_mid_request_is_an_error_and_the_next_request_reconnects(
    server: tuple[TinyServer, str],
) -> None:
    tiny, url = server
    tiny.drop_next = True
    connection = UserConnection(url, "t")
    try:
        with pytest.raises(httpx.TransportError):
            await connection.request("POST", "/v1/payments", json_body={}, idempotency_key="a")
        retried = await connection.request("POST", "/v1/payments", json_body={}, idempotency_key="a")
    finally:
        await connection.aclose()
    assert connection.errors == 1
    assert retried.status_code == 202 and tiny.connections == 2


async def test_no_server_is_a_connect_error_counted_once(server: tuple[TinyServer, str]) -> None:
    _, url = server
    connection = UserConnection(url.rsplit(":", 1)[0] + ":1", "t", timeout=2.0)
    with pytest.raises(httpx.ConnectError):
        await connection.request("GET", "/v1/payments")
    assert connection.errors == 1 and not connection.connected
