"""The PostgreSQL the ledger benchmarks run on: embedded, on a free port, in a directory of theirs."""

from __future__ import annotations

import contextlib
import secrets
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from paystream.stack.ports import free_port
from paystream.stack.process import Supervisor
from paystream.stack.servers import Postgres


@contextlib.asynccontextmanager
async def postgres(home: Path) -> AsyncIterator[str]:
    """A real PostgreSQL on a free port under ``home``; yields the superuser URL."""
    server = Postgres(home, free_port(), secrets.token_hex(16))
    supervisor = Supervisor(home / "logs", lambda message: print(f"[supervisor] {message}", file=sys.stderr))
    try:
        await supervisor.start(server.spec)
        yield server.admin_url()
    finally:
        await supervisor.stop([[server.spec.name]])
