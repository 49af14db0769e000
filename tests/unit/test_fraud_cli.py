"""`paystream fraud simulate` and `fraud train`: files written, bad input one line on stderr and exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from paystream.cli import app
from paystream.fraud.model import load


def test_simulate_then_train_writes_data_and_a_loadable_model(tmp_path: Path) -> None:
    data = tmp_path / "data"
    simulated = CliRunner().invoke(app, ["fraud", "simulate", "--seed", "3", "--days", "45", "--users", "300",
                                         "--out", str(data)])
    assert simulated.exit_code == 0, simulated.output
    assert json.loads((data / "meta.json").read_text())["seed"] == 3
    trained = CliRunner().invoke(app, ["fraud", "train", "--data", str(data), "--seed", "3"])
    assert trained.exit_code == 0, trained.output
    assert "rules" in trained.output and "model" in trained.output
    assert load(data / "model.json").version.startswith("s3-")


@pytest.mark.parametrize(("args", "message"), [
    (["fraud", "simulate", "--days", "0"], "--days takes 1 to 3650"),
    (["fraud", "simulate", "--users", "5"], "--users takes 10"),
    (["fraud", "train", "--data", "/nonexistent/fraud-data"], "no simulated traffic in"),
])
def test_bad_input_is_one_line_on_stderr_and_exit_2(args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def test_an_out_path_that_is_a_file_is_refused(tmp_path: Path) -> None:
    taken = tmp_path / "file"
    taken.write_text("")
    result = CliRunner().invoke(app, ["fraud", "simulate", "--out", str(taken)])
    assert result.exit_code == 2 and "is not a directory" in result.stderr
