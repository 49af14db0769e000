"""PostgreSQL access: pools with timeouts, JSON codecs, and driver-error translation."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import asyncpg
import orjson

from paystream.platform.errors import TransientError
from paystream.platform.observability import get_logger

log = get_logger(__name__)

# Errors after which the same work may succeed if tried again later.
_TRANSIENT: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.LockNotAvailableError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.QueryCanceledError,
    # A connection the server dropped mid-operation (a fast shutdown) can be left in a state
    # asyncpg refuses to use ("cannot switch to state 12; another operation is in progress"):
    # the pool discards it, and the request may be retried on another.
    asyncpg.exceptions.InternalClientError,
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
    TimeoutError,
)


def is_transient(exc: BaseException) -> bool:
    """True when a database error may go away by itself (lost connection, deadlock, timeout)."""
    return isinstance(exc, (*_TRANSIENT, TransientError))


async def _init_connection(conn: asyncpg.Connection) -> None:
    for name in ("json", "jsonb"):
        await conn.set_type_codec(
            name,
            encoder=lambda value: orjson.dumps(value).decode(),
            decoder=orjson.loads,
            schema="pg_catalog",
        )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Returning a connection to the pool: asyncpg has already rolled back any open
    transaction and dropped listener callbacks. Its default reset query (RESET ALL, UNLISTEN,
    advisory unlock, CLOSE ALL) would cost a round trip on every release — 17 % of the
    gateway's CPU under load — and undoes nothing paystream leaves behind: it sets no
    session state (SET LOCAL only), takes only transaction-scoped advisory locks, and
    removes its own listeners (which UNLISTENs) before releasing a connection."""


async def create_pool(
    dsn: str,
    *,
    min_size: int = 2,
    max_size: int = 10,
    timeout: float = 10.0,
    application_name: str = "paystream",
    search_path: str | None = None,
) -> asyncpg.Pool:
    """A connection pool whose every query has ``timeout`` seconds to finish."""
    # A session frozen inside a transaction (a stopped process, a lost peer) would hold
    # its row locks, partition leases among them, for ever: the server ends it instead.
    server_settings = {
        "application_name": application_name,
        "idle_in_transaction_session_timeout": "30s",
    }
    if search_path:
        server_settings["search_path"] = search_path
    try:
        pool: asyncpg.Pool = await asyncio.wait_for(
            asyncpg.create_pool(
                dsn,
                min_size=min_size,
                max_size=max_size,
                command_timeout=timeout,
                timeout=timeout,
                init=_init_connection,
                server_settings=server_settings,
                max_inactive_connection_lifetime=120,
                reset=_keep_session,
            ),
            timeout=timeout * 2,
        )
    except _TRANSIENT as exc:
        raise TransientError(f"cannot reach PostgreSQL: {exc}") from exc
    return pool


async def ping(pool: asyncpg.Pool, timeout: float = 1.0) -> bool:
    """True when a connection can be had and answers within ``timeout``."""
    try:
        async with asyncio.timeout(timeout):
            async with pool.acquire() as conn:
                await conn.fetchval("SELECT 1")
        return True
    except Exception:
        return False


class Listener:
    """A LISTEN on one channel, held on a connection of ``pool``, that survives the server.

    ``ensure`` (call it before each round of work) makes sure the listener is in place: after
    PostgreSQL went away (a crash, a fast shutdown) the pool takes the dead connection back
    by itself, and asking a connection the pool took back anything, even ``is_closed()``,
    raises; a loop that let that escape died silently and its work waited for ever. So
    ``ensure`` never raises: when it cannot listen it logs, and the caller's poll carries on.
    """

    def __init__(self, pool: asyncpg.Pool, channel: str, callback: Any, *, name: str) -> None:
        self._pool = pool
        self._channel = channel
        self._callback = callback
        self._name = name
        self._conn: asyncpg.Connection | None = None

    @property
    def listening(self) -> bool:
        return self._conn is not None

    async def ensure(self) -> None:
        if self._conn is not None:
            try:
                if not self._conn.is_closed():
                    return
                await self._pool.release(self._conn)  # dead: give its slot back
            except asyncpg.InterfaceError:
                pass  # the pool took it back itself when the server went away
            except Exception as exc:
                log.warning(f"{self._name}_listener_release_failed", error=repr(exc))
            self._conn = None
        try:
            conn = await self._pool.acquire()
        except Exception as exc:
            log.warning(f"{self._name}_listen_failed", error=repr(exc))
            return
        try:
            await conn.add_listener(self._channel, self._callback)
        except Exception as exc:
            log.warning(f"{self._name}_listen_failed", error=repr(exc))
            with contextlib.suppress(Exception):
                await self._pool.release(conn)
            return
        self._conn = conn

    async def close(self) -> None:
        if self._conn is None:
            return
        conn, self._conn = self._conn, None
        with contextlib.suppress(Exception):  # a broken connection: the pool discards it
            await conn.remove_listener(self._channel, self._callback)
        with contextlib.suppress(asyncpg.InterfaceError):  # already back in the pool
            await self._pool.release(conn)
