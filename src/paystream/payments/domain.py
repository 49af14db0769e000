"""The payment state machine, pure.

    processing ──fraud.review / screening.deadline──▶ requires_review ──review.approved──▶ processing
        │  └──fraud.declined──▶ declined ◀──review.declined──┘
        ├──ledger.posted────▶ succeeded
        └──ledger.rejected──▶ failed

Two kinds of fraud signal, told apart by whether they name a review:

* **screening decisions** (``fraud.approved``, ``fraud.review``, ``fraud.declined`` without a
  review, and ``screening.deadline``, which payments' own deadline worker gives when fraud
  has not decided in time): a payment has exactly one. **The first screening decision wins**;
  any later one (fraud's decision arriving after the deadline sent the payment to review, a
  duplicate) changes nothing. A transition records it in ``screening``, even an approval,
  which leaves the status as it is (the payment waits for the ledger);
* **resolutions of a review** (``review.approved``, ``review.declined``: a reviewer's, or
  fraud's re-screen once a dependency is back), carried by ``fraud.approved`` and
  ``fraud.declined`` events that name the review. An approval continues a payment under
  review; a decline declines any payment not yet finished.

The ledger's outcome settles the payment from either open state: the money has moved, or
not. Terminal states (succeeded, failed, declined) absorb every later signal: a payment
reaches exactly one of them, once, whatever order or how many times events arrive.

Before any of that, the rules that admit a new payment, pure as well: which accounts a
payment may use (`accounts_to_check`, `admit`), what an exchange across currencies pays
(`exchange_terms`), how much a refund may move (`refund_amount`). They raise the domain
errors the API answers with; the typed commands they work on (`PaymentRequest`,
`NewPayment`) carry a payment from the API through the handlers to the store.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Literal

from paystream.contracts.ids import AccountId, PaymentId, TenantId
from paystream.contracts.money import MAX_AMOUNT, Money, convert
from paystream.platform.errors import Invalid, NotFound

Status = Literal["processing", "requires_review", "succeeded", "failed", "declined"]
Signal = Literal[
    "fraud.approved", "fraud.review", "fraud.declined", "screening.deadline",
    "review.approved", "review.declined", "ledger.posted", "ledger.rejected",
]
Screening = Literal["approve", "review", "decline", "deadline"]

TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "declined"})
# The first screening decision a payment gets, by the signal that carries it.
SCREENINGS: dict[str, Screening] = {
    "fraud.approved": "approve", "fraud.review": "review", "fraud.declined": "decline",
    "screening.deadline": "deadline",
}
SIGNALS: frozenset[str] = frozenset(
    {*SCREENINGS, "review.approved", "review.declined", "ledger.posted", "ledger.rejected"}
)
DEADLINE_REASON = "screening_deadline"


@dataclass(frozen=True, slots=True)
class Transition:
    """A change to store: the status, and which public event and timeline row (if any)
    announce it. ``screening`` is the screening decision it records (None: none)."""

    status: Status
    failure_code: str | None
    public_event: str | None
    timeline_type: str | None
    screening: Screening | None = None


def next_state(
    status: Status, signal: Signal, failure_code: str | None = None, *, screened: bool = False
) -> Transition | None:
    """The transition ``signal`` causes from ``status``; ``None`` when it changes nothing.

    ``screened`` says whether the payment already has its screening decision.
    """
    if signal not in SIGNALS:
        raise ValueError(f"unknown signal {signal!r}")
    if status in TERMINAL:
        return None
    if signal == "ledger.posted":
        return Transition("succeeded", None, "payment.succeeded", "payment.succeeded")
    if signal == "ledger.rejected":
        return Transition("failed", failure_code or "ledger_rejected", "payment.failed", "payment.failed")
    if signal in SCREENINGS:
        return None if screened else _screen(status, SCREENINGS[signal])
    if signal == "review.approved":
        if status == "requires_review":
            return Transition("processing", None, None, "payment.review_approved")
        return None
    # review.declined: a reviewer's (or a re-screen's) decline is final.
    return Transition("declined", "fraud_declined", "payment.declined", "payment.declined")


def _screen(status: Status, screening: Screening) -> Transition | None:
    """The first screening decision of a payment."""
    if screening == "approve":  # nothing to show yet: the payment waits for the ledger
        return Transition(status, None, None, None, screening)
    if screening == "decline":
        return Transition("declined", "fraud_declined", "payment.declined", "payment.declined", screening)
    if status != "processing":
        return None
    timeline = "payment.screening_deadline" if screening == "deadline" else "payment.requires_review"
    return Transition("requires_review", None, "payment.requires_review", timeline, screening)


def is_terminal(status: str) -> bool:
    return status in TERMINAL


# --- admitting a new payment -------------------------------------------------------------

Kind = Literal["transfer", "deposit", "refund"]


@dataclass(frozen=True, slots=True)
class DirectoryEntry:
    """What payments knows of an account: its tenant, currency and owner (they never change)."""

    account_id: str
    tenant_id: str
    currency: str
    owner_user_id: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class PaymentRequest:
    """A client's transfer or deposit, as asked: not yet checked against its accounts.

    ``exchange_rate`` is the decimal string the client gave (None: same currency).
    """

    kind: Literal["transfer", "deposit"]
    source_account_id: AccountId | None  # None for a deposit
    destination_account_id: AccountId
    amount: Money
    exchange_rate: str | None = None
    description: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ExchangeTerms:
    """What the destination of a payment across currencies receives, and at which rate."""

    received: Money
    rate: Decimal


@dataclass(frozen=True, slots=True, kw_only=True)
class NewPayment:
    """A payment to store: the row `PaymentsStore.insert_payment` writes."""

    id: PaymentId
    kind: Kind
    tenant_id: TenantId
    client_id: str
    idempotency_key: str  # the client's key, prefixed with its client id
    created_at: datetime
    source_account_id: AccountId | None
    destination_account_id: AccountId | None  # None for a refund of a deposit
    amount: Money
    description: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    refund_of: PaymentId | None = None
    exchange: ExchangeTerms | None = None


def accounts_to_check(request: PaymentRequest) -> list[AccountId]:
    """The accounts a payment names, to look up; 422 when it names one account twice."""
    wanted = [a for a in (request.source_account_id, request.destination_account_id) if a]
    if len(set(wanted)) < len(wanted):
        raise Invalid("source and destination must be different accounts", code="same_account")
    return wanted


def admit(
    request: PaymentRequest, accounts: Mapping[str, DirectoryEntry], user_id: str | None
) -> ExchangeTerms | None:
    """Check a payment against its accounts (those of the caller's tenant that exist).

    404 for an account that does not exist, or a source that is not the calling user's;
    422 for currencies that do not fit (`exchange_terms`). Returns the exchange's terms,
    None for a payment in one currency.
    """
    for account_id in accounts_to_check(request):
        if account_id not in accounts:
            raise NotFound(f"no account {account_id}", code="account_not_found")
    source = request.source_account_id
    terms = exchange_terms(
        request.amount,
        request.exchange_rate,
        source=source,
        source_currency=accounts[source].currency if source else None,
        destination=request.destination_account_id,
        destination_currency=accounts[request.destination_account_id].currency,
    )
    if user_id and source and accounts[source].owner_user_id != user_id:
        raise NotFound(f"no account {source}", code="account_not_found")
    return terms


def exchange_terms(
    amount: Money,
    rate: str | None,
    *,
    source: str | None,
    source_currency: str | None,
    destination: str,
    destination_currency: str,
) -> ExchangeTerms | None:
    """Check the accounts' currencies; across currencies, what the destination receives.

    The payment is in ``amount.currency``; the source account (None for a deposit) must
    hold it. A destination in another currency needs a ``rate`` (a decimal string), and
    one in the same currency must not have one. 422 for each refusal.
    """
    currency = amount.currency
    if source and source_currency != currency:
        raise Invalid(f"account {source} holds {source_currency}, not {currency}",
                      code="currency_mismatch")
    theirs = destination_currency
    if rate is None:
        if theirs != currency:
            raise Invalid(f"account {destination} holds {theirs}, not {currency}; give an "
                          "exchange_rate to pay across currencies", code="currency_mismatch")
        return None
    if theirs == currency:
        raise Invalid(f"account {destination} holds {currency} too: an exchange_rate is only "
                      "for accounts of different currencies", code="exchange_rate_not_needed")
    if source is None:
        raise Invalid("deposits are made in the account's currency", code="currency_mismatch")
    parsed = Decimal(rate)
    received = convert(amount.amount, currency, theirs, parsed)
    if parsed <= 0 or received < 1:
        raise Invalid(f"at {rate} the destination would receive nothing", code="amount_too_small")
    if received > MAX_AMOUNT:
        raise Invalid("the converted amount is too large", code="amount_too_large")
    return ExchangeTerms(Money(received, theirs), parsed)


def refund_amount(kind: str, status: str, amount: int, claimed: int, asked: int | None) -> int:
    """How much a new refund of a payment (of ``kind``, in ``status``, for ``amount``) moves;
    422 when it cannot be refunded that much.

    ``claimed`` is what its refunds that are not failed or declined already add up to;
    ``asked`` None asks for all that is left.
    """
    if kind == "refund":
        raise Invalid("a refund cannot be refunded", code="payment_not_refundable")
    if status != "succeeded":
        raise Invalid(f"only a succeeded payment can be refunded; this one is {status}",
                      code="payment_not_refundable")
    left = amount - claimed
    if left <= 0:
        raise Invalid("the payment has been refunded in full", code="refund_exceeds_payment")
    wanted = left if asked is None else asked
    if wanted > left:
        raise Invalid(f"only {left} of the payment is left to refund", code="refund_exceeds_payment")
    return wanted
