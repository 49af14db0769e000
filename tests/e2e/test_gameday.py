"""`paystream gameday` as a user runs it: each scenario on a stack of its own (``--fresh``),
judged by its own verdict and report, and its bad input refused in one line.

The fraud-slow pair is seed 001 in small: fraud's decisions take 4 s for the middle third of
a minute at 30 payments/s. With the screening deadline the run passes and almost nothing
waits in processing; the same run with the deadline off shows the payments stuck, which is
what proves the deadline is what saves them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .stack import UpProcess

RUN_TIMEOUT = 600
Run = tuple[subprocess.CompletedProcess[str], dict[str, Any], str]


def gameday(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "paystream", "gameday", *args],
        capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False, cwd=cwd,
    )


def report_of(directory: Path) -> tuple[dict[str, Any], str]:
    """The JSON and HTML a run wrote to its --report directory (exactly one of each)."""
    data = list(directory.glob("gameday-*.json"))
    pages = list(directory.glob("gameday-*.html"))
    assert len(data) == 1 and len(pages) == 1, sorted(p.name for p in directory.iterdir())
    return json.loads(data[0].read_text()), pages[0].read_text()


def verdict_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stdout.splitlines() if line.startswith("gameday ")]
    assert lines, result.stdout[-3000:] + result.stderr[-3000:]
    return lines[-1]


@pytest.fixture(scope="module")
def fraud_slow(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    runs = {}
    for name, extra in (("deadline", []), ("no-deadline", ["--screening-deadline", "0"])):
        out = tmp_path_factory.mktemp(f"gameday-{name}")
        result = gameday("fraud-slow", "--fresh", "--minutes", "1", "--rate", "30",
                         "--report", str(out), *extra)
        recording, page = report_of(out)
        runs[name] = (result, recording, page)
    return runs


def test_fraud_slow_passes_with_the_deadline_and_writes_its_report(fraud_slow: Any) -> None:
    result, recording, page = fraud_slow["deadline"]
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert verdict_line(result) == "gameday fraud-slow: PASS"
    figures = recording["figures"]
    assert recording["verdict"]["ok"] is True
    assert all(check["ok"] for check in recording["verdict"]["checks"])
    assert figures["offered"] == 1800 and figures["accepted"] == 1800
    assert figures["sent_to_review_by_deadline"] > 100  # 20 s of 4-s decisions at 30/s
    assert figures["lag_zero_after_fault_s"] is not None and figures["lag_zero_after_fault_s"] <= 60
    assert figures["peak_lag"] > 0
    assert [e for e in recording["events"] if "4000 ms" in e["what"]]
    assert len(recording["seconds"]) >= 60
    # The page stands alone: no script, nothing fetched from the network.
    assert "<script" not in page.lower() and "http://" not in page and "https://" not in page
    assert "gameday fraud-slow: PASS" in page


def test_without_the_deadline_the_same_slowdown_leaves_payments_stuck(fraud_slow: Any) -> None:
    _, with_deadline, _ = fraud_slow["deadline"]
    result, without, _ = fraud_slow["no-deadline"]
    assert without["params"]["screening_deadline_s"] is None
    assert without["figures"]["sent_to_review_by_deadline"] == 0
    stuck_with = with_deadline["figures"]["stuck_in_processing_max"]
    stuck_without = without["figures"]["stuck_in_processing_max"]
    print(f"most payments in processing > 3 s during the slowdown: {stuck_with} with the "
          f"deadline, {stuck_without} without; verdict without: {verdict_line(result)}")
    # With the deadline, nothing waits much beyond its 2 s (a sweep and a busy machine apart).
    assert stuck_with < 30
    assert stuck_without > 60 and stuck_without > 4 * stuck_with


def test_postgres_fast_shutdown_and_crash_are_survived_with_503s_and_no_500(tmp_path: Path) -> None:
    result = gameday("postgres-restart", "--fresh", "--minutes", "1", "--rate", "20",
                     "--report", str(tmp_path))
    recording, _ = report_of(tmp_path)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert verdict_line(result) == "gameday postgres-restart: PASS"
    events = [e["what"] for e in recording["events"]]
    assert any("fast shutdown" in e for e in events) and any("SIGKILL of the postmaster" in e for e in events)
    figures = recording["figures"]
    assert set(figures["http_5xx"]) <= {"503"}
    assert figures["http_5xx"].get("503", 0) > 0  # the database was away, and the API said so


@pytest.mark.parametrize(("args", "says"), [
    (["no-such-scenario", "--fresh"], "unknown scenario 'no-such-scenario'"),
    (["kill", "--fresh", "--scale", "nobody=2"], "unknown service 'nobody'"),
    (["kill", "--fresh", "--rate", "0"], "--rate must be a positive number"),
    (["fraud-slow", "--screening-deadline", "0"], "--screening-deadline sets up a stack: it needs --fresh"),
    (["kill", "--home", "/nonexistent/paystream-home"], "no running stack at /nonexistent/paystream-home"),
])
def test_bad_input_is_one_line_and_exit_2(args: list[str], says: str, tmp_path: Path) -> None:
    result = gameday(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    output = (result.stdout + result.stderr).strip()
    assert len(output.splitlines()) == 1 and says in output, output
    assert "Traceback" not in output
    assert not (tmp_path / "gameday").exists()  # nothing started, nothing written


def test_nats_node_on_a_single_node_stack_is_refused(stack: UpProcess) -> None:
    result = gameday("nats-node", "--home", str(stack.home))
    assert result.returncode == 2, result.stdout + result.stderr
    output = (result.stdout + result.stderr).strip()
    assert len(output.splitlines()) == 1 and "nats-node needs a NATS cluster" in output, output
    assert not (stack.home / "gameday").exists()


@pytest.mark.parametrize(("scenario", "event"), [
    ("kill", "SIGKILL "),
    ("redis-down", "redis: stopped"),
    ("nats-node", "SIGKILL NATS node"),
])
def test_each_other_scenario_passes_its_verdict(scenario: str, event: str, tmp_path: Path) -> None:
    # 45 s at 20/s: a 15-s fault (three kills, Redis or one NATS node down) and its recovery.
    result = gameday(scenario, "--fresh", "--minutes", "0.75", "--rate", "20", "--kill-every", "5",
                     "--report", str(tmp_path))
    recording, page = report_of(tmp_path)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert verdict_line(result) == f"gameday {scenario}: PASS"
    assert [e for e in recording["events"] if e["what"].startswith(event)], recording["events"]
    assert recording["figures"]["accepted"] > 0.9 * recording["figures"]["offered"]
    if scenario == "nats-node":
        assert recording["params"]["nats_nodes"] == 3
    assert f"gameday {scenario}: PASS" in page
