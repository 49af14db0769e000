"""Events into ledger postings: approved payment orders become transfers, in batches."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg

from paystream.contracts.envelope import Envelope, make_envelope
from paystream.contracts.events import FraudApproved, LedgerPosted, LedgerRejected, payload_of
from paystream.ledger.domain import Posted, TransferRequest, post_batch, simple_transfer
from paystream.ledger.store import LedgerStore
from paystream.platform.ids import new_id
from paystream.platform.observability import get_logger
from paystream.platform.outbox import Outbox

log = get_logger(__name__)

# Stands in for a settlement account that does not exist, so the order is rejected.
_MISSING = "acc_missing"


class LedgerHandlers:
    """Applies ``fraud.approved`` orders; other fraud outcomes need nothing from the ledger."""

    def __init__(self, store: LedgerStore, outbox: Outbox) -> None:
        self._store = store
        self._outbox = outbox

    async def on_fraud_events(self, conn: asyncpg.Connection, envelopes: list[Envelope]) -> None:
        approved = [(e, payload_of(e, FraudApproved)) for e in envelopes if e.type == "fraud.approved"]
        if not approved:
            return
        decided = await self._store.decided_refs(
            conn, [(p.order.tenant_id, p.order.payment_id) for _, p in approved]
        )
        seen: set[tuple[str, str]] = set()
        todo = []
        for envelope, payload in approved:
            key = (payload.order.tenant_id, payload.order.payment_id)
            if key in decided or key in seen:
                log.info("ledger_order_already_decided", payment_id=payload.order.payment_id,
                         correlation_id=envelope.correlation_id)
                continue
            seen.add(key)
            todo.append((envelope, payload))
        if not todo:
            return
        settlement = await self._store.settlement_ids(
            conn,
            [(p.order.tenant_id, p.order.currency) for _, p in todo if p.order.kind == "deposit"],
        )
        requests: list[TransferRequest] = []
        for _, payload in todo:
            order = payload.order
            source = order.source_account_id
            if order.kind == "deposit":
                source = settlement.get((order.tenant_id, order.currency), _MISSING)
            requests.append(
                simple_transfer(
                    transfer_id=new_id("trf"),
                    tenant_id=order.tenant_id,
                    external_ref=order.payment_id,
                    kind=order.kind,
                    debit_account=source or _MISSING,
                    credit_account=order.destination_account_id,
                    amount=order.amount,
                    currency=order.currency,
                )
            )
        accounts = await self._store.lock_accounts(
            conn, {leg.account_id for r in requests for leg in r.legs}
        )
        result = post_batch(accounts, requests)
        await self._store.write_batch(conn, accounts, result, datetime.now(UTC))
        events = []
        for (envelope, payload), outcome in zip(todo, result.outcomes, strict=True):
            order = payload.order
            if isinstance(outcome, Posted):
                log.info("ledger_posted", payment_id=order.payment_id,
                         correlation_id=envelope.correlation_id,
                         transfer_id=outcome.request.transfer_id, amount=order.amount,
                         currency=order.currency)
            else:
                log.info("ledger_rejected", payment_id=order.payment_id,
                         correlation_id=envelope.correlation_id, failure_code=outcome.code)
            event = (
                LedgerPosted(
                    payment_id=order.payment_id,
                    tenant_id=order.tenant_id,
                    transfer_id=outcome.request.transfer_id,
                )
                if isinstance(outcome, Posted)
                else LedgerRejected(
                    payment_id=order.payment_id,
                    tenant_id=order.tenant_id,
                    failure_code=outcome.code,
                    detail=outcome.detail,
                )
            )
            events.append(
                make_envelope(
                    event,
                    partition_key=order.account_key,
                    correlation_id=envelope.correlation_id,
                    causation_id=envelope.id,
                )
            )
        await self._outbox.add(conn, events)
