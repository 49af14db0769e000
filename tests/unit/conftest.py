"""Unit-tier settings: Hypothesis keeps no example database on disk and has no deadline;
``refused`` runs a bad command line and returns its one line of refusal.

The unit tier does no I/O, so Hypothesis must not write ``.hypothesis/`` into the
working tree; and wall-clock deadlines make property tests flaky on a loaded CI box.
Set ``HYPOTHESIS_PROFILE`` to pick another registered profile.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import settings
from typer.testing import CliRunner

from paystream.cli import app

settings.register_profile("unit", database=None, deadline=None)
settings.register_profile("unit-thorough", database=None, deadline=None, max_examples=1000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "unit"))


@pytest.fixture
def refused(tmp_path: Path) -> Callable[[list[str]], str]:
    """``refused(["bench", "--rate", "0"])`` runs ``paystream ARGS --home TMP``, checks that it
    exits 2 with one line and no traceback, and returns that line."""

    def run(args: list[str]) -> str:
        result = CliRunner().invoke(app, [*args, "--home", str(tmp_path)])
        assert result.exit_code == 2, result.output
        assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and "Traceback" not in result.output, result.output
        return lines[0]

    return run
