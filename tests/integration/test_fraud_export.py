"""Exporting real traffic with its labels in the simulator's format, on a real PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from paystream.fraud.export import export_labelled
from paystream.fraud.features import PaymentFacts
from paystream.fraud.simulate import read
from paystream.fraud.store import FraudStore


async def test_labelled_history_is_exported_in_time_order_with_where_each_label_came_from(
    make_schema: Any, tmp_path: Path
) -> None:
    schema = await make_schema("fraud")
    store, now = FraudStore(), datetime.now(UTC)
    async with schema.pool.acquire() as conn:
        await store.add_facts(conn, [
            PaymentFacts("pay_b", 2_000, "acc_1", "acc_2", 700, is_deposit=False),
            PaymentFacts("pay_a", 1_000, "acc_1", None, 5_000, is_deposit=True),
            PaymentFacts("pay_c", 3_000, "acc_1", "acc_3", 4_000, is_deposit=False),
            PaymentFacts("pay_d", 4_000, "acc_1", "acc_3", 900, is_deposit=False),
        ])
        for payment_id, source, label in (("pay_c", "review", 1), ("pay_c", "report", 1), ("pay_d", "review", 0),
                                          ("pay_b", "report", 1)):
            await store.add_label(conn, payment_id=payment_id, tenant_id="ten_a", source=source, label=label,
                                  reason="x", note=None, created_by="cli_1", now=now)
        meta = await export_labelled(conn, tmp_path, schema=schema.schema)

    rows = [(p.payment_id, p.kind, p.source, p.destination, p.label, p.pattern) for p in read(tmp_path)]
    assert rows == [
        ("pay_a", "deposit", None, "acc_1", 0, "unlabelled"),
        ("pay_b", "transfer", "acc_1", "acc_2", 1, "report"),
        ("pay_c", "transfer", "acc_1", "acc_3", 1, "report"),
        ("pay_d", "transfer", "acc_1", "acc_3", 0, "review"),
    ]
    assert (meta["payments"], meta["fraud"]) == (4, 2)
