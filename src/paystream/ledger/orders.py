"""Payment orders into ledger commands, pure: what a fraud outcome does to a payment's money.

* ``fraud.approved`` posts the payment: a two-leg transfer, four legs through the exchange
  accounts when it changes currency, or a refund's reversing legs. When the payment was
  held for review, the approval posts the hold instead.
* ``fraud.review`` holds the payment's funds (a pending transfer) while a human looks, so
  the payer cannot spend them twice. A payer who cannot cover the hold fails at once.
* ``fraud.declined`` after a review voids the hold.
* The first screening decision for a payment wins (`screening_step`): when the screening
  deadline (payments) sent it to review first, fraud's late automatic decision changes
  nothing; only the review's resolution (it names the review) posts or voids the hold.
* A hold nobody decides in ``review_hold_seconds`` expires (`expired_payment`): the ledger
  voids it itself and the payment fails with ``review_expired``.

No I/O here: `ledger.handlers` loads what a batch needs (`OrderContext`, the locked
accounts and holds in a `Book`), `decide` applies each signal to the book in order, and
the handlers write the book's result and announce each outcome.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from paystream.contracts.events import LedgerRejected, PaymentOrder
from paystream.contracts.ids import new_id
from paystream.ledger.domain import (
    Book,
    Direction,
    HoldAction,
    HoldState,
    Leg,
    Posted,
    Rejected,
    ScreeningVerb,
    TransferRequest,
    exchange_legs,
    refund_legs,
    screening_step,
    simple_transfer,
)

# Stands in for an account that does not exist, so the order is rejected.
MISSING = "acc_missing"
PAYMENT_KINDS = frozenset({"transfer", "deposit", "refund"})

Key = tuple[str, str]  # (tenant, payment id)


def new_transfer_id() -> str:
    return new_id("trf")


@dataclass(frozen=True, slots=True)
class PostedTransfer:
    """How a payment was posted, for a refund to reverse: the posting transfer (which refunds
    name in ``refund_of``, counted in its ``currency``) and every leg the payment posted,
    including the destination side of a held exchange (``<payment>:fx``)."""

    transfer_id: str
    external_ref: str
    currency: str
    amount: int
    legs: tuple[Leg, ...]


@dataclass(frozen=True, slots=True)
class OrderSignal:
    """A fraud outcome for a payment order: ``review_id`` names the review it resolves (or
    opens, for ``review``)."""

    verb: ScreeningVerb
    order: PaymentOrder
    review_id: str | None

    @property
    def key(self) -> Key:
        return (self.order.tenant_id, self.order.payment_id)


@dataclass(slots=True)
class OrderContext:
    """What the batch's orders need from the database, loaded before deciding.

    ``decided``: payments with a transfer or a rejection; ``holds``: the hold of each held
    payment; ``originals``: how refunded payments were posted; ``settlement`` and
    ``exchange``: the system accounts by (tenant, currency).
    """

    decided: set[Key]
    holds: dict[Key, str]
    originals: dict[Key, PostedTransfer]
    settlement: dict[Key, str]
    exchange: dict[Key, str]


@dataclass(frozen=True, slots=True)
class Decision:
    """What one signal did: the outcome to announce (None: nothing is due), and, when nothing
    is, whether that is because the payment was decided already or its hold closed already
    (with the hold's rejection ``code``)."""

    outcome: Posted | Rejected | None
    skipped: Literal["already_decided", "hold_closed_already"] | None = None
    code: str | None = None


def needs_only_decisions(signals: list[OrderSignal]) -> bool:
    """True when a batch needs nothing from the database before its accounts are locked but
    which of its payments were decided: no signal resolves a review (its hold must be locked
    before any account) and every order is a plain transfer (no settlement or exchange
    account to look up, no posting to refund)."""
    return all(
        (s.review_id is None or s.verb == "review")
        and s.order.kind == "transfer" and not s.order.destination_currency
        for s in signals
    )


def moves(
    signals: list[OrderSignal], context: OrderContext, holds: dict[str, HoldState]
) -> list[tuple[str, Direction]]:
    """Every (account, direction) the batch may move: what decides which rows to lock.

    A hold's accounts are given both directions (always locked): closing a hold moves
    pending and posted totals together.
    """
    out: list[tuple[str, Direction]] = []
    for s in signals:
        order = s.order
        if order.source_account_id:
            out.append((order.source_account_id, "debit"))
        if order.destination_account_id:
            out.append((order.destination_account_id, "credit"))
        if order.kind == "deposit":
            settlement = context.settlement.get((order.tenant_id, order.currency))
            if settlement:
                out.append((settlement, "debit"))
        if order.destination_currency:
            for currency, direction in ((order.currency, "credit"), (order.destination_currency, "debit")):
                exchange = context.exchange.get((order.tenant_id, currency))
                if exchange:
                    out.append((exchange, direction))  # type: ignore[arg-type]
    for original in context.originals.values():  # a refund reverses the original's legs
        out += [(leg.account_id, "credit" if leg.direction == "debit" else "debit")
                for leg in original.legs]
    for hold in holds.values():
        for account in (hold.debit_account_id, hold.credit_account_id):
            out += [(account, "debit"), (account, "credit")]
    return out


def decide(
    book: Book,
    context: OrderContext,
    signal: OrderSignal,
    *,
    review_hold_seconds: int,
    transfer_id: Callable[[], str] = new_transfer_id,
) -> Decision:
    """Apply one signal to the book (and ``context``, which records what it decides)."""
    key, order = signal.key, signal.order
    hold_id = context.holds.get(key)
    step = screening_step(
        signal.verb,
        resolution=signal.review_id is not None and signal.verb != "review",
        decided=key in context.decided, held=hold_id is not None,
        refund=order.kind == "refund",
    )
    if step == "ignore":
        return Decision(None, "already_decided" if key in context.decided else None)
    if step == "void_hold":
        assert hold_id is not None
        book.act_on_hold(HoldAction(transfer_id(), order.tenant_id, order.payment_id, hold_id, "void"))
        return Decision(None)
    if step == "post_hold":
        assert hold_id is not None
        posted = book.act_on_hold(HoldAction(transfer_id(), order.tenant_id, order.payment_id,
                                             hold_id, "post"))
        if isinstance(posted, Rejected):  # voided or expired before the approval came
            return Decision(None, "hold_closed_already", posted.code)
        if order.destination_currency:  # the hold covered the source side of an exchange
            return Decision(finish_exchange(book, context, order, posted, transfer_id()))
        return Decision(posted)
    context.decided.add(key)
    request = order_request(book, context, order, transfer_id())
    if isinstance(request, Rejected):
        return Decision(book.refuse(request))
    if step == "hold":
        request = as_hold(request, order, review_hold_seconds)
        outcome = book.transfer(request)
        if isinstance(outcome, Posted):
            context.holds[key] = request.transfer_id
            return Decision(None)  # held; the payment waits for its reviewer
        return Decision(outcome)
    return Decision(book.transfer(request))


def order_request(
    book: Book, context: OrderContext, order: PaymentOrder, transfer_id: str
) -> TransferRequest | Rejected:
    """The transfer that posts ``order`` in one step."""
    if order.kind == "refund":
        return refund_request(book, context, order, transfer_id)
    source = order.source_account_id
    if order.kind == "deposit":
        source = context.settlement.get((order.tenant_id, order.currency), MISSING)
    if order.destination_currency and order.destination_amount:
        legs = exchange_legs(
            source=source or MISSING,
            source_amount=order.amount,
            source_currency=order.currency,
            source_exchange=context.exchange.get((order.tenant_id, order.currency), MISSING),
            destination=order.destination_account_id or MISSING,
            destination_amount=order.destination_amount,
            destination_currency=order.destination_currency,
            destination_exchange=context.exchange.get(
                (order.tenant_id, order.destination_currency), MISSING
            ),
        )
        return TransferRequest(transfer_id, order.tenant_id, order.payment_id, order.kind,
                               order.currency, legs)
    return simple_transfer(
        transfer_id=transfer_id, tenant_id=order.tenant_id, external_ref=order.payment_id,
        kind=order.kind, debit_account=source or MISSING,
        credit_account=order.destination_account_id or MISSING,
        amount=order.amount, currency=order.currency,
    )


def refund_request(
    book: Book, context: OrderContext, order: PaymentOrder, transfer_id: str
) -> TransferRequest | Rejected:
    """Reversing legs of the refunded payment's posting, for the refund's share of it."""
    assert order.refund_of is not None
    original = context.originals.get((order.tenant_id, order.refund_of))
    if original is None:
        refused = simple_transfer(
            transfer_id=transfer_id, tenant_id=order.tenant_id, external_ref=order.payment_id,
            kind="refund", debit_account=MISSING, credit_account=MISSING,
            amount=order.amount, currency=order.currency,
        )
        return Rejected(refused, "refund_not_possible",
                        f"payment {order.refund_of} has no posted transfer to refund")
    # Built for the whole amount asked, even past what is left: the book then refuses it
    # (refund_exceeds_payment) rather than refunding less than was asked.
    before = original.amount - book.refundable.get(original.transfer_id, 0)
    legs = refund_legs(original.legs, original.currency, original.amount, before, order.amount)
    return TransferRequest(
        transfer_id, order.tenant_id, order.payment_id, "refund", original.currency, legs,
        refund_of=original.transfer_id,
    )


def as_hold(request: TransferRequest, order: PaymentOrder, timeout_seconds: int) -> TransferRequest:
    """The pending transfer that holds ``request``'s funds during a review.

    An exchange holds its source side (source → the source currency's exchange account);
    the approval posts the hold and the destination side together.
    """
    debit, credit = request.legs[0], request.legs[1]
    return simple_transfer(
        transfer_id=request.transfer_id, tenant_id=order.tenant_id,
        external_ref=order.payment_id, kind=order.kind, debit_account=debit.account_id,
        credit_account=credit.account_id, amount=debit.amount, currency=order.currency,
        phase="pending", timeout_seconds=timeout_seconds,
    )


def finish_exchange(
    book: Book, context: OrderContext, order: PaymentOrder, posted: Posted, transfer_id: str
) -> Posted | Rejected:
    """After a held exchange's source side posts: its destination side."""
    assert order.destination_currency and order.destination_amount
    exchange = context.exchange.get((order.tenant_id, order.destination_currency), MISSING)
    outcome = book.transfer(simple_transfer(
        transfer_id=transfer_id, tenant_id=order.tenant_id,
        external_ref=f"{order.payment_id}:fx", kind=order.kind, debit_account=exchange,
        credit_account=order.destination_account_id or MISSING,
        amount=order.destination_amount, currency=order.destination_currency,
    ))
    return posted if isinstance(outcome, Posted) else outcome


def taken_in_another_currency(order: PaymentOrder, request: TransferRequest) -> tuple[int, str] | None:
    """What a refund of an exchange took from its source account (the original payee) in that
    account's currency, which is not the refund's own; None for every other posting."""
    if order.kind != "refund" or not order.source_account_id:
        return None
    for leg in request.legs:
        currency = request.currency_of(leg)
        if leg.account_id == order.source_account_id and leg.direction == "debit" and currency != order.currency:
            return leg.amount, currency
    return None


def expired_payment(hold: HoldState) -> tuple[LedgerRejected, str] | None:
    """When an expired hold was a payment's review hold: the payment's failure and the
    account its events are partitioned by; None for a hold made through the public API."""
    if hold.kind not in PAYMENT_KINDS:
        return None
    key = hold.credit_account_id if hold.kind == "deposit" else hold.debit_account_id
    event = LedgerRejected(payment_id=hold.external_ref, tenant_id=hold.tenant_id,
                           failure_code="review_expired",
                           detail="the review was not decided before its hold expired")
    return event, key
