"""A value the command line cannot take is one line on stderr and exit 2 (not typer's usage box),
from the installed `paystream` entry point; help still prints help."""

from __future__ import annotations

import subprocess
import sys

import pytest

ENTRY = [sys.executable, "-c", "from paystream.cli import main; main()"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ENTRY, *args], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "COLUMNS": "80"})


@pytest.mark.parametrize(("args", "says"), [
    (["fraud", "simulate", "--days", "abc"], "paystream fraud simulate: Invalid value for '--days'"),
    (["bench", "--payments", "0"], "paystream bench: Invalid value for '--payments'"),
    (["bench", "--no-such-flag"], "paystream bench: No such option: --no-such-flag"),
    (["no-such-command"], "paystream: No such command 'no-such-command'"),
    (["up", "--scale", "billing=2", "--home", "/nonexistent/paystream-home"], "unknown service 'billing'"),
])
def test_a_usage_error_is_one_line_on_stderr_and_exit_2(args: list[str], says: str) -> None:
    done = run(*args)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], done.stderr
    assert "Traceback" not in done.stderr


def test_help_still_prints_the_help_and_exits_0() -> None:
    done = run("bench", "--help")
    assert done.returncode == 0 and "--payments" in done.stdout and done.stderr == ""


def test_a_bare_group_prints_its_help() -> None:
    done = run("fraud")
    assert done.returncode == 2
    assert "simulate" in done.stdout + done.stderr and "Traceback" not in done.stderr
