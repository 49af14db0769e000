"""The pipeline's floor (`paystream bench --floor`): the same hops as a payment, none of our logic.

HTTP in, one PostgreSQL write, a bus hop, another write, a webhook out, as two processes
of their own (``python -m paystream.tools.floor serve|consume``) against the PostgreSQL,
NATS JetStream and webhook receiver of the bench's stack:

- **serve**: a bare ASGI app on uvicorn (the gateway's server settings). ``POST /pay`` with
  a small JSON body → one INSERT into ``floor.payments`` → one JetStream publish to the
  ``FLOOR`` stream (``Nats-Msg-Id``: the row's id) → 201 ``{"id", "status": "pending"}``.
- **consume**: a durable pull consumer. Fetch up to ``consumer_batch`` (256) → one INSERT of
  the batch (``unnest``) into ``floor.paid`` → one webhook POST per message (aiohttp, as the
  notifications service sends them) to the receiver's unsigned path → ack.

No JWT, rate limit, idempotency, audit, fraud, hash chain or signing. The stream is made as
the stack's are (file storage, the stack's replicas); the pool, NATS client and HTTP server
are the services' own plumbing. `running_floor` provisions the schema and the stream, starts
both processes, and stops and removes everything on the way out; `measure_floor` drives it
with the bench's own client and load engine, a payment counting as complete when its
webhook reaches the receiver.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import httpx
import nats
import orjson
import uvicorn
from rich.console import Console
from rich.table import Table
from starlette.types import Receive, Scope, Send

from paystream.contracts.topology import ConsumerSpec, StreamSpec
from paystream.platform.bus import OutgoingMessage
from paystream.platform.config import load_settings
from paystream.platform.db import create_pool
from paystream.platform.errors import TransientError
from paystream.platform.home import read_stack
from paystream.platform.nats_bus import NatsBus
from paystream.platform.runtime import http_config
from paystream.stack.ports import free_port
from paystream.tools.client import PaystreamClient
from paystream.tools.load import EngineOptions, LoadEngine
from paystream.tools.load_results import LoadResult, PaymentSpec, percentile
from paystream.tools.load_runs import milliseconds, run_with_progress
from paystream.tools.receiver import WebhookReceiver

SCHEMA = "floor"
STREAM = StreamSpec(name="FLOOR", subjects=("floor.paid",))
CONSUMER = ConsumerSpec(durable="floor", service="floor", stream="FLOOR", filter_subjects=("floor.paid",))
PAY_PATH = "/pay"
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
TABLES = f"""
DROP SCHEMA IF EXISTS {SCHEMA} CASCADE;
CREATE SCHEMA {SCHEMA};
CREATE TABLE {SCHEMA}.payments (id text PRIMARY KEY, source text NOT NULL, destination text NOT NULL,
                                amount bigint NOT NULL, currency text NOT NULL,
                                created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE {SCHEMA}.paid (id text PRIMARY KEY, paid_at timestamptz NOT NULL DEFAULT now());
"""
INSERT_PAYMENT = (f"INSERT INTO {SCHEMA}.payments (id, source, destination, amount, currency) "
                  "VALUES ($1, $2, $3, $4, $5)")
# A redelivered message (its webhook failed) finds its row already there.
INSERT_PAID = f"INSERT INTO {SCHEMA}.paid (id) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING"


def _nats_urls(home: Path) -> str:
    stack = read_stack(home)
    return ",".join(stack.get("nats_urls") or [stack["nats_url"]])


def _replicas(nats_urls: str) -> int:
    """The stack's stream replicas: as `paystream up` chooses them (3 on a cluster)."""
    return min(3, len(nats_urls.split(",")))


async def _connect_bus(nats_urls: str, name: str) -> NatsBus:
    settings = load_settings()
    return await NatsBus.connect(nats_urls, name=name, timeout=settings.nats_timeout,
                                 replicas=_replicas(nats_urls))


async def provision(home: Path) -> None:
    """A fresh ``floor`` schema and ``FLOOR`` stream with its durable, in the stack of ``home``."""
    conn = await asyncpg.connect(read_stack(home)["postgres_url"], timeout=10)
    try:
        await conn.execute(TABLES)
    finally:
        await conn.close()
    await _stream(home, make=True)


async def unprovision(home: Path) -> None:
    """Drop what `provision` made, so the stack is as the floor found it."""
    conn = await asyncpg.connect(read_stack(home)["postgres_url"], timeout=10)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
    finally:
        await conn.close()
    await _stream(home, make=False)


async def _stream(home: Path, *, make: bool) -> None:
    """Delete the ``FLOOR`` stream (one left by a killed run too); with ``make``, make it again
    as the stack's streams are made. A plain connection: the bench's console gets no NATS logs."""
    urls = _nats_urls(home)
    nc = await nats.connect(urls.split(","), connect_timeout=5)
    try:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await nc.jetstream().delete_stream(STREAM.name)
        if make:
            await NatsBus(nc, replicas=_replicas(urls)).ensure_topology([STREAM], [CONSUMER])
    finally:
        await nc.close()


# -- serve: HTTP in, one write, a publish -------------------------------------------------------


class PayApp:
    """The floor's HTTP side as a bare ASGI app: ``POST /pay`` and ``GET /healthz``."""

    def __init__(self, home: Path, ready: Path) -> None:
        self._home = home
        self._ready = ready
        self._pool: asyncpg.Pool | None = None
        self._bus: NatsBus | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                settings = load_settings()
                self._pool = await create_pool(read_stack(self._home)["postgres_url"], max_size=settings.db_pool_max,
                                               application_name="paystream-floor-serve")
                self._bus = await _connect_bus(_nats_urls(self._home), "paystream-floor-serve")
                await send({"type": "lifespan.startup.complete"})
                self._ready.touch()
            elif message["type"] == "lifespan.shutdown":
                if self._bus is not None:
                    await self._bus.close()
                if self._pool is not None:
                    await self._pool.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] == "GET" and scope["path"] == "/healthz":
            await _answer(send, 200, b'{"status":"ok"}')
            return
        if scope["method"] != "POST" or scope["path"] != PAY_PATH:
            await _answer(send, 404, b'{"code":"not_found"}')
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        try:
            payment = orjson.loads(body)
            row = (str(payment["source_account_id"]), str(payment["destination_account_id"]),
                   int(payment["amount"]), str(payment["currency"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            await _answer(send, 400, b'{"code":"bad_request"}')
            return
        assert self._pool is not None and self._bus is not None
        pay_id = uuid.uuid4().hex
        await self._pool.execute(INSERT_PAYMENT, pay_id, *row)
        await self._bus.publish([OutgoingMessage(subject=STREAM.subjects[0], data=orjson.dumps({"id": pay_id}),
                                                 msg_id=pay_id)])
        await _answer(send, 201, orjson.dumps({"id": pay_id, "status": "pending"}))


async def _answer(send: Send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def serve(home: Path, port: int, ready: Path) -> None:
    """uvicorn as `platform.runtime` runs it for the services, serving `PayApp`."""
    config = http_config(PayApp(home, ready), load_settings(), host="127.0.0.1", port=port)
    await uvicorn.Server(config).serve()


# -- consume: the bus hop, one write per batch, a webhook per message ---------------------------


async def consume(home: Path, webhook_url: str, ready: Path) -> None:
    """Until SIGTERM: fetch a batch, write it, send its webhooks, ack (a failed one is redelivered)."""
    settings = load_settings()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    pool = await create_pool(read_stack(home)["postgres_url"], max_size=settings.db_pool_max,
                             application_name="paystream-floor-consume")
    bus = await _connect_bus(_nats_urls(home), "paystream-floor-consume")
    slots = asyncio.Semaphore(settings.webhook_concurrency)
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=settings.webhook_timeout_seconds),
                                 connector=aiohttp.TCPConnector(limit=settings.webhook_concurrency * 2))

    async def deliver(pay_id: str) -> bool:
        body = orjson.dumps({"id": pay_id, "type": "floor.paid", "data": {"id": pay_id, "status": "succeeded"}})
        async with slots:
            try:
                async with http.post(webhook_url, data=body, headers={"content-type": "application/json"}) as answer:
                    await answer.read()
                    return 200 <= answer.status < 300
            except (aiohttp.ClientError, TimeoutError):
                return False

    try:
        subscription = await bus.subscribe(CONSUMER)
        ready.touch()
        while not stopping.is_set():
            try:
                deliveries = await subscription.fetch(settings.consumer_batch, timeout=1.0)
            except TransientError:  # NATS away for a moment: the client reconnects by itself
                await asyncio.sleep(0.5)
                continue
            if not deliveries:
                continue
            ids = [str(orjson.loads(d.data)["id"]) for d in deliveries]
            await pool.execute(INSERT_PAID, ids)
            delivered = await asyncio.gather(*(deliver(pay_id) for pay_id in ids))
            for delivery, ok in zip(deliveries, delivered, strict=True):
                await (delivery.ack() if ok else delivery.nak(delay=1.0))
    finally:
        await http.close()
        await bus.close()
        await pool.close()


# -- the bench's side: start, drive, stop -------------------------------------------------------


class FloorClient(PaystreamClient):
    """The bench's own client (same httpx pools, same requests) pointed at the floor: a
    payment's POST goes to ``/pay``; the token is a constant, since the floor checks none."""

    def __init__(self, url: str, *, max_connections: int, transport: httpx.AsyncBaseTransport | None = None) -> None:
        super().__init__(url, "floor", "", max_connections=max_connections, transport=transport)

    async def token(self) -> str:
        return "floor"

    async def request(
        self, method: str, path: str, *, json_body: Any = None, idempotency_key: str | None = None,
        params: dict[str, Any] | None = None, headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        if method == "POST" and path == "/v1/payments":
            path = PAY_PATH
        return await super().request(method, path, json_body=json_body, idempotency_key=idempotency_key,
                                     params=params, headers=headers)


async def _start(args: Sequence[str], log: Path) -> asyncio.subprocess.Process:
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "paystream.tools.floor", *args,
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()


class FloorFailed(Exception):
    """The floor's processes did not start; the message says where their log is."""


@contextlib.asynccontextmanager
async def running_floor(home: Path, webhook_url: str) -> AsyncIterator[str]:
    """The floor running against the stack of ``home``; yields its base URL. Its processes
    are stopped and its schema and stream removed on the way out."""
    logs = home / "logs"
    logs.mkdir(exist_ok=True)
    ready = {name: logs / f"floor-{name}.ready" for name in ("serve", "consume")}
    for path in ready.values():
        path.unlink(missing_ok=True)
    port = free_port()
    processes: dict[str, asyncio.subprocess.Process] = {}
    try:
        await provision(home)
        processes["serve"] = await _start(["serve", "--home", str(home), "--port", str(port),
                                           "--ready", str(ready["serve"])], logs / "floor-serve.log")
        processes["consume"] = await _start(["consume", "--home", str(home), "--webhook", webhook_url,
                                             "--ready", str(ready["consume"])], logs / "floor-consume.log")
        deadline = time.monotonic() + READY_TIMEOUT
        while not all(path.exists() for path in ready.values()):
            for name, process in processes.items():
                if process.returncode is not None or time.monotonic() > deadline:
                    log = logs / f"floor-{name}.log"
                    tail = " | ".join(log.read_text(errors="replace").splitlines()[-3:])
                    raise FloorFailed(f"the floor's {name} process did not start ({log}): {tail}")
            await asyncio.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        await asyncio.gather(*(_stop(p) for p in processes.values()))
        for path in ready.values():
            path.unlink(missing_ok=True)
        await unprovision(home)


async def measure_floor(home: Path, receiver: WebhookReceiver, transfers: Sequence[PaymentSpec], *,
                        concurrency: int, console: Console) -> LoadResult:
    """The bench's closed loop (same engine, client code, payments and concurrency) run on
    the floor; a payment is complete when the floor's webhook for it reaches ``receiver``."""
    webhook_url = receiver.open_unsigned()
    try:
        async with running_floor(home, webhook_url) as url, \
                FloorClient(url, max_connections=concurrency + 16) as client:
            engine = LoadEngine(client, receiver, EngineOptions(concurrency=concurrency, accepted_status=201))
            return await run_with_progress(engine, transfers, console, "floor: transfers")
    finally:
        receiver.close_unsigned()


# -- the report ---------------------------------------------------------------------------------


def share_percent(pipeline_per_second: float, floor_per_second: float) -> float | None:
    """The pipeline's rate as a percentage of the floor's (None when the floor did nothing)."""
    if floor_per_second <= 0:
        return None
    return round(100 * pipeline_per_second / floor_per_second, 1)


def floor_figures(floor: LoadResult, pipeline: LoadResult) -> dict[str, Any]:
    """The JSON's floor fields: both accepted rates, the share, and the floor's own figures."""
    return {
        "floor_accepted_per_s": round(floor.accepted_per_second(), 1),
        "pipeline_accepted_per_s": round(pipeline.accepted_per_second(), 1),
        "share_percent": share_percent(pipeline.accepted_per_second(), floor.accepted_per_second()),
        "floor": floor.figures(),
    }


def floor_table(floor: LoadResult, pipeline: LoadResult) -> Table:
    """The floor beside the pipeline, and the pipeline's share of it."""
    table = Table(title="The pipeline's floor (same hops, none of our logic)")
    table.add_column("figure")
    table.add_column("floor", justify="right")
    table.add_column("pipeline", justify="right")
    table.add_row("accepted / terminal", f"{len(floor.accepted):,} / {len(floor.settled):,}",
                  f"{len(pipeline.accepted):,} / {len(pipeline.settled):,}")
    table.add_row("accepted/s", f"{floor.accepted_per_second():,.1f}", f"{pipeline.accepted_per_second():,.1f}")
    table.add_row("completed/s", f"{floor.completed_per_second():,.1f}", f"{pipeline.completed_per_second():,.1f}")
    table.add_row("API latency p50", *(milliseconds(percentile(r.api_latencies(), 50)) for r in (floor, pipeline)))
    table.add_row("end-to-end p50", *(milliseconds(percentile(r.end_to_end(), 50)) for r in (floor, pipeline)))
    share = share_percent(pipeline.accepted_per_second(), floor.accepted_per_second())
    table.add_row("[bold]pipeline's share of the floor[/bold]", "", "-" if share is None else f"[bold]{share} %[/bold]")
    return table


def main() -> None:
    """``python -m paystream.tools.floor serve|consume``: one of the floor's two processes."""
    import uvloop

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("role", choices=("serve", "consume"))
    parser.add_argument("--home", type=Path, required=True, help="the home of the stack to run against")
    parser.add_argument("--ready", type=Path, required=True, help="a file made once the process is ready")
    parser.add_argument("--port", type=int, help="serve: the port to listen on")
    parser.add_argument("--webhook", help="consume: the URL every webhook is sent to")
    args = parser.parse_args()
    if args.role == "serve":
        uvloop.run(serve(args.home, args.port, args.ready))
    else:
        uvloop.run(consume(args.home, args.webhook, args.ready))


if __name__ == "__main__":
    main()
