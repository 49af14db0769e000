"""A local webhook receiver for the demo and the benchmark.

It listens on 127.0.0.1 (a free port), verifies each delivery's ``Paystream-Signature``
with the endpoint's secret, de-duplicates by event id and tells its subscribers the
status the event announces. It answers at once (204 when accepted, 400 when the
signature is wrong), so it never slows the delivery worker down. While `open_unsigned`, it
also takes the unsigned events of the pipeline's floor (tools/floor.py) at a path of their own.

HTTP/1.1 is parsed by ``h11`` on asyncio's own server, which keeps the receiver small
and leaves signal handling (Ctrl-C) to the program that runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import h11
import orjson

from paystream.notifications.domain import SIGNATURE_HEADER, verify

MAX_BODY_BYTES = 1024 * 1024
READ_CHUNK = 64 * 1024
WEBHOOK_PATH = "/webhooks"
# The floor's deliveries (tools/floor.py, which signs nothing): accepted only while opened.
UNSIGNED_PATH = "/unsigned"


@dataclass(frozen=True, slots=True)
class PaymentUpdate:
    """What one verified, first-seen event says about a payment."""

    event_id: str
    event_type: str
    payment_id: str
    status: str
    failure_code: str | None
    received_at: float  # time.perf_counter() when the delivery arrived


@dataclass(slots=True)
class ReceiverStats:
    """Counts of what the receiver saw."""

    deliveries: int = 0
    valid: int = 0
    invalid: int = 0
    duplicates: int = 0
    malformed: int = 0
    by_type: Counter[str] = field(default_factory=Counter)

    @property
    def unique_events(self) -> int:
        return self.valid - self.duplicates


Subscriber = Callable[[PaymentUpdate], None]


class WebhookReceiver:
    """An in-process HTTP server that accepts signed paystream webhooks."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._seen: set[str] = set()
        self._subscribers: list[Subscriber] = []
        self.secret: str | None = None
        self._unsigned = False
        self.stats = ReceiverStats()

    @property
    def url(self) -> str:
        """The URL to register as a webhook endpoint."""
        if self._server is None:
            raise RuntimeError("the receiver is not started")
        port = self._server.sockets[0].getsockname()[1]
        return f"http://{self._host}:{port}{WEBHOOK_PATH}"

    def open_unsigned(self) -> str:
        """Also take unsigned events at `UNSIGNED_PATH` until `close_unsigned`; its URL."""
        self._unsigned = True
        return self.url.removesuffix(WEBHOOK_PATH) + UNSIGNED_PATH

    def close_unsigned(self) -> None:
        self._unsigned = False

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.append(subscriber)

    def unsubscribe(self, subscriber: Subscriber) -> None:
        if subscriber in self._subscribers:
            self._subscribers.remove(subscriber)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._on_connection, self._host, self._port)

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in list(self._connections):
            task.cancel()
        for task in list(self._connections):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._server.wait_closed()
        self._server = None

    async def __aenter__(self) -> WebhookReceiver:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    # -- HTTP ------------------------------------------------------------------------------

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._serve(reader, writer)
        except (h11.ProtocolError, ConnectionError, asyncio.IncompleteReadError):
            pass  # a broken client connection; the sender retries
        except asyncio.CancelledError:
            pass  # `close`: end quietly, so asyncio's server callback has nothing to report
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Answer requests on one keep-alive connection until the client closes it."""
        conn = h11.Connection(h11.SERVER)
        while True:
            received = await _read_request(conn, reader)
            if received is None:
                return
            request, body = received
            status = self._handle(request, body)
            writer.write(_response(conn, status))
            await writer.drain()
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()

    # -- webhook logic ---------------------------------------------------------------------

    def _handle(self, request: h11.Request, body: bytes) -> int:
        """The status code to answer with; verified first-seen events reach subscribers."""
        path = request.target.split(b"?")[0]
        unsigned = self._unsigned and path == UNSIGNED_PATH.encode()
        if request.method != b"POST" or not (unsigned or path == WEBHOOK_PATH.encode()):
            return 404
        received_at = time.perf_counter()
        self.stats.deliveries += 1
        header = _header(request, SIGNATURE_HEADER)
        if not unsigned and (self.secret is None or header is None or not verify(
            self.secret, header, body, now=int(time.time())
        )):
            self.stats.invalid += 1
            return 400
        self.stats.valid += 1
        update = _parse_event(body, received_at)
        if update is None:
            self.stats.malformed += 1
            return 400
        if update.event_id in self._seen:
            self.stats.duplicates += 1
            return 204
        self._seen.add(update.event_id)
        self.stats.by_type[update.event_type] += 1
        for subscriber in list(self._subscribers):
            subscriber(update)
        return 204


async def _read_request(
    conn: h11.Connection, reader: asyncio.StreamReader
) -> tuple[h11.Request, bytes] | None:
    """One whole request (head and body), or None when the connection ended."""
    request: h11.Request | None = None
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await reader.read(READ_CHUNK))
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_BODY_BYTES:
                raise h11.RemoteProtocolError("body too large")
        elif isinstance(event, h11.EndOfMessage):
            assert request is not None
            return request, bytes(body)
        elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
            return None


def _response(conn: h11.Connection, status: int) -> bytes:
    head = conn.send(h11.Response(status_code=status, headers=[("content-length", "0")]))
    end = conn.send(h11.EndOfMessage())
    return (head or b"") + (end or b"")


def _header(request: h11.Request, name: str) -> str | None:
    wanted = name.lower().encode()
    for key, value in request.headers:
        if key == wanted:
            return bytes(value).decode("latin-1")
    return None


def _parse_event(body: bytes, received_at: float) -> PaymentUpdate | None:
    """The payment update an event body carries; None when the body is not one."""
    try:
        event = orjson.loads(body)
        data = event["data"]
        return PaymentUpdate(
            event_id=str(event["id"]),
            event_type=str(event["type"]),
            payment_id=str(data["id"]),
            status=str(data["status"]),
            failure_code=data.get("failure_code"),
            received_at=received_at,
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        return None
