"""The service runtime: one OS process per service, built the same way for all of them.

A service package offers a ``service.py`` with ``NAME``, ``NEEDS`` and an async
``build(ctx) -> ServiceParts``. `run_service` connects what the service needs,
builds it, serves its HTTP routes (plus ``/healthz``, ``/readyz``, ``/metrics``) and
runs its consumers, outbox relay and workers. On SIGTERM or Ctrl-C it drains: stop
taking requests, finish in-flight ones, finish the batch in hand, flush the outbox,
close connections.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import asyncpg
import stamina
import uvicorn
from fastapi import FastAPI

from paystream.contracts.topology import consumers_of
from paystream.platform import tracing
from paystream.platform.config import Settings, load_settings
from paystream.platform.consumer import Handler, PartitionedConsumer
from paystream.platform.db import create_pool, ping
from paystream.platform.errors import TransientError
from paystream.platform.http import (
    InternalAuth,
    MetricsMiddleware,
    OperationsListener,
    ReadinessCheck,
    install_error_handlers,
    install_operations_routes,
)
from paystream.platform.leases import new_member_id
from paystream.platform.limits import raise_open_files
from paystream.platform.nats_bus import NatsBus
from paystream.platform.observability import Metrics, configure_logging, get_logger
from paystream.platform.outbox import Outbox, OutboxRelay
from paystream.platform.tls import server_context

log = get_logger(__name__)

Worker = Callable[[asyncio.Event], Coroutine[Any, Any, None]]


async def repeat(
    stopping: asyncio.Event,
    work: Callable[[], Awaitable[int]],
    *,
    interval: float,
    backlog: int | None = None,
    failed: str,
) -> None:
    """A worker's loop: run ``work`` until ``stopping`` is set, pausing ``interval`` between rounds.

    ``work`` returns how much it did; when that reaches ``backlog`` (any non-zero amount if
    ``backlog`` is None) there is likely more, so the next round starts at once. A failed
    round is logged as ``failed`` and retried after the pause.
    """
    while not stopping.is_set():
        try:
            done = await work()
        except Exception as exc:
            log.warning(failed, error=repr(exc))
            done = 0
        if done and done >= (backlog or 1):
            continue
        try:
            await asyncio.wait_for(stopping.wait(), timeout=interval)
        except TimeoutError:
            pass


@dataclass(frozen=True, slots=True, kw_only=True)
class Needs:
    """What a service connects to at start."""

    postgres: bool = True
    bus: bool = False
    outbox: bool = False


@dataclass(slots=True, kw_only=True)
class ServiceContext:
    """Everything a service's ``build`` may use; built once per process."""

    name: str
    settings: Settings
    metrics: Metrics
    needs: Needs
    pool: asyncpg.Pool | None = None
    # A pool of its own for partition leases: a busy service pool must not delay renewals.
    lease_pool: asyncpg.Pool | None = None
    bus: NatsBus | None = None
    outbox: Outbox

    @property
    def db(self) -> asyncpg.Pool:
        assert self.pool is not None, "this service did not ask for PostgreSQL"
        return self.pool

    def internal_auth(self) -> InternalAuth:
        return InternalAuth(self.settings.internal_token.get_secret_value())


@dataclass(slots=True, kw_only=True)
class ServiceParts:
    """What a service contributes to its process."""

    install: Callable[[FastAPI], None] | None = None
    handlers: dict[str, Handler] = field(default_factory=dict)  # durable name -> handler
    workers: list[Worker] = field(default_factory=list)
    readiness: list[ReadinessCheck] = field(default_factory=list)
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    public: bool = False  # serves the public API (OpenAPI on) rather than internal routes


@stamina.retry(on=TransientError, attempts=30, timeout=60.0, wait_initial=0.2, wait_max=2.0)
async def _connect_pool(settings: Settings, name: str, size: int | None = None) -> asyncpg.Pool:
    return await create_pool(
        settings.database_url,
        min_size=min(size or settings.db_pool_min, settings.db_pool_min),
        max_size=size or settings.db_pool_max,
        timeout=settings.db_timeout,
        application_name=f"paystream-{name}",
    )


@stamina.retry(on=TransientError, attempts=30, timeout=60.0, wait_initial=0.2, wait_max=2.0)
async def _connect_bus(settings: Settings, name: str) -> NatsBus:
    return await NatsBus.connect(
        settings.nats_url, name=f"paystream-{name}", timeout=settings.nats_timeout,
        replicas=settings.stream_replicas,
    )


async def build_context(name: str, settings: Settings, needs: Needs) -> ServiceContext:
    """Connect what ``needs`` asks for (retrying while the servers come up)."""
    metrics = Metrics(name)
    pool = await _connect_pool(settings, name) if needs.postgres else None
    leases = await _connect_pool(settings, f"{name}-leases", size=2) if needs.postgres and needs.bus else None
    bus = await _connect_bus(settings, name) if needs.bus else None
    return ServiceContext(
        name=name, settings=settings, metrics=metrics, needs=needs, pool=pool, bus=bus, lease_pool=leases,
        outbox=Outbox(settings.partitions),
    )


def _standard_readiness(ctx: ServiceContext, consumers: list[PartitionedConsumer]) -> list[ReadinessCheck]:
    checks: list[ReadinessCheck] = []
    limit = ctx.settings.saturation_share
    if ctx.pool is not None:
        pool = ctx.pool

        async def database() -> str | None:
            busy = pool.get_size() - pool.get_idle_size()
            if busy / pool.get_max_size() > limit:
                return f"database pool saturated ({busy} of {pool.get_max_size()} connections busy)"
            return None if await ping(pool) else "database unreachable"

        checks.append(database)

    async def work_pools() -> str | None:
        full = [f"{g.name} ({g.busy_share:.0%})" for g in ctx.metrics.guards if g.busy_share > limit]
        return f"work pools saturated: {', '.join(full)}" if full else None

    checks.append(work_pools)
    if ctx.bus is not None:
        bus = ctx.bus

        async def broker() -> str | None:
            return None if bus.connected else "event bus disconnected"

        checks.append(broker)
    if consumers:

        async def consuming() -> str | None:
            unbound = [c.name for c in consumers if not c.bound]
            return f"consumers not bound: {', '.join(unbound)}" if unbound else None

        checks.append(consuming)
    return checks


def create_app(ctx: ServiceContext, parts: ServiceParts) -> FastAPI:
    """The service's ASGI app, with its lifespan running consumers, relay and workers."""
    member = new_member_id(f"{ctx.name}-{ctx.settings.copy_index}")
    consumers = [
        PartitionedConsumer(
            spec=spec, bus=ctx.bus, pool=ctx.db, handler=parts.handlers[spec.durable],  # type: ignore[arg-type]
            partitions=ctx.settings.partitions, member=member, lease_pool=ctx.lease_pool,
            metrics=ctx.metrics, batch=ctx.settings.consumer_batch,
        )
        for spec in consumers_of(ctx.name)
        if spec.durable in parts.handlers
    ]
    relay = (
        OutboxRelay(
            ctx.db, ctx.bus, channel=f"{ctx.name}_outbox", metrics=ctx.metrics,
            duplicate_delivery=ctx.settings.chaos_duplicate_delivery,
        )
        if ctx.needs.outbox and ctx.bus is not None and ctx.pool is not None
        else None
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        consumers_stop, workers_stop, relay_stop = asyncio.Event(), asyncio.Event(), asyncio.Event()
        consumer_tasks = [asyncio.create_task(c.run(consumers_stop)) for c in consumers]
        worker_tasks = [asyncio.create_task(w(workers_stop)) for w in parts.workers]
        relay_task = asyncio.create_task(relay.run(relay_stop)) if relay else None
        log.info("service_started", consumers=[c.name for c in consumers])
        try:
            yield
        finally:
            log.info("service_draining")
            consumers_stop.set()
            await _finish(consumer_tasks, 40.0)
            workers_stop.set()
            await _finish(worker_tasks, 15.0)
            relay_stop.set()
            if relay_task:
                await _finish([relay_task], 15.0)
            for closer in parts.closers:
                try:
                    await closer()
                except Exception as exc:
                    log.warning("closer_failed", error=repr(exc))
            if ctx.bus is not None:
                await ctx.bus.close()
            if ctx.pool is not None:
                await ctx.pool.close()
            if ctx.lease_pool is not None:
                await ctx.lease_pool.close()
            log.info("service_stopped")

    app = FastAPI(
        title=f"paystream {ctx.name}",
        lifespan=lifespan,
        openapi_url="/openapi.json" if parts.public else None,
        docs_url="/docs" if parts.public else None,
        redoc_url=None,
    )
    install_error_handlers(app)
    install_operations_routes(app, ctx.metrics, _standard_readiness(ctx, consumers) + parts.readiness)
    if parts.install:
        parts.install(app)
    app.add_middleware(MetricsMiddleware, metrics=ctx.metrics)
    if ctx.settings.operations_port is not None:
        app.add_middleware(OperationsListener, port=ctx.settings.operations_port)
    tracing.instrument_app(app)
    return app


async def _finish(tasks: list[asyncio.Task[Any]], timeout: float) -> None:
    if not tasks:
        return
    done, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
    for task in done:
        if not task.cancelled() and task.exception():
            log.error("task_failed", error=repr(task.exception()))


def http_config(app: Any, settings: Settings, *, host: str, port: int, **extra: Any) -> uvicorn.Config:
    """How every paystream HTTP server runs (and the bench's floor, so that it stays the same
    hops): uvloop already running, httptools, no access log, the keep-alive and backlog of
    ``settings``."""
    return uvicorn.Config(
        app, host=host, port=port, loop="none", http="httptools", lifespan="on", access_log=False,
        log_config=None, timeout_graceful_shutdown=20, timeout_keep_alive=settings.http_keep_alive_seconds,
        backlog=settings.http_backlog, **extra,
    )


async def _serve(module: ModuleType, settings: Settings) -> None:
    name: str = module.NAME
    ctx = await build_context(name, settings, module.NEEDS)
    parts: ServiceParts = await module.build(ctx)
    app = create_app(ctx, parts)
    config = http_config(
        app, settings, host=settings.http_host, port=settings.http_port,
        ssl_certfile=settings.tls_certfile if settings.tls_keyfile else None,
        ssl_keyfile=settings.tls_keyfile if settings.tls_certfile else None,
    )
    if config.is_ssl:
        config.load()
        assert settings.tls_certfile and settings.tls_keyfile
        config.ssl = server_context(settings.tls_certfile, settings.tls_keyfile)
    server = uvicorn.Server(config)
    await server.serve(sockets=_listeners(settings))


def _listeners(settings: Settings) -> list[socket.socket] | None:
    """The sockets to serve on when copies share the service's port; None: uvicorn binds."""
    if settings.copies <= 1 and settings.own_port is None and settings.operations_port is None:
        return None
    shared = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    shared.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    shared.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    shared.bind((settings.http_host, settings.http_port))
    listeners = [shared]
    if settings.own_port is not None:
        own = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        own.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        own.bind((settings.http_host, settings.own_port))
        listeners.append(own)
    if settings.operations_port is not None:
        operations = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        operations.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        operations.bind((settings.http_host, settings.operations_port))
        listeners.append(operations)
    for sock in listeners:
        sock.set_inheritable(True)
    return listeners


def run_service(module: ModuleType) -> None:
    """Entry point of ``paystream serve <name>``: runs until SIGTERM/SIGINT, then drains."""
    import uvloop

    raise_open_files()  # one descriptor per keep-alive connection: the gateway may hold thousands
    settings = load_settings()
    process = module.NAME if settings.copy_index == 1 else f"{module.NAME}-{settings.copy_index}"
    tracing.configure_tracing(module.NAME, endpoint=settings.tracing_endpoint, instance=process,
                              sample_ratio=settings.trace_sample_ratio)
    configure_logging(
        module.NAME, settings.log_level, log_file=settings.log_file, max_bytes=settings.log_max_bytes,
        backups=settings.log_backups, trace_ids=tracing.enabled(),
    )
    try:
        uvloop.run(_serve(module, settings))
    finally:
        tracing.shutdown_tracing()
