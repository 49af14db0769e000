"""Send-time SSRF defence: a name that resolves to a private address is never connected to."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest

from paystream.notifications import ssrf


@pytest.fixture
async def local_server() -> AsyncIterator[tuple[int, list[int]]]:
    """A TCP server on 127.0.0.1 that answers 204 and counts connections."""
    connections: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1], connections
    server.close()
    await server.wait_closed()


async def _post(url: str, *, allow_private: bool) -> int:
    async with aiohttp.ClientSession(
        connector=ssrf.connector(allow_private=allow_private, limit=4),
        timeout=aiohttp.ClientTimeout(total=5),
    ) as session, session.post(url, data=b"{}", allow_redirects=False) as response:
        return response.status


async def test_a_name_resolving_to_loopback_is_refused_before_any_connection(
    local_server: tuple[int, list[int]],
) -> None:
    port, connections = local_server
    with pytest.raises(ssrf.ForbiddenDestination):
        await _post(f"http://localhost:{port}/hook", allow_private=False)
    assert connections == []


async def test_with_local_receivers_allowed_the_same_name_is_reached(
    local_server: tuple[int, list[int]],
) -> None:
    port, connections = local_server
    assert await _post(f"http://localhost:{port}/hook", allow_private=True) == 204
    assert connections == [1]


async def test_the_resolver_drops_private_answers_and_refuses_when_none_are_left() -> None:
    resolver = ssrf.PublicOnlyResolver(allow_private=False)
    try:
        with pytest.raises(ssrf.ForbiddenDestination):
            await resolver.resolve("localhost", 80)
    finally:
        await resolver.close()
