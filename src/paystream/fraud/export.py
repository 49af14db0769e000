"""Real traffic with its labels, written as simulator files, so `fraud train` can learn from it.

The feedback loop: reviewers' decisions and fraud reports are stored in ``fraud.labels``;
every screened payment's facts in ``fraud.payment_facts``. `export_labelled` writes them
as ``payments.csv`` + ``meta.json`` in the simulator's format, in time order: ``label`` 1
for a payment reported as fraud or declined by a reviewer, 0 otherwise (approved by a
reviewer, or never labelled: presumed honest), and ``pattern`` saying where the label came
from (``report``, ``review`` or ``unlabelled``). ``paystream fraud train --data DIR`` then
replays the same feature module over it. Columns the facts do not keep (currency, device)
are left empty; no feature reads them.
"""

from __future__ import annotations

import json
from pathlib import Path

import asyncpg

from paystream.fraud.simulate import SimPayment, write

_QUERY = """
SELECT f.payment_id, f.subject, f.counterparty, f.amount, f.is_deposit, f.at_ms,
       coalesce(r.label, v.label, 0) AS label,
       CASE WHEN r.label IS NOT NULL THEN 'report' WHEN v.label IS NOT NULL THEN 'review'
            ELSE 'unlabelled' END AS origin
FROM {schema}.payment_facts f
LEFT JOIN {schema}.labels r ON r.payment_id = f.payment_id AND r.source = 'report'
LEFT JOIN {schema}.labels v ON v.payment_id = f.payment_id AND v.source = 'review'
ORDER BY f.at_ms, f.payment_id
"""


async def export_labelled(conn: asyncpg.Connection, out: Path, *, schema: str = "fraud") -> dict[str, object]:
    """Write the labelled history of the fraud schema ``schema`` into ``out``; returns its meta."""
    quoted = '"' + schema.replace('"', '""') + '"'
    rows = await conn.fetch(_QUERY.format(schema=quoted))
    payments = [
        SimPayment(
            payment_id=r["payment_id"], at_ms=r["at_ms"], kind="deposit" if r["is_deposit"] else "transfer",
            source=None if r["is_deposit"] else r["subject"],
            destination=r["subject"] if r["is_deposit"] else (r["counterparty"] or ""),
            amount=r["amount"], currency="", device="", label=int(r["label"]), pattern=r["origin"],
        )
        for r in rows
    ]
    days = 0 if not payments else 1 + (payments[-1].at_ms - payments[0].at_ms) // 86_400_000
    meta = write(payments, out, seed=0, days=int(days), users=0)
    meta["source"] = "paystream fraud labels export (real traffic, not simulated)"
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta
