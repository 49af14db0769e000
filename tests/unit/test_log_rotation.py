"""A service's log file rotates by size, and what bypasses logging follows the current file."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

MAX_BYTES = 4096


def _run(log_file: Path, lines: int) -> None:
    # In a process of its own: the log takes over file descriptors 1 and 2.
    script = textwrap.dedent(f"""
        import logging, os, sys
        from pathlib import Path
        from paystream.platform.observability import configure_logging, get_logger
        configure_logging("tests", log_file=Path({str(log_file)!r}), max_bytes={MAX_BYTES}, backups=2)
        log = get_logger("tests")
        for n in range({lines}):
            log.info("line", n=n, padding="x" * 60)
        logging.getLogger("stdlib").warning("from the standard library")
        os.write(2, b"raw stderr after the last rotation\\n")
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)


def test_the_log_rotates_by_size_keeping_the_configured_number_of_old_files(tmp_path: Path) -> None:
    log_file = tmp_path / "logs" / "payments.log"
    _run(log_file, 400)  # ~40 kB: many rotations

    names = sorted(p.name for p in log_file.parent.iterdir())
    assert names == ["payments.log", "payments.log.1", "payments.log.2"]
    for path in log_file.parent.iterdir():
        assert path.stat().st_size < MAX_BYTES + 200, path.name  # at most one line past the limit
    numbers = []
    for name in ("payments.log.2", "payments.log.1", "payments.log"):
        for line in (log_file.parent / name).read_text().splitlines():
            if line.startswith("{") and json.loads(line)["msg"] == "line":
                numbers.append(json.loads(line)["n"])
    # The newest lines, in order, without a gap; the oldest were dropped with the oldest file.
    assert numbers == list(range(numbers[0], 400)) and numbers[0] > 0
    current = log_file.read_text()
    assert "from the standard library" in current
    assert "raw stderr after the last rotation" in current  # fd 2 follows the current file


def test_a_log_below_the_size_is_appended_to_and_not_rotated(tmp_path: Path) -> None:
    log_file = tmp_path / "ledger.log"
    _run(log_file, 5)
    _run(log_file, 5)  # a restart appends

    assert sorted(p.name for p in tmp_path.iterdir()) == ["ledger.log"]
    lines = [json.loads(line) for line in log_file.read_text().splitlines() if line.startswith("{")]
    assert [line["n"] for line in lines if line["msg"] == "line"] == [0, 1, 2, 3, 4] * 2
