"""`paystream bench --rate` as a user runs it, against the shared stack: open loop for a few
seconds, from the admin client and from signed-in wallet users on their own connections; the
JSON figures say every accepted payment ended, how many were sent late, and that the
invariants hold. Short on purpose: the figures themselves are docs/benchmarks.md's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from .stack import UpProcess

RUN_TIMEOUT = 240


def bench(stack: UpProcess, out: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    result = subprocess.run(
        [sys.executable, "-m", "paystream", "bench", "--home", str(stack.home), "--json", str(out), *args],
        capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    return result, json.loads(out.read_text())


def _all_ended(figures: dict[str, Any], payments: int) -> None:
    assert figures["sent"] == figures["accepted"] == payments
    assert figures["terminal"] == payments and figures["not_terminal"] == 0
    assert figures["statuses"] == {"succeeded": payments}
    assert figures["invariants_ok"] is True
    assert figures["api_latency_seconds"]["p99"] is not None
    assert figures["end_to_end_seconds"]["p99"] is not None


def _schedule(result: subprocess.CompletedProcess[str], figures: dict[str, Any], rate: float, payments: int) -> None:
    schedule = figures["schedule"]
    assert schedule["rate"] == rate and schedule["scheduled"] == payments
    assert isinstance(schedule["late"], int) and 0 <= schedule["late"] <= payments
    assert schedule["late_threshold_seconds"] == 0.01
    said = "the client kept to the schedule" if schedule["kept_up"] else "the client could not keep up"
    assert said in result.stdout


def test_bench_at_a_rate_ends_every_payment_and_counts_late_sends(stack: UpProcess, tmp_path: Path) -> None:
    result, figures = bench(stack, tmp_path / "rate.json", "--rate", "20", "--duration", "5", "--accounts", "40")
    _all_ended(figures, 100)
    _schedule(result, figures, 20.0, 100)
    assert figures["max_in_flight"] == 1024 and "users" not in figures


def test_bench_from_signed_in_users_on_their_own_connections(stack: UpProcess, tmp_path: Path) -> None:
    result, figures = bench(stack, tmp_path / "users.json", "--users", "20", "--rate", "10", "--duration", "5")
    _all_ended(figures, 50)
    _schedule(result, figures, 10.0, 50)
    assert figures["users"]["count"] == 20 and figures["accounts"] == 20
    assert figures["connection_errors"] == 0 and figures["users"]["setup_connection_errors"] == 0
    assert figures["users"]["setup_seconds"] > 0
