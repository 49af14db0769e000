"""Every event paystream publishes, with its type name and schema version.

A payload struct carries ``__event_type__ = (type, version)``. Consumers turn an
envelope's payload back into the struct with `payload_of`. Adding an optional
field keeps the version; anything else bumps it.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, TypeVar

import msgspec

from paystream.contracts.envelope import Envelope

PaymentKind = Literal["transfer", "deposit", "refund"]


class PaymentOrder(msgspec.Struct, frozen=True, kw_only=True):
    """What a payment asks the ledger to do; carried through fraud to the ledger.

    A refund (``kind="refund"``) names the payment it reverses in ``refund_of``; the ledger
    takes its accounts from that payment's posted transfer. A payment across currencies
    carries the amount its destination receives in ``destination_amount`` and
    ``destination_currency`` (both None when the currencies are the same).
    """

    payment_id: str
    tenant_id: str
    kind: PaymentKind
    source_account_id: str | None
    destination_account_id: str | None
    amount: int
    currency: str
    refund_of: str | None = None
    destination_amount: int | None = None
    destination_currency: str | None = None

    @property
    def account_key(self) -> str:
        """The account the payment's events are partitioned by."""
        key = self.source_account_id or self.destination_account_id
        assert key is not None, "a payment touches at least one wallet"
        return key


class PaymentInitiated(msgspec.Struct, frozen=True, kw_only=True):
    __event_type__: ClassVar[tuple[str, int]] = ("payments.initiated", 1)
    order: PaymentOrder


class FraudApproved(msgspec.Struct, frozen=True, kw_only=True):
    __event_type__: ClassVar[tuple[str, int]] = ("fraud.approved", 1)
    order: PaymentOrder
    review_id: str | None = None
    reasons: list[str] = []


class FraudDeclined(msgspec.Struct, frozen=True, kw_only=True):
    __event_type__: ClassVar[tuple[str, int]] = ("fraud.declined", 1)
    order: PaymentOrder
    review_id: str | None = None
    reasons: list[str] = []


class FraudReview(msgspec.Struct, frozen=True, kw_only=True):
    __event_type__: ClassVar[tuple[str, int]] = ("fraud.review", 1)
    order: PaymentOrder
    review_id: str
    reasons: list[str] = []


class LedgerPosted(msgspec.Struct, frozen=True, kw_only=True):
    __event_type__: ClassVar[tuple[str, int]] = ("ledger.posted", 1)
    payment_id: str
    tenant_id: str
    transfer_id: str
    # What the posting took from the payment's source account when that is in another
    # currency than the payment (a refund of an exchanged payment); None otherwise. Optional,
    # so events without them (and consumers that ignore them) stay valid.
    source_amount: int | None = None
    source_currency: str | None = None


class LedgerRejected(msgspec.Struct, frozen=True, kw_only=True):
    __event_type__: ClassVar[tuple[str, int]] = ("ledger.rejected", 1)
    payment_id: str
    tenant_id: str
    failure_code: str
    detail: str = ""


class PaymentStatusChanged(msgspec.Struct, frozen=True, kw_only=True):
    """Base of the public ``payment.*`` events; ``data`` is the public payment object."""

    tenant_id: str
    data: dict[str, Any]


class PaymentSucceeded(PaymentStatusChanged, frozen=True, kw_only=True):
    __event_type__: ClassVar[tuple[str, int]] = ("payment.succeeded", 1)


class PaymentFailed(PaymentStatusChanged, frozen=True, kw_only=True):
    __event_type__: ClassVar[tuple[str, int]] = ("payment.failed", 1)


class PaymentDeclined(PaymentStatusChanged, frozen=True, kw_only=True):
    __event_type__: ClassVar[tuple[str, int]] = ("payment.declined", 1)


class PaymentRequiresReview(PaymentStatusChanged, frozen=True, kw_only=True):
    __event_type__: ClassVar[tuple[str, int]] = ("payment.requires_review", 1)


EVENT_TYPES: dict[str, type[msgspec.Struct]] = {
    cls.__event_type__[0]: cls
    for cls in (
        PaymentInitiated,
        FraudApproved,
        FraudDeclined,
        FraudReview,
        LedgerPosted,
        LedgerRejected,
        PaymentSucceeded,
        PaymentFailed,
        PaymentDeclined,
        PaymentRequiresReview,
    )
}

# The public event types a webhook endpoint can subscribe to.
WEBHOOK_EVENT_TYPES = (
    "payment.succeeded",
    "payment.failed",
    "payment.declined",
    "payment.requires_review",
)

E = TypeVar("E", bound=msgspec.Struct)


def payload_of(envelope: Envelope, cls: type[E]) -> E:
    """The envelope's payload as ``cls``; raises `msgspec.ValidationError` when it does not fit."""
    expected_type, expected_version = cls.__event_type__  # type: ignore[attr-defined]
    if envelope.type != expected_type or envelope.version != expected_version:
        raise msgspec.ValidationError(
            f"expected {expected_type} v{expected_version}, got {envelope.type} v{envelope.version}"
        )
    return msgspec.convert(envelope.payload, cls)


def payment_id_of(envelope: Envelope) -> str | None:
    """The payment an event is about, whatever its type (None for one about none)."""
    payload = envelope.payload
    order = payload.get("order")
    if isinstance(order, dict):
        return order.get("payment_id")
    if "payment_id" in payload:
        return payload["payment_id"]  # type: ignore[no-any-return]
    data = payload.get("data")
    return data.get("id") if isinstance(data, dict) else None
