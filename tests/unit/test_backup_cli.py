"""The WAL archive command (the real shell script `up` writes) and the backup commands' bad input."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from paystream.cli import app
from paystream.stack.backup import BackupPlace


@pytest.fixture
def place(tmp_path: Path) -> BackupPlace:
    home = tmp_path / "home"
    home.mkdir()
    place = BackupPlace(home=home, root=home / "backups", user=None)
    place.prepare()
    return place


def _archive(place: BackupPlace, source: Path, name: str) -> subprocess.CompletedProcess[str]:
    # As PostgreSQL runs it: archive_command through /bin/sh, from the data directory.
    command = place.archive_settings()[1][1].replace("%p", str(source)).replace("%f", name)
    return subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True, check=False,
                          cwd=source.parent)


def test_a_segment_is_archived_whole_and_nothing_temporary_is_left(place: BackupPlace, tmp_path: Path) -> None:
    segment = tmp_path / "000000010000000000000001"
    segment.write_bytes(os.urandom(1 << 20))
    result = _archive(place, segment, segment.name)
    assert result.returncode == 0, result.stderr
    assert (place.wal / segment.name).read_bytes() == segment.read_bytes()
    assert sorted(p.name for p in place.wal.iterdir()) == [segment.name]


def test_archiving_the_same_segment_again_succeeds(place: BackupPlace, tmp_path: Path) -> None:
    segment = tmp_path / "000000010000000000000001"
    segment.write_bytes(b"wal" * 1000)
    assert _archive(place, segment, segment.name).returncode == 0
    assert _archive(place, segment, segment.name).returncode == 0  # as after a crash before PostgreSQL noted it


def test_a_different_file_under_an_archived_name_is_refused_and_the_archive_kept(
    place: BackupPlace, tmp_path: Path
) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.write_bytes(b"first" * 100)
    second.write_bytes(b"other" * 100)
    name = "000000010000000000000002"
    assert _archive(place, first, name).returncode == 0
    result = _archive(place, second, name)
    assert result.returncode == 1  # below 128: PostgreSQL logs and retries, its archiver stays up
    assert "not overwriting" in result.stderr
    assert (place.wal / name).read_bytes() == first.read_bytes()
    assert sorted(p.name for p in place.wal.iterdir()) == [name]


def test_a_copy_that_fails_leaves_no_file_under_the_name(place: BackupPlace, tmp_path: Path) -> None:
    result = _archive(place, tmp_path / "missing", "000000010000000000000003")
    assert result.returncode != 0
    assert list(place.wal.iterdir()) == []


def _home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    (home / "secrets.json").write_text(json.dumps({"postgres_password": "x"}))
    return home


@pytest.mark.parametrize(("args", "says"), [
    (["restore", "--to", "2026-12-01T10:00:00", "--into", "{tmp}/r"], "has no time zone"),
    (["restore", "--to", "last tuesday", "--into", "{tmp}/r"], "is not a time"),
    (["restore", "--to", "2026-12-01T10:00:00Z", "--into", "{tmp}/r", "--home", "{tmp}/nowhere"],
     "no paystream home at"),
    (["restore", "--to", "2026-12-01T10:00:00Z", "--into", "{tmp}/r", "--home", "{home}"], "no base backup of"),
    (["restore", "--to", "2026-12-01T10:00:00Z", "--into", "{tmp}/full", "--home", "{home}"],
     "is not an empty directory"),
    (["backup", "--home", "{tmp}/nowhere"], "no paystream home at"),
    (["backup", "--home", "{home}"], "no running stack at"),
    (["backup", "list", "--home", "{tmp}/nowhere"], "no paystream home at"),
])
def test_bad_input_is_one_line_on_stderr_and_exit_2_with_nothing_restored(
    tmp_path: Path, args: list[str], says: str
) -> None:
    home = _home(tmp_path)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep-me").write_text("x")
    argv = [a.format(tmp=tmp_path, home=home) for a in args]
    result = CliRunner().invoke(app, argv, env={"PAYSTREAM_SERVER_ROOT": str(tmp_path / "server-root")})
    assert result.exit_code == 2, result.output
    assert says in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "r").exists()
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep-me"]
