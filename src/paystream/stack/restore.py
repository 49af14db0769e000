"""`paystream restore --to T --into DIR`: a copy of the stack's database as it was at T, running.

1. Refuse, before anything is written, what cannot work (one line, exit 2): no home, no base
   backup, a DIR that is not empty, a T outside the window (`paystream.stack.pitr`), a base
   backup that `pg_verifybackup` finds damaged.
2. If the stack is running, close its WAL archive first (`backup.close_archive`), so that any
   T up to the moment of the command is reachable: that is how to get "the very latest".
3. DIR is home-like: the copy's PostgreSQL gets a place as a home's would (`server_place`: in
   ``DIR/postgres/data``, or as root outside it under the server root, owned by the server's
   user). The newest base backup that reaches T is copied in, with ``recovery.signal`` and
   ``restore_command`` (from the WAL archive), ``recovery_target_time`` = T and
   ``recovery_target_action = promote``; ``archive_mode = off``, so the copy never writes into
   the stack's archive.
4. It starts on a free port on 127.0.0.1 (never 5432), waits until recovery reached T and the
   copy was promoted (a normal server on a timeline of its own), writes ``DIR/restore.json``
   (0600: its URL, the backup and target) and says how to connect. It stays in the foreground,
   like `up`, until Ctrl-C or `paystream down --home DIR`; ``down --purge --home DIR`` removes
   the copy, outside DIR too.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from paystream.platform.home import database_url
from paystream.stack.backup import (
    BackupError,
    backup_dir,
    backup_place,
    catalogue,
    close_archive,
    current_window,
    verify,
)
from paystream.stack.pitr import OutsideWindow, _iso
from paystream.stack.place import PlaceError
from paystream.stack.ports import choose_port
from paystream.stack.process import StartFailed, Supervisor
from paystream.stack.servers import Postgres

SYSTEM_POSTGRES_PORT = 5432


@dataclass(frozen=True, slots=True, kw_only=True)
class RestoreOptions:
    home: Path
    target: datetime
    into: Path
    recovery_timeout: float = 1800.0  # how long replaying the archive may take


@dataclass(frozen=True, slots=True)
class Plan:
    """What will be restored: checked in full before anything is written."""

    home: Path
    into: Path
    backup_name: str
    source: Path
    restore_command: str
    password: str
    target: datetime


def plan(options: RestoreOptions, say: Callable[[str], None]) -> Plan:
    """Every refusal of bad input happens here, before DIR is touched (`BackupError`, code 2)."""
    home = options.home.resolve()
    secrets_file = home / "secrets.json"
    if not secrets_file.is_file():
        raise BackupError(f"no paystream home at {home} (no secrets.json); pass --home or set PAYSTREAM_HOME")
    into = options.into.resolve()
    if into.exists() and (not into.is_dir() or any(into.iterdir())):
        raise BackupError(f"--into {into} is not an empty directory; restore into a new or empty one")
    place = backup_place(home)
    if not catalogue(place):
        raise BackupError(f"no base backup of {home} in {place.root}; take one with `paystream backup`")
    if (home / "stack.json").is_file():
        url = database_url(home)
        with contextlib.suppress(OSError, asyncpg.PostgresError, TimeoutError):
            asyncio.run(close_archive(url))
            say("closed the running stack's current WAL segment, so times up to now are reachable")
    try:
        chosen = current_window(place).choose(options.target)
    except OutsideWindow as exc:
        raise BackupError(str(exc)) from None
    source = backup_dir(place, chosen)
    say(f"checking base backup {chosen.name} with pg_verifybackup …")
    problem = verify(source)
    if problem is not None:
        raise BackupError(f"base backup {chosen.name} is damaged (pg_verifybackup: {problem}); nothing was restored")
    password = str(json.loads(secrets_file.read_text())["postgres_password"])
    return Plan(home=home, into=into, backup_name=chosen.name, source=source,
                restore_command=place.restore_command(), password=password, target=options.target)


def _lay_out(plan: Plan, pg: Postgres) -> None:
    """The base backup copied into the copy's data directory, set to recover to the target."""
    pg.place.prepare()
    data = pg.data_dir
    if any(data.iterdir()):
        raise BackupError(f"{data} is not empty; remove it or restore into another directory")
    shutil.copytree(plan.source, data, symlinks=True, dirs_exist_ok=True)
    (data / "backup_manifest").unlink(missing_ok=True)  # of the backup, not of this cluster
    (data / "recovery.signal").write_text("")
    with open(data / "postgresql.auto.conf", "a") as conf:
        conf.write(
            "\n# written by paystream restore\n"
            f"restore_command = '{_quote(plan.restore_command)}'\n"
            f"recovery_target_time = '{plan.target.isoformat()}'\n"
            "recovery_target_inclusive = on\n"
            "recovery_target_action = 'promote'\n"
            "recovery_target_timeline = 'current'\n"
            "archive_mode = off\n"
        )
    if pg.place.user is not None:
        for path in [data, *data.rglob("*")]:
            if not path.is_symlink():
                pg.place.give_to_server(path)
    data.chmod(0o700)


def _quote(value: str) -> str:
    return value.replace("'", "''")


def _write_private(path: Path, data: dict[str, object]) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2)
        handle.write("\n")
    tmp.replace(path)


async def _promoted(url: str) -> bool:
    try:
        conn = await asyncpg.connect(url, timeout=2)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    try:
        return not await conn.fetchval("SELECT pg_is_in_recovery()")
    except asyncpg.PostgresError:
        return False
    finally:
        await conn.close()


async def run_restore(options: RestoreOptions, say: Callable[[str], None]) -> int:
    """Restore and keep the copy running until SIGINT/SIGTERM; returns the exit code."""
    clock = time.monotonic()
    try:
        chosen = await asyncio.to_thread(plan, options, say)
    except PlaceError as exc:
        raise BackupError(str(exc)) from None
    into = chosen.into
    into.mkdir(parents=True, exist_ok=True)
    port = choose_port("restored postgres", None, explicit=False, taken={SYSTEM_POSTGRES_PORT})
    pg = Postgres(into, port, chosen.password, settings=(("archive_mode", "off"),))
    say(f"restoring base backup {chosen.backup_name} into {pg.data_dir} …")
    try:
        await asyncio.to_thread(_lay_out, chosen, pg)
    except PlaceError as exc:
        raise BackupError(str(exc)) from None
    (into / "up.pid").write_text(str(os.getpid()))  # `paystream down --home DIR` stops this process
    supervisor = Supervisor(into / "logs", say, run_dir=into / "run")
    spec = dataclasses.replace(pg.spec, restart=False, ready_timeout=options.recovery_timeout, prepare=None)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    url = pg.admin_url()
    code = 0
    try:
        say(f"replaying the WAL archive up to {_iso(chosen.target)} (PostgreSQL on 127.0.0.1:{port}) …")
        await supervisor.start(spec)
        process = supervisor.processes["postgres"]
        deadline = loop.time() + options.recovery_timeout
        while not await _promoted(url):
            if not process.running:
                log = into / "logs" / "postgres.log"
                raise StartFailed(f"the restored PostgreSQL stopped during recovery; see {log}")
            if loop.time() > deadline or stop.is_set():
                raise StartFailed(f"recovery did not finish within {options.recovery_timeout:.0f}s")
            await asyncio.sleep(0.2)
        took = time.monotonic() - clock
        _write_private(into / "restore.json", {
            "postgres_url": url, "port": port, "pid": os.getpid(), "home": str(chosen.home),
            "base_backup": chosen.backup_name, "target": _iso(chosen.target),
            "data_dir": str(pg.data_dir), "restored_at": datetime.now(UTC).isoformat(), "seconds": round(took, 3),
        })
        masked = url.replace(f":{chosen.password}@", ":****@")
        say(f"restored to {_iso(chosen.target)} in {took:.1f}s: {masked}")
        say(f"the URL with its password (the stack's superuser's) is postgres_url in {into / 'restore.json'}; "
            f"check it with `paystream check --database-url URL` and `paystream ledger verify --database-url URL`")
        say(f"running until Ctrl-C or `paystream down --home {into}` (`--purge` also removes the copy)")
        while not stop.is_set() and process.running:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
        if not process.running and not stop.is_set():
            say("the restored PostgreSQL stopped")
            code = 1
    except StartFailed as exc:
        say(f"restore failed: {exc}")
        code = 1
    finally:
        say("stopping the restored PostgreSQL …")
        await supervisor.stop([["postgres"]])
        say("stopped; the copy stays in " + str(pg.data_dir))
        pidfile = into / "up.pid"
        if pidfile.is_file() and pidfile.read_text().strip() == str(os.getpid()):
            pidfile.unlink()
    return code
