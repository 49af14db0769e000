"""`paystream up --scale`: copies per service, and a clear line for each way it can be wrong."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from paystream.stack.scale import ScaleError, copy_names, parse_scale


def test_named_services_get_their_copies_and_the_rest_one() -> None:
    assert parse_scale("payments=3, fraud=2", partitions=8) == {
        "gateway": 1, "payments": 3, "fraud": 2, "ledger": 1, "notifications": 1,
    }
    assert parse_scale(None, partitions=8) == dict.fromkeys(
        ("gateway", "payments", "fraud", "ledger", "notifications"), 1
    )


def test_copies_are_named_after_their_service() -> None:
    assert copy_names("ledger", 3) == ["ledger", "ledger-2", "ledger-3"]


@pytest.mark.parametrize(("text", "says"), [
    ("billing=2", "unknown service 'billing'"),
    ("payments=0", "payments needs at least 1 copy, not 0"),
    ("fraud=-1", "fraud needs at least 1 copy, not -1"),
    ("ledger=two", "ledger='two' is not a whole number"),
    ("ledger", "SERVICE=COPIES"),
    ("ledger=9", "ledger=9 is more copies than the 8 partitions"),
])
def test_bad_scales_are_refused_with_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(ScaleError, match=says.replace("(", r"\(").replace(")", r"\)")):
        parse_scale(text, partitions=8)


def test_the_gateway_is_not_bound_by_partitions() -> None:
    assert parse_scale("gateway=12", partitions=8)["gateway"] == 12


@pytest.mark.parametrize("how", ["--scale", "env"])
def test_up_with_a_bad_scale_says_one_line_exits_2_and_starts_nothing(tmp_path: Path, how: str) -> None:
    home = tmp_path / "home"
    args = ["--scale", "notifications=99"] if how == "--scale" else []
    env = {"PAYSTREAM_SCALE": "notifications=99"} if how == "env" else {}
    done = subprocess.run(
        [sys.executable, "-m", "paystream", "up", "--home", str(home), *args],
        capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "COLUMNS": "80", **env},
    )
    assert done.returncode == 2
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert len(lines) == 1 and "notifications=99 is more copies than the 8 partitions" in lines[0], done.stderr
    assert "Traceback" not in done.stderr
    assert not home.exists()
