"""`paystream bench --fresh --floor` as a user runs it: a small real run on a stack of its own.
The floor (its two processes against the stack's PostgreSQL, NATS JetStream and the bench's
webhook receiver) and then the pipeline both complete every payment, the JSON carries the
floor's rate and the pipeline's share of it, and no floor process is left running after.
Short on purpose: the figures themselves are docs/benchmarks.md's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.e2e

PAYMENTS = 200
RUN_TIMEOUT = 240


def _floor_processes() -> set[int]:
    found = set()
    for process in psutil.process_iter(["cmdline"]):
        if "paystream.tools.floor" in (process.info["cmdline"] or []):
            found.add(process.pid)
    return found


def test_floor_and_pipeline_both_complete_and_the_share_is_reported(tmp_path: Path) -> None:
    before = _floor_processes()
    out = tmp_path / "floor.json"
    result = subprocess.run(
        [sys.executable, "-m", "paystream", "bench", "--fresh", "--floor", "--payments", str(PAYMENTS),
         "--concurrency", "8", "--json", str(out)],
        capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    figures = json.loads(out.read_text())

    floor = figures["floor"]
    assert floor["sent"] == floor["accepted"] == floor["terminal"] == PAYMENTS
    assert floor["statuses"] == {"succeeded": PAYMENTS} and floor["learned_by"] == {"webhook": PAYMENTS}
    assert figures["terminal"] == PAYMENTS and figures["statuses"] == {"succeeded": PAYMENTS}
    assert figures["invariants_ok"] is True
    assert figures["floor_accepted_per_s"] > 0
    assert figures["pipeline_accepted_per_s"] == figures["accepted_per_second"]
    share = figures["share_percent"]
    assert abs(share - 100 * figures["pipeline_accepted_per_s"] / figures["floor_accepted_per_s"]) < 0.5
    assert 0 < share < 1000
    assert "pipeline's share of the floor" in result.stdout
    assert _floor_processes() <= before, "a floor process is still running"
