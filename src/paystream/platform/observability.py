"""JSON logs with context (payment id, correlation id) and Prometheus metrics.

Call `configure_logging` once per process; bind context with `bound` (it lives in
contextvars, so it follows the asyncio task). Given a ``log_file``, the process writes its
lines there itself and rotates the file by size (`SizeRotatedLog`); with tracing on, a
line inside a span carries ``trace_id`` and ``span_id``. A line that reports what a transaction did
(``ledger_posted``) goes through `log_on_commit`, so it is written only if that
transaction commits: a batch that rolls back and is retried does not leave a line for
each attempt. Metrics live in a `Metrics` object built per process, never at import time.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import IO, Any, TextIO, cast

import orjson
import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


def get_logger(name: str) -> Any:
    """A structlog logger; cheap and lazy, safe to create at module level."""
    return structlog.get_logger(name)


def _orjson_dumps(value: Any, **_: Any) -> str:
    return orjson.dumps(value, default=str).decode()


class SizeRotatedLog:
    """The process's stdout and stderr, pointed at ``path``, which rotates once it passes
    ``max_bytes``: ``path.1`` … ``path.<backups>`` keep the older lines, as the standard
    library's `logging.handlers.RotatingFileHandler` names them.

    File descriptors 1 and 2 themselves follow the current file (``dup2`` at every rotation),
    so whatever bypasses logging (a traceback on a crash, a C library's message) lands in it
    too, and the supervisor that started the process never has to reopen anything. The size
    is checked when a line is flushed: structlog flushes every line, logging every record.
    """

    def __init__(self, path: Path, *, max_bytes: int, backups: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._lock = threading.Lock()
        self._out = sys.stdout
        path.parent.mkdir(parents=True, exist_ok=True)
        self._size = self._point_at(path)

    def _point_at(self, path: Path) -> int:
        sys.stdout.flush()
        sys.stderr.flush()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            return os.fstat(fd).st_size
        finally:
            os.close(fd)

    def write(self, text: str) -> int:
        self._size += len(text)  # characters: orjson writes ASCII for nearly every line
        return self._out.write(text)

    def flush(self) -> None:
        self._out.flush()
        if self._size >= self.max_bytes:
            with self._lock:
                if self._size >= self.max_bytes:
                    self.rotate()

    def rotate(self) -> None:
        """``path`` → ``path.1`` → … → ``path.<backups>`` (the oldest dropped), a new ``path``."""
        for index in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{index}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{index + 1}"))
        if self.path.exists():
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        self._size = self._point_at(self.path)


def configure_logging(
    service: str,
    level: str = "info",
    stream: IO[str] | None = None,
    *,
    log_file: Path | None = None,
    max_bytes: int = 50 * 1024 * 1024,
    backups: int = 5,
    trace_ids: bool = False,
) -> None:
    """JSON lines on ``stream`` (stdout), or in ``log_file`` rotated by size, for structlog
    and the standard library's loggers alike; ``trace_ids`` adds the span's ids to each line."""
    if log_file is not None:
        stream = cast(IO[str], SizeRotatedLog(log_file, max_bytes=max_bytes, backups=backups))
    stream = stream or sys.stdout
    numeric = _LEVELS.get(level.lower(), 20)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
        structlog.processors.format_exc_info,
    ]
    if trace_ids:
        from paystream.platform.tracing import add_trace_ids

        shared.insert(1, add_trace_ids)
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.EventRenamer("msg"),
            structlog.processors.JSONRenderer(serializer=_orjson_dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(cast(TextIO, stream)),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(service=service)

    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.EventRenamer("msg"),
                structlog.processors.JSONRenderer(serializer=_orjson_dumps),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, logging.INFO))
    for noisy in ("uvicorn.access",):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@contextmanager
def bound(**context: Any) -> Iterator[None]:
    """Bind log context (``payment_id=..., correlation_id=...``) for the enclosed block."""
    tokens = structlog.contextvars.bind_contextvars(**context)
    try:
        yield
    finally:
        structlog.contextvars.reset_contextvars(**tokens)


_HELD: ContextVar[list[tuple[Any, str, dict[str, Any]]] | None] = ContextVar("paystream_held_logs", default=None)


def log_on_commit(logger: Any, event: str, **fields: Any) -> None:
    """An info line about an effect of the enclosing transaction: held back inside
    `held_until_commit` (with the log context bound now), written at once outside it."""
    held = _HELD.get()
    if held is None:
        logger.info(event, **fields)
    else:
        held.append((logger, event, {**structlog.contextvars.get_contextvars(), **fields}))


@contextmanager
def held_until_commit() -> Iterator[None]:
    """Around a transaction: the `log_on_commit` lines of the block are written when it
    exits normally (the transaction committed) and dropped when it raises (rolled back)."""
    held: list[tuple[Any, str, dict[str, Any]]] = []
    token = _HELD.set(held)
    try:
        yield
    finally:
        _HELD.reset(token)
    for logger, event, fields in held:  # not reached when the block raised
        logger.info(event, **fields)


class Metrics:
    """The Prometheus metrics one process exports; services add their own to ``registry``."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.registry = CollectorRegistry(auto_describe=True)
        # The `Guard`s that report here; readiness asks them whether their bulkheads are full.
        self.guards: list[Any] = []
        r = self.registry
        self.http_requests = Counter(
            "paystream_http_requests_total", "HTTP requests served",
            ["method", "route", "status"], registry=r,
        )
        self.http_seconds = Histogram(
            "paystream_http_request_seconds", "HTTP request latency", ["route"], registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.http_in_flight = Gauge(
            "paystream_http_in_flight", "HTTP requests being served", registry=r
        )
        self.events_consumed = Counter(
            "paystream_events_consumed_total", "Events settled by consumers",
            ["consumer", "outcome"], registry=r,
        )
        self.batch_seconds = Histogram(
            "paystream_consumer_batch_seconds", "Time to apply one batch of events",
            ["consumer"], registry=r,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.consumer_lag = Gauge(
            "paystream_consumer_lag", "Events waiting for a consumer (pending + unacked)",
            ["consumer"], registry=r,
        )
        self.partitions_held = Gauge(
            "paystream_partitions_held", "Partitions of a consumer this copy holds the lease of",
            ["consumer"], registry=r,
        )
        self.outbox_published = Counter(
            "paystream_outbox_published_total", "Outbox events published to the bus", registry=r
        )
        self.outbox_backlog = Gauge(
            "paystream_outbox_backlog", "Outbox events not yet published", registry=r
        )
        self.dead_letters = Counter(
            "paystream_dead_letters_total", "Messages sent to the dead-letter table",
            ["consumer"], registry=r,
        )
        self.breaker_state = Gauge(
            "paystream_circuit_breaker_state", "0 closed, 1 half-open, 2 open", ["name"],
            registry=r,
        )
        self.bulkhead_in_use = Gauge(
            "paystream_bulkhead_in_use", "Calls holding a bulkhead slot", ["name"], registry=r
        )
        self.bulkhead_capacity = Gauge(
            "paystream_bulkhead_capacity", "Bulkhead slots in all", ["name"], registry=r
        )
        self.bulkhead_rejected = Counter(
            "paystream_bulkhead_rejected_total", "Calls refused by a full bulkhead", ["name"],
            registry=r,
        )
        self.ready = Gauge(
            "paystream_ready", "1 when the last /readyz check passed, 0 when it failed", registry=r
        )
        self.screening_deadline = Counter(
            "paystream_screening_deadline_total",
            "Payments whose fraud screening did not answer by its deadline", registry=r,
        )
