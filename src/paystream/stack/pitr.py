"""What can be restored, and from which base backup: pure functions over the backup catalogue.

A base backup is usable from the moment it ended (the wall clock after `pg_basebackup`
returned, which is later than the end-of-backup record, so never too early). From
there, WAL from the archive carries it forward. PostgreSQL stops a time-targeted
recovery just before the first transaction whose commit is later than the target
(``recovery_target_inclusive`` on), so a target is reachable only while some archived
commit comes after it: a backup's reach ends at the last commit in the run of archived
segments that continues, without a gap, from the backup's last segment (its own
``pg_wal`` covers what came before). A target T is restorable from backup B when
``B.ended <= T < reach(B)``; restore picks the newest such B, the one with least to
replay.

No I/O here: `paystream.stack.backup` reads the directories and `pg_waldump`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

_SEGMENT = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})$")
_COMMIT = re.compile(r"desc: (?:COMMIT|ABORT) (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) UTC")
_EVERY = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class BadTarget(ValueError):
    """A restore target that is not a time with a zone (the message says what to write)."""


def parse_target(text: str) -> datetime:
    """An ISO 8601 instant with a zone (``2026-12-01T10:00:00Z``, ``…+01:00``), as UTC.

    A time without a zone is refused rather than guessed: the server, the shell and the
    operator may each think of a different zone.
    """
    cleaned = text.strip()
    if not re.match(r"^\d{4}-\d\d-\d\d[T ]\d\d:\d\d", cleaned):
        raise BadTarget(f"--to {text!r} is not a time; write it as ISO 8601 with a zone, e.g. 2026-12-01T10:00:00Z")
    try:
        moment = datetime.fromisoformat(cleaned.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise BadTarget(f"--to {text!r} is not a valid time; write it as ISO 8601 with a zone, "
                        "e.g. 2026-12-01T10:00:00Z") from None
    if moment.tzinfo is None:
        raise BadTarget(f"--to {text!r} has no time zone; add one, e.g. {cleaned}Z for UTC")
    return moment.astimezone(UTC)


def parse_every(text: str) -> timedelta | None:
    """The backup schedule: ``4h``, ``30m``, ``90s``, ``1d`` or a number of seconds; ``0``/``off``: none."""
    cleaned = text.strip().lower()
    if cleaned in ("", "0", "off", "none", "never"):
        return None
    match = _EVERY.match(cleaned)
    if match is None:
        raise ValueError(f"PAYSTREAM_BACKUP_EVERY={text!r}: expected e.g. 4h, 30m, 90s, 1d, or off")
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds < 60:
        raise ValueError(f"PAYSTREAM_BACKUP_EVERY={text!r}: at least a minute between base backups")
    return timedelta(seconds=seconds)


# ---------------------------------------------------------------------- WAL segments


@dataclass(frozen=True, slots=True, order=True)
class Segment:
    """One WAL segment file: its timeline and its number (``lsn // segment size``)."""

    timeline: int
    number: int
    per_id: int = 256  # segments per 4 GiB "log id": 256 with the default 16 MiB segments

    @classmethod
    def parse(cls, name: str, segment_bytes: int = 16 << 20) -> Segment | None:
        """The segment a file name stands for, or None (``.history``, ``.backup``, temporaries)."""
        match = _SEGMENT.match(name)
        if match is None:
            return None
        per_id = 0x1_0000_0000 // segment_bytes
        log, seg = int(match.group(2), 16), int(match.group(3), 16)
        return cls(int(match.group(1), 16), log * per_id + seg, per_id)

    @classmethod
    def of_lsn(cls, timeline: int, lsn: str, segment_bytes: int = 16 << 20) -> Segment:
        high, _, low = lsn.partition("/")
        return cls(timeline, ((int(high, 16) << 32) + int(low, 16)) // segment_bytes,
                   0x1_0000_0000 // segment_bytes)

    @property
    def name(self) -> str:
        return f"{self.timeline:08X}{self.number // self.per_id:08X}{self.number % self.per_id:08X}"


def contiguous_from(start: Segment, archived: Iterable[Segment]) -> Segment | None:
    """The last segment of the unbroken run of ``archived`` that starts at or before ``start``
    and reaches it; None when ``start`` itself is not archived."""
    numbers = {s.number for s in archived if s.timeline == start.timeline}
    if start.number not in numbers:
        return None
    number = start.number
    while number + 1 in numbers:
        number += 1
    return Segment(start.timeline, number, start.per_id)


def commit_times(waldump_output: str) -> list[datetime]:
    """Commit and abort times in `pg_waldump --rmgr=Transaction` output (run with TZ=UTC)."""
    return [datetime.fromisoformat(m.group(1)).replace(tzinfo=UTC) for m in _COMMIT.finditer(waldump_output)]


# ---------------------------------------------------------------------- the window


@dataclass(frozen=True, slots=True)
class BaseBackup:
    """One base backup as the catalogue records it."""

    name: str
    started: datetime
    ended: datetime
    size: int
    verified: bool
    timeline: int
    end_lsn: str


@dataclass(frozen=True, slots=True)
class Reach:
    """From ``backup``, any instant in ``[backup.ended, until)`` can be restored."""

    backup: BaseBackup
    until: datetime | None  # None: nothing archived after the backup yet

    @property
    def usable(self) -> bool:
        return self.until is not None and self.until > self.backup.ended


@dataclass(frozen=True, slots=True)
class Window:
    """Everything restorable: the reach of every verified base backup."""

    reaches: tuple[Reach, ...]

    @property
    def start(self) -> datetime | None:
        usable = [r.backup.ended for r in self.reaches if r.usable]
        return min(usable) if usable else None

    @property
    def end(self) -> datetime | None:
        usable = [r.until for r in self.reaches if r.usable and r.until is not None]
        return max(usable) if usable else None

    def describe(self) -> str:
        if self.start is None or self.end is None:
            return "nothing yet (a base backup and WAL archived after it are needed)"
        return f"{_iso(self.start)} .. {_iso(self.end)}"

    def choose(self, target: datetime) -> BaseBackup:
        """The newest base backup that reaches ``target``; `OutsideWindow` names the window otherwise."""
        fits = [r.backup for r in self.reaches
                if r.usable and r.until is not None and r.backup.ended <= target < r.until]
        if fits:
            return max(fits, key=lambda b: b.ended)
        if self.start is None:
            raise OutsideWindow(f"nothing can be restored yet: {self.describe()}")
        if target < self.start:
            where = "before"
        elif self.end is not None and target >= self.end:
            where = "after"
        else:
            where = "in a gap of"
        raise OutsideWindow(f"{_iso(target)} is {where} the window you can restore to: {self.describe()}")


class OutsideWindow(ValueError):
    """A target no base backup and archived WAL reach; the message names the window."""


def window(backups: Sequence[BaseBackup], last_commit_after: dict[str, datetime | None]) -> Window:
    """The window from verified ``backups`` and, per backup name, the last archived commit it reaches."""
    return Window(tuple(
        Reach(b, last_commit_after.get(b.name)) for b in sorted(backups, key=lambda b: b.ended) if b.verified
    ))


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
