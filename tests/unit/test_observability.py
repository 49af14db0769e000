"""Lines about what a transaction did are written once it commits (`log_on_commit` inside
`held_until_commit`), with the log context bound when they were logged; outside a held
block they are written at once."""

from __future__ import annotations

import pytest
import structlog
from structlog.testing import capture_logs

from paystream.platform.observability import bound, held_until_commit, log_on_commit

log = structlog.get_logger("tests.observability")


def test_a_held_line_is_written_when_the_block_ends_normally() -> None:
    with capture_logs() as lines:
        with held_until_commit():
            log_on_commit(log, "ledger_posted", transfer_id="trf_1")
            assert lines == []  # not before the commit
        assert [line["event"] for line in lines] == ["ledger_posted"]
    assert lines[0]["transfer_id"] == "trf_1"
    assert lines[0]["log_level"] == "info"


def test_a_held_line_is_dropped_when_the_block_raises() -> None:
    with capture_logs() as lines, pytest.raises(RuntimeError), held_until_commit():
        log_on_commit(log, "ledger_posted", transfer_id="trf_1")
        raise RuntimeError("the transaction rolled back")
    assert lines == []


def test_a_held_line_keeps_the_context_bound_when_it_was_logged() -> None:
    with capture_logs() as lines:
        with held_until_commit():
            with bound(payment_id="pay_1", correlation_id="corr_1"):
                log_on_commit(log, "payment_status", status="succeeded")
            log_on_commit(log, "payment_status", status="failed")
    assert [(line.get("payment_id"), line.get("correlation_id"), line["status"]) for line in lines] == [
        ("pay_1", "corr_1", "succeeded"),
        (None, None, "failed"),
    ]


def test_outside_a_held_block_a_line_is_written_at_once() -> None:
    with capture_logs() as lines:
        log_on_commit(log, "review_decided", approved=True)
        assert [line["event"] for line in lines] == ["review_decided"]


def test_nested_blocks_hold_their_own_lines() -> None:
    with capture_logs() as lines:
        with held_until_commit():
            log_on_commit(log, "outer")
            with pytest.raises(RuntimeError), held_until_commit():
                log_on_commit(log, "inner")
                raise RuntimeError("inner transaction rolled back")
            assert lines == []
        assert [line["event"] for line in lines] == ["outer"]
