"""`paystream migrate` (platform/provision.py), a deployment's migration step, on real servers:
every service's schema and role, then the streams and durables; a second run changes nothing."""

from __future__ import annotations

import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from paystream.contracts.topology import SERVICES, STREAMS, partitioned_consumers
from paystream.platform.config import Settings
from paystream.platform.migrations import role_name
from paystream.platform.provision import ProvisionError, check_settings, provision
from paystream.stack.ports import free_port
from paystream.stack.servers import Nats
from tests.conftest import _running, with_credentials


def _database(url: str, name: str) -> str:
    return urllib.parse.urlunsplit(urllib.parse.urlsplit(url)._replace(path=f"/{name}"))


@pytest.fixture
async def own_database(postgres_url: str, uid: str) -> AsyncIterator[str]:
    """A database of this test's own on the test server (the roles are the cluster's)."""
    conn = await asyncpg.connect(postgres_url)
    try:
        await conn.execute(f'CREATE DATABASE "{uid}"')
        yield _database(postgres_url, uid)
    finally:
        await conn.execute(f'DROP DATABASE IF EXISTS "{uid}" WITH (FORCE)')
        await conn.close()


@pytest.fixture
async def own_nats(tmp_path: Path) -> AsyncIterator[str]:
    """A NATS server of this test's own: `migrate` makes the stack's fixed stream names."""
    server = Nats(tmp_path / "nats", free_port())
    async with _running(tmp_path, server.spec):
        yield server.url


async def test_migrate_makes_every_schema_role_and_durable_once(own_database: str, own_nats: str, uid: str) -> None:
    passwords = {name: f"{uid}-{name}" for name in SERVICES}
    settings = Settings(admin_database_url=own_database, role_passwords=passwords,  # type: ignore[arg-type]
                        nats_url=own_nats, partitions=2)
    first = await provision(settings)
    assert all("up to date" not in line for line in first[:-1])
    again = await provision(settings)
    assert all(line.endswith("up to date") for line in again[:-1]), again

    for name in SERVICES:
        conn = await asyncpg.connect(with_credentials(own_database, role_name(name), passwords[name]))
        try:
            assert await conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = $1", name) > 0
        finally:
            await conn.close()

    import nats

    client = await nats.connect(own_nats)
    try:
        js = client.jetstream()
        durables = {spec.durable for spec in partitioned_consumers(2)}
        found = set()
        for stream in STREAMS:
            found |= {c.name for c in await js.consumers_info(stream.name)}
        assert found == durables
    finally:
        await client.close()


def test_migrate_names_what_is_missing() -> None:
    with pytest.raises(ProvisionError, match="PAYSTREAM_ADMIN_DATABASE_URL"):
        check_settings(Settings())
    partial = Settings(admin_database_url="postgresql://x", role_passwords={"gateway": "p"})  # type: ignore[arg-type]
    with pytest.raises(ProvisionError, match="payments, fraud, ledger, notifications"):
        check_settings(partial)
