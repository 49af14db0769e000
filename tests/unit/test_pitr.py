"""The restore window and its parsing (`paystream.stack.pitr`): pure, no servers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from paystream.stack.pitr import (
    BadTarget,
    BaseBackup,
    OutsideWindow,
    Segment,
    commit_times,
    contiguous_from,
    parse_every,
    parse_target,
    window,
)

T0 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)


def _backup(name: str, ended: datetime, *, verified: bool = True) -> BaseBackup:
    return BaseBackup(name=name, started=ended - timedelta(seconds=5), ended=ended, size=1,
                      verified=verified, timeline=1, end_lsn="0/2000100")


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-12-01T10:00:00Z", T0),
    ("2026-12-01T11:00:00+01:00", T0),
    ("2026-12-01 10:00:00.250Z", T0 + timedelta(milliseconds=250)),
    (" 2026-12-01T05:00:00-05:00 ", T0),
])
def test_a_target_with_a_zone_is_read_as_utc(text: str, expected: datetime) -> None:
    assert parse_target(text) == expected
    assert parse_target(text).tzinfo == UTC


@pytest.mark.parametrize(("text", "says"), [
    ("2026-12-01T10:00:00", "has no time zone"),
    ("yesterday", "is not a time"),
    ("1700000000", "is not a time"),
    ("2026-12-01", "is not a time"),
    ("2026-13-01T10:00:00Z", "is not a valid time"),
    ("2026-12-01T10:00:00+25:00", "is not a valid time"),
])
def test_a_target_without_a_zone_or_not_a_time_is_refused(text: str, says: str) -> None:
    with pytest.raises(BadTarget, match=says):
        parse_target(text)


@pytest.mark.parametrize(("text", "seconds"), [("4h", 4 * 3600), ("30m", 1800), ("90s", 90), ("1d", 86400),
                                               ("600", 600), ("1.5h", 5400)])
def test_the_schedule_reads_units(text: str, seconds: int) -> None:
    assert parse_every(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["off", "0", "never", ""])
def test_the_schedule_can_be_off(text: str) -> None:
    assert parse_every(text) is None


@pytest.mark.parametrize("text", ["often", "4 hours", "-1h", "10s"])
def test_a_bad_or_too_frequent_schedule_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="PAYSTREAM_BACKUP_EVERY"):
        parse_every(text)


def test_segment_names_round_trip_and_follow_lsns() -> None:
    segment = Segment.parse("0000000100000002000000FF")
    assert segment is not None
    assert (segment.timeline, segment.number) == (1, 2 * 256 + 255)
    assert segment.name == "0000000100000002000000FF"
    assert Segment(1, segment.number + 1).name == "000000010000000300000000"
    assert Segment.of_lsn(1, "2/FF000028") == segment
    assert Segment.of_lsn(1, "0/2007D78").name == "000000010000000000000002"
    for other in ("00000002.history", "000000010000000000000002.00000028.backup", ".x.partial"):
        assert Segment.parse(other) is None


def test_segments_of_64_mib_count_64_per_log_id() -> None:
    segment = Segment.parse("000000010000000100000003", 64 << 20)
    assert segment is not None and segment.number == 64 + 3
    assert segment.name == "000000010000000100000003"


def test_the_archive_reaches_up_to_its_first_gap() -> None:
    archived = [Segment(1, n) for n in (3, 4, 5, 7, 8)] + [Segment(2, 6)]
    assert contiguous_from(Segment(1, 4), archived) == Segment(1, 5)
    assert contiguous_from(Segment(1, 7), archived) == Segment(1, 8)
    assert contiguous_from(Segment(1, 6), archived) is None


def test_commit_and_abort_times_are_read_from_waldump_lines() -> None:
    output = (
        "rmgr: Transaction len (rec/tot):     34/    34, tx:        814, lsn: 0/02007998, prev 0/02007948, "
        "desc: COMMIT 2026-12-07 12:33:41.239120 UTC\n"
        "rmgr: Transaction len (rec/tot):     34/    34, tx:        815, lsn: 0/02007CC8, prev 0/02007C78, "
        "desc: ABORT 2026-12-07 12:33:42 UTC\n"
        "pg_waldump: error: error in WAL record at 0/2007D28: invalid record length\n"
    )
    assert commit_times(output) == [datetime(2026, 12, 7, 12, 33, 41, 239120, tzinfo=UTC),
                                    datetime(2026, 12, 7, 12, 33, 42, tzinfo=UTC)]


def test_a_target_is_restored_from_the_newest_backup_that_reaches_it() -> None:
    old, new = _backup("old", T0), _backup("new", T0 + timedelta(hours=4))
    w = window([new, old], {"old": T0 + timedelta(hours=5), "new": T0 + timedelta(hours=5)})
    assert w.start == T0 and w.end == T0 + timedelta(hours=5)
    assert w.choose(T0).name == "old"
    assert w.choose(T0 + timedelta(hours=3)).name == "old"
    assert w.choose(T0 + timedelta(hours=4)).name == "new"


def test_a_target_outside_the_window_names_the_window() -> None:
    w = window([_backup("only", T0)], {"only": T0 + timedelta(hours=1)})
    with pytest.raises(OutsideWindow, match=r"is before the window you can restore to: "
                                            r"2026-12-01T10:00:00.000Z \.\. 2026-12-01T11:00:00.000Z"):
        w.choose(T0 - timedelta(seconds=1))
    with pytest.raises(OutsideWindow, match="is after the window"):
        w.choose(T0 + timedelta(hours=1))  # the last commit itself: recovery needs one after the target


def test_a_gap_in_the_archive_splits_the_window() -> None:
    old, new = _backup("old", T0), _backup("new", T0 + timedelta(hours=4))
    w = window([old, new], {"old": T0 + timedelta(hours=1), "new": T0 + timedelta(hours=5)})
    with pytest.raises(OutsideWindow, match="in a gap of the window"):
        w.choose(T0 + timedelta(hours=2))
    assert w.choose(T0 + timedelta(minutes=30)).name == "old"


def test_unverified_backups_and_backups_nothing_was_archived_after_are_not_offered() -> None:
    w = window([_backup("bad", T0, verified=False), _backup("fresh", T0 + timedelta(hours=1))],
               {"bad": T0 + timedelta(hours=2), "fresh": None})
    assert w.start is None
    assert "nothing yet" in w.describe()
    with pytest.raises(OutsideWindow, match="nothing can be restored yet"):
        w.choose(T0 + timedelta(minutes=90))
