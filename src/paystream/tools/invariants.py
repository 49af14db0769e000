"""The money invariants of ARCHITECTURE.md §2, checked from the database alone.

Read-only, across the ledger's and payments' schemas (an operator's view, so it uses
the cluster's admin URL from ``stack.json``):

* every posted transfer's entries sum to zero per currency, with at least two legs, and
  holds (with the voids and expiries that close them) have none;
* every account's running totals equal the sum of its entries;
* the sum of all balances is zero per currency (money is only moved, never made);
* no account is below its lower limit (zero when it forbids overdraft);
* every accepted payment is in exactly one terminal state (when ``settled`` is asked);
* the ledger agrees with payments: a succeeded payment was posted exactly once, for its
  amount (in one step or by posting its review hold), a failed or declined one never was,
  and (when ``settled``) no finished payment still holds funds;
* nothing applied twice: one posting per payment, one delivery per (endpoint, event),
  one terminal timeline entry per payment.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import asyncpg

from paystream.platform.checks import Check, CheckReport


@dataclass
class InvariantReport(CheckReport):
    title: ClassVar[str] = "Invariants"

    def add(self, name: str, bad: int, detail_ok: str, detail_bad: str) -> None:
        self.checks.append(Check(name, bad == 0, detail_ok if bad == 0 else detail_bad))


async def check_invariants(postgres_url: str, *, settled: bool = True) -> InvariantReport:
    """Run every check. With ``settled``, payments still processing count as a failure."""
    report = InvariantReport()
    conn = await asyncpg.connect(postgres_url, timeout=10)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            await _ledger_checks(conn, report)
            await _payment_checks(conn, report, settled=settled)
            await _duplicate_checks(conn, report)
    finally:
        await conn.close()
    return report


# The transfer that posted each payment: in one step, or the post of its review hold (which
# carries the payment's id too). The second half of a held exchange (ref "<payment>:fx") and
# transfers made directly through /v1/transfers (kind 'ledger') are not payments' postings.
_POSTINGS = """
    SELECT t.tenant_id, t.external_ref AS ref, t.id, t.amount, t.currency FROM ledger.transfers t
    WHERE t.phase IN ('posted', 'post_pending') AND t.kind <> 'ledger'
      AND t.external_ref NOT LIKE '%:fx'
"""


async def _ledger_checks(conn: asyncpg.Connection, report: InvariantReport) -> None:
    transfers = await conn.fetchval("SELECT count(*) FROM ledger.transfers")
    unbalanced = await conn.fetchval(
        """
        SELECT count(*) FROM (
            SELECT t.id FROM ledger.transfers t LEFT JOIN ledger.entries e ON e.transfer_id = t.id
            GROUP BY t.id, t.phase
            HAVING (t.phase IN ('posted', 'post_pending') AND count(e.id) < 2)
                OR (t.phase NOT IN ('posted', 'post_pending') AND count(e.id) > 0)
        ) bad
        """
    ) + await conn.fetchval(
        """
        SELECT count(*) FROM (
            SELECT transfer_id FROM ledger.entries GROUP BY transfer_id, currency
            HAVING sum(CASE direction WHEN 'debit' THEN amount ELSE -amount END) <> 0
        ) bad
        """
    )
    report.add("transfers sum to zero", unbalanced,
               f"{transfers} transfers, each balanced", f"{unbalanced} transfers do not balance")
    mismatched = await conn.fetchval(
        """
        SELECT count(*) FROM ledger.account_totals a
        LEFT JOIN (
            SELECT account_id,
                   sum(amount) FILTER (WHERE direction = 'debit') AS debits,
                   sum(amount) FILTER (WHERE direction = 'credit') AS credits
            FROM ledger.entries GROUP BY account_id
        ) s ON s.account_id = a.id
        WHERE a.debits_posted <> coalesce(s.debits, 0) OR a.credits_posted <> coalesce(s.credits, 0)
        """
    )
    accounts = await conn.fetchval("SELECT count(*) FROM ledger.account_totals")
    report.add("balances equal their entries", mismatched,
               f"{accounts} accounts match their entries", f"{mismatched} accounts differ from their entries")
    rows = await conn.fetch(
        "SELECT currency, sum(credits_posted - debits_posted) AS net, "
        "sum(credits_pending - debits_pending) AS held, "
        "sum(credits_posted) AS moved FROM ledger.account_totals GROUP BY currency ORDER BY currency"
    )
    off = [r for r in rows if r["net"] != 0 or r["held"] != 0]
    report.add("total balance conserved", len(off),
               ", ".join(f"{r['currency']}: net 0 over {r['moved']} moved" for r in rows) or "no accounts",
               ", ".join(f"{r['currency']} nets to {r['net']} posted, {r['held']} pending" for r in off))
    overdrawn = await conn.fetchval(
        """
        SELECT count(*) FROM ledger.account_totals WHERE coalesce(lower_limit, 0) > 0 OR (
            (NOT allow_overdraft OR lower_limit IS NOT NULL) AND (
            (normal_balance = 'credit' AND credits_posted - debits_posted - debits_pending
                < coalesce(lower_limit, 0))
            OR (normal_balance = 'debit' AND debits_posted - credits_posted - credits_pending
                < coalesce(lower_limit, 0))))
        """
    )
    report.add("no forbidden overdraft", overdrawn, "none below its lower limit",
               f"{overdrawn} accounts overdrawn")


async def _payment_checks(conn: asyncpg.Connection, report: InvariantReport, *, settled: bool) -> None:
    counts = {r["status"]: r["n"] for r in await conn.fetch(
        "SELECT status, count(*) AS n FROM payments.payments GROUP BY status")}
    total = sum(counts.values())
    open_ = counts.get("processing", 0) + counts.get("requires_review", 0)
    summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "no payments"
    if settled:
        report.add("every payment terminal", open_, f"{total} payments: {summary}",
                   f"{open_} of {total} not terminal ({summary})")
    wrong = await conn.fetchval(
        f"""
        SELECT count(*) FROM payments.payments p
        LEFT JOIN ({_POSTINGS}) t ON t.tenant_id = p.tenant_id AND t.ref = p.id
        WHERE (p.status = 'succeeded' AND (t.id IS NULL OR t.amount <> p.amount OR t.currency <> p.currency))
           OR (p.status IN ('failed', 'declined') AND t.id IS NOT NULL)
        """
    )
    orphans = await conn.fetchval(
        f"""
        SELECT count(*) FROM ({_POSTINGS}) t
        LEFT JOIN payments.payments p ON p.id = t.ref AND p.tenant_id = t.tenant_id
        WHERE p.id IS NULL OR p.status NOT IN ('succeeded', 'processing', 'requires_review')
        """
    )
    # A declined payment's hold is voided by the ledger a moment after payments records the
    # decline, so only a settled stack must have no hold left on a finished payment.
    held = 0 if not settled else await conn.fetchval(
        """
        SELECT count(*) FROM ledger.holds h JOIN ledger.transfers t ON t.id = h.transfer_id
        JOIN payments.payments p ON p.id = t.external_ref AND p.tenant_id = t.tenant_id
        WHERE h.status = 'pending' AND p.status IN ('succeeded', 'failed', 'declined')
        """
    )
    report.add("ledger agrees with payments", wrong + orphans + held,
               "every succeeded payment posted once, no other payment posted or still held",
               f"{wrong} payments disagree with the ledger, {orphans} transfers without a succeeded "
               f"payment, {held} finished payments still holding funds")


async def _duplicate_checks(conn: asyncpg.Connection, report: InvariantReport) -> None:
    twice = await conn.fetchval(
        f"SELECT count(*) FROM (SELECT ref FROM ({_POSTINGS}) t "
        "GROUP BY tenant_id, ref HAVING count(*) > 1) d"
    )
    terminal_twice = await conn.fetchval(
        "SELECT count(*) FROM (SELECT payment_id FROM payments.payment_events "
        "WHERE type IN ('payment.succeeded', 'payment.failed', 'payment.declined') "
        "GROUP BY payment_id HAVING count(*) > 1) d"
    )
    deliveries_twice = await conn.fetchval(
        "SELECT count(*) FROM (SELECT 1 FROM notifications.deliveries "
        "GROUP BY endpoint_id, event_id HAVING count(*) > 1) d"
    )
    bad = twice + terminal_twice + deliveries_twice
    report.add("nothing applied twice", bad,
               "one transfer per payment, one terminal event per payment, one delivery per event",
               f"{twice} payments posted twice, {terminal_twice} payments ended twice, "
               f"{deliveries_twice} events queued twice for an endpoint")
    dead = 0
    for schema in ("payments", "fraud", "ledger", "notifications"):
        dead += await conn.fetchval(f"SELECT count(*) FROM {schema}.dead_letters")
    report.add("no dead letters", dead, "no event was dead-lettered", f"{dead} events dead-lettered")


async def check_from_home(home: Path, *, settled: bool = True) -> InvariantReport:
    """Invariants of the stack running from ``home`` (reads its ``stack.json``)."""
    from paystream.tools.client import StackInfo

    return await check_invariants(StackInfo.load(home).postgres_url, settled=settled)
