"""`paystream migrate`: what a deployment runs once, before its services start.

`paystream up` does the same for its embedded stack. A deployment (deploy/compose.yaml, the
Helm chart's pre-install/pre-upgrade Job) runs it against servers of its own: every service's
migrations with the admin role (``PAYSTREAM_ADMIN_DATABASE_URL``), each service's login role
given its password from ``PAYSTREAM_ROLE_PASSWORDS``, then the streams and the per-partition
durable consumers on the bus (``PAYSTREAM_NATS_URL``). Running it again changes nothing.
"""

from __future__ import annotations

import asyncpg

from paystream.contracts.topology import SERVICES, STREAMS, partitioned_consumers
from paystream.platform.config import Settings
from paystream.platform.migrations import migrate
from paystream.platform.nats_bus import NatsBus


class ProvisionError(Exception):
    """Settings `paystream migrate` cannot work with, worded for the operator."""


def check_settings(settings: Settings) -> tuple[str, dict[str, str]]:
    """The admin URL and one password per service, or the one line that says what is missing."""
    if settings.admin_database_url is None:
        raise ProvisionError("PAYSTREAM_ADMIN_DATABASE_URL is not set (a role that may create roles and schemas)")
    passwords = {name: secret.get_secret_value() for name, secret in settings.role_passwords.items()}
    missing = [name for name in SERVICES if not passwords.get(name)]
    if missing:
        raise ProvisionError(f"PAYSTREAM_ROLE_PASSWORDS has no password for: {', '.join(missing)}")
    return settings.admin_database_url.get_secret_value(), passwords


async def provision(settings: Settings) -> list[str]:
    """Migrate every service's schema and provision the bus; returns one line per step done."""
    admin_url, passwords = check_settings(settings)
    done: list[str] = []
    conn = await asyncpg.connect(admin_url, timeout=settings.db_timeout)
    try:
        for service in SERVICES:
            applied = await migrate(conn, service=service, password=passwords[service])
            done.append(f"{service}: {', '.join(applied) if applied else 'up to date'}")
    finally:
        await conn.close()
    bus = await NatsBus.connect(settings.nats_url, name="paystream-migrate", timeout=settings.nats_timeout,
                                replicas=settings.stream_replicas)
    durables = partitioned_consumers(settings.partitions)
    try:
        await bus.ensure_topology(STREAMS, durables)
    finally:
        await bus.close()
    done.append(f"bus: {len(STREAMS)} streams, {len(durables)} durable consumers "
                f"({settings.partitions} partitions, {settings.stream_replicas} replicas)")
    return done
