"""How a game day is judged: the money checks, the figures of the run, and the verdict's checks."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import asyncpg

from paystream.ledger.verify import verify_database
from paystream.platform.checks import Check
from paystream.tools.gameday_stack import Sampler, StackHandle
from paystream.tools.invariants import check_invariants
from paystream.tools.load import LoadEngine
from paystream.tools.load_results import TERMINAL, LoadResult, Tracked, percentile
from paystream.tools.receiver import PaymentUpdate

LAG_RECOVERY_SECONDS = 60.0  # lag must be back to zero this long after the fault's end
STUCK_AFTER_SECONDS = 3.0  # a payment in processing this long counts as stuck


# -- judging ----------------------------------------------------------------------------------------


async def ledger_checks(stack: StackHandle, result: LoadResult) -> list[Check]:
    """Each accepted payment ended once or waits in review with its funds held; the invariants;
    ledger verify."""
    ids = [t.payment_id for t in result.tracked if t.payment_id]
    conn = await asyncpg.connect(stack.info.postgres_url, timeout=10)
    try:
        statuses = Counter({r["status"]: r["n"] for r in await conn.fetch(
            "SELECT status, count(*) AS n FROM payments.payments WHERE id = ANY($1::text[]) GROUP BY status",
            ids)})
        unheld = await conn.fetchval(
            """
            SELECT count(*) FROM payments.payments p
            WHERE p.id = ANY($1::text[]) AND p.status = 'requires_review' AND p.kind = 'transfer'
              AND NOT EXISTS (SELECT 1 FROM ledger.transfers t JOIN ledger.holds h ON h.transfer_id = t.id
                              WHERE t.tenant_id = p.tenant_id AND t.external_ref = p.id AND h.status = 'pending')
            """, ids)
    finally:
        await conn.close()
    summary = ", ".join(f"{k} {v}" for k, v in sorted(statuses.items()))
    missing = len(ids) - statuses.total()
    stuck = statuses["processing"]
    checks = [
        Check("every accepted payment ended once, or waits in review", stuck == 0 and missing == 0,
              f"{len(ids)} accepted: {summary}" + (f"; {missing} not found" if missing else "")),
        Check("funds held for every payment in review", unheld == 0,
              f"{statuses['requires_review']} in review" + (f", {unheld} with no hold" if unheld else "")),
    ]
    invariants = await check_invariants(stack.info.postgres_url, settled=False)
    checks.extend(invariants.checks)
    verified = await verify_database(stack.info.postgres_url)
    checks.append(Check("ledger verify", verified.ok,
                        "; ".join(f"{c.name}: {c.detail}" for c in verified.checks if not c.ok) or "green"))
    return checks


def per_second(result: LoadResult, origin: float, until: float) -> list[dict[str, Any]]:
    """Offered / accepted / completed per whole second, with that second's API and e2e p99."""
    count = math.ceil(until) + 1
    offered, accepted, completed = [0] * count, [0] * count, [0] * count
    api: list[list[float]] = [[] for _ in range(count)]
    e2e: list[list[float]] = [[] for _ in range(count)]

    def second(at: float) -> int | None:
        index = int(at - origin)
        return index if 0 <= index < count else None

    for t in result.tracked:
        if (i := second(t.sent_at)) is not None:
            offered[i] += 1
        if t.answered_at is not None and (i := second(t.answered_at)) is not None:
            accepted[i] += 1
            api[i].append(t.answered_at - t.sent_at)
        if t.terminal_at is not None and (i := second(t.terminal_at)) is not None:
            completed[i] += 1
            e2e[i].append(t.terminal_at - t.sent_at)
    return [{"t": i, "offered": offered[i], "accepted": accepted[i], "completed": completed[i],
             "api_p99_ms": ms(percentile(api[i], 99)), "e2e_p99_ms": ms(percentile(e2e[i], 99))}
            for i in range(count)]


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def stuck_in_processing(tracked: Sequence[Tracked], origin: float, start: float, end: float) -> int:
    """The most payments, at any whole second of [start, end], that had been in processing for
    more than STUCK_AFTER_SECONDS (neither terminal nor in review)."""
    most = 0
    for second in range(int(start), int(end) + 1):
        now = origin + second
        count = 0
        for t in tracked:
            if t.answered_at is None or t.sent_at > now - STUCK_AFTER_SECONDS:
                continue
            left = min((x for x in (t.terminal_at, t.review_at) if x is not None), default=None)
            if left is None or left > now:
                count += 1
        most = max(most, count)
    return most


def run_figures(result: LoadResult, engine: LoadEngine, sampler: Sampler, window: tuple[float, float],
                origin: float) -> dict[str, Any]:
    start, end = window
    lag = sampler.lag_by_tick()
    back = next((at for at, value in lag if at >= end and value == 0), None)

    def e2e(lo: float, hi: float) -> float | None:
        return percentile([t.terminal_at - t.sent_at for t in result.tracked if t.terminal_at is not None
                           and lo <= t.sent_at - origin < hi], 99)

    fives = Counter({code: n for code, n in engine.answers.items() if code >= 500})
    return {
        "offered": len(result.tracked),
        "accepted": len(result.accepted),
        "refused": len(result.tracked) - len(result.accepted),
        "refusals": dict(result.rejections()),
        "http_5xx": {str(code): n for code, n in sorted(fives.items())},
        "peak_lag": max((value for _, value in lag), default=0.0),
        "lag_zero_after_fault_s": None if back is None else round(back - end, 1),
        "lag_at_end": sampler.lag_at_end(),
        "sent_to_review_by_deadline": sampler.increase("paystream_screening_deadline_total"),
        "stuck_in_processing_max": stuck_in_processing(result.tracked, origin, start, end),
        "e2e_p99_before_ms": ms(e2e(0, start)),
        "e2e_p99_during_ms": ms(e2e(start, end)),
        "e2e_p99_after_ms": ms(e2e(end, math.inf)),
        "api_p99_ms": ms(percentile([t.answered_at - t.sent_at for t in result.tracked
                                      if t.answered_at is not None], 99)),
        "statuses": {f"{s}/{c}" if c else s: n for (s, c), n in sorted(result.outcomes().items())},
        "learned_by": dict(result.learned_by()),
    }


class Announcements:
    """Which payments' outcomes reached the receiver as a signed webhook (late ones too: the
    engine may have learned an outcome by polling first)."""

    def __init__(self) -> None:
        self.ended: set[str] = set()

        self._news = asyncio.Event()

    def __call__(self, update: PaymentUpdate) -> None:
        if update.status in TERMINAL:
            self.ended.add(update.payment_id)
            self._news.set()

    def missing(self, result: LoadResult) -> list[str]:
        return [t.payment_id for t in result.settled if t.payment_id and t.payment_id not in self.ended]

    async def wait(self, result: LoadResult, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.missing(result) and time.monotonic() < deadline:
            self._news.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._news.wait(), timeout=1.0)

    def check(self, result: LoadResult) -> Check:
        missing = self.missing(result)
        return Check("every outcome announced by webhook", not missing,
                     f"{len(result.settled) - len(missing)} of {len(result.settled)} terminal payments")


def api_check(figures: dict[str, Any]) -> Check:
    bad = {code: n for code, n in figures["http_5xx"].items() if code != "503"}
    detail = ", ".join(f"{n}x {code}" for code, n in figures["http_5xx"].items()) or "no 5xx"
    return Check("the API answered no 5xx but 503", not bad, detail)


def lag_check(figures: dict[str, Any]) -> Check:
    back = figures["lag_zero_after_fault_s"]
    ok = back is not None and back <= LAG_RECOVERY_SECONDS
    left = ", ".join(f"{consumer} {value:.0f}" for consumer, value in figures["lag_at_end"].items())
    return Check(f"lag back to 0 within {LAG_RECOVERY_SECONDS:.0f} s of the fault's end", ok,
                 f"after {back} s" if back is not None
                 else f"lag never returned to 0 (at the end: {left or 'none reported'})")
