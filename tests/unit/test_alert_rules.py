"""docs/alerts.yml is valid Prometheus rules, and every rule fires when it should and only
then: `promtool test rules` over tests/alerts/alerts_test.yml. Needs promtool (Debian:
the ``prometheus`` package); without it the test fails and says so in one line."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "docs" / "alerts.yml"
RULE_TESTS = ROOT / "tests" / "alerts" / "alerts_test.yml"
RULE_COUNT = 9


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found (Debian: apt-get install prometheus)", pytrace=False)
    return subprocess.run(
        [path, *args], capture_output=True, text=True, timeout=60, check=False, cwd=ROOT
    )


def test_the_alert_rules_are_valid() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {RULE_COUNT} rules found" in result.stdout


def test_every_alert_rule_passes_its_promtool_cases() -> None:
    result = promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_rule_has_promtool_cases() -> None:
    alerts = {line.split(":", 1)[1].strip() for line in RULES.read_text().splitlines()
              if line.strip().startswith("- alert:")}
    tested = {line.split(":", 1)[1].strip() for line in RULE_TESTS.read_text().splitlines()
              if line.strip().startswith("alertname:")}
    assert len(alerts) == RULE_COUNT
    assert alerts - tested == set()
