"""Schema migrations: numbered SQL files per service, applied once each, in order.

Each service owns one schema and one login role. The role gets data privileges on
the tables of its schema (through default privileges, so a migration can take some
back, e.g. UPDATE on ledger entries) and nothing anywhere else. Migrations run as a
privileged role (the cluster's superuser in the embedded stack). ``{role}`` in a
migration is replaced by the service's role name.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

import asyncpg

MESSAGING_SERVICES: frozenset[str] = frozenset({"payments", "fraud", "ledger", "notifications"})

_FILE = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")
_LOCK_KEY = 0x7061797374  # "payst"


@dataclass(frozen=True, slots=True)
class Migration:
    """One SQL file: ``source`` is ``platform`` or the service name."""

    source: str
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def _load(package: str, source: str) -> list[Migration]:
    found = []
    folder = resources.files(package).joinpath("migrations")
    for entry in folder.iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append(Migration(source, int(match[1]), match[2], entry.read_text()))
    return sorted(found, key=lambda m: m.version)


def migrations_for(service: str) -> list[Migration]:
    """The migrations that build ``service``'s schema, platform tables first."""
    platform = _load("paystream.platform", "platform") if service in MESSAGING_SERVICES else []
    return platform + _load(f"paystream.{service}", service)


def role_name(schema: str) -> str:
    """The login role of the service that owns ``schema``."""
    return f"paystream_{schema}"


async def ensure_role(conn: asyncpg.Connection, role: str, password: str) -> None:
    """Create ``role`` (or reset its password) as a login role with no other powers."""
    exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role)
    verb = "ALTER" if exists else "CREATE"
    statement = await conn.fetchval(
        f"SELECT format('{verb} ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE "
        "NOREPLICATION PASSWORD %L', $1::text, $2::text)",
        role,
        password,
    )
    await conn.execute(statement)


async def migrate(
    conn: asyncpg.Connection,
    *,
    service: str,
    schema: str | None = None,
    password: str,
) -> list[str]:
    """Bring ``service``'s schema up to date; returns the names of the migrations applied.

    ``schema`` defaults to the service name; tests pass a unique one per test.
    """
    schema = schema or service
    role = role_name(schema)
    applied: list[str] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        await conn.execute(
            """
            CREATE SCHEMA IF NOT EXISTS paystream_meta;
            CREATE TABLE IF NOT EXISTS paystream_meta.schema_migrations (
                schema_name text NOT NULL,
                source      text NOT NULL,
                version     int  NOT NULL,
                name        text NOT NULL,
                checksum    text NOT NULL,
                applied_at  timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (schema_name, source, version)
            );
            """
        )
        await ensure_role(conn, role, password)
        database = await conn.fetchval("SELECT current_database()")
        await conn.execute(
            f"""
            CREATE SCHEMA IF NOT EXISTS "{schema}";
            REVOKE ALL ON SCHEMA public FROM PUBLIC;
            REVOKE ALL ON DATABASE "{database}" FROM PUBLIC;
            GRANT CONNECT, TEMPORARY ON DATABASE "{database}" TO "{role}";
            GRANT USAGE ON SCHEMA "{schema}" TO "{role}";
            ALTER ROLE "{role}" SET search_path = "{schema}";
            ALTER DEFAULT PRIVILEGES IN SCHEMA "{schema}"
                GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO "{role}";
            ALTER DEFAULT PRIVILEGES IN SCHEMA "{schema}"
                GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO "{role}";
            ALTER DEFAULT PRIVILEGES IN SCHEMA "{schema}"
                GRANT EXECUTE ON FUNCTIONS TO "{role}";
            """
        )
        done = {
            (row["source"], row["version"]): row["checksum"]
            for row in await conn.fetch(
                "SELECT source, version, checksum FROM paystream_meta.schema_migrations "
                "WHERE schema_name = $1",
                schema,
            )
        }
        await conn.execute(f'SET LOCAL search_path TO "{schema}"')
        for migration in migrations_for(service):
            key = (migration.source, migration.version)
            if key in done:
                if done[key] != migration.checksum:
                    raise RuntimeError(
                        f"migration {migration.source}/{migration.version:03d}_{migration.name} "
                        f"changed after it was applied to schema {schema}"
                    )
                continue
            await conn.execute(migration.sql.replace("{role}", f'"{role}"'))
            await conn.execute(
                "INSERT INTO paystream_meta.schema_migrations "
                "(schema_name, source, version, name, checksum) VALUES ($1, $2, $3, $4, $5)",
                schema,
                migration.source,
                migration.version,
                migration.name,
                migration.checksum,
            )
            applied.append(f"{migration.source}/{migration.version:03d}_{migration.name}")
    return applied
