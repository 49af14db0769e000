"""Schemas of the public API (`../shared/API.md`), shared by the gateway and the services.

Request models forbid unknown fields and coerce nothing: ``"amount": "100"`` is an
error, not a hundred. The gateway validates with them before anything is stored,
and each service validates again at its own door.

Response models are the one description of each response body: ``Model.body(row)`` builds
it (`paystream.contracts.bodies`), reading each field from the row's column of its name or
where its `From` says, and leaving out a field whose ``exclude_if`` says so. No service
writes a body's keys by hand.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    model_validator,
)

from paystream.contracts.bodies import Body, From, Row, body_of
from paystream.contracts.events import WEBHOOK_EVENT_TYPES
from paystream.contracts.money import MAX_AMOUNT, is_currency


def _currency(value: str) -> str:
    if not is_currency(value):
        raise ValueError("must be a supported upper-case ISO 4217 currency code")
    return value


def _metadata(value: dict[str, str]) -> dict[str, str]:
    if len(value) > 50:
        raise ValueError("at most 50 keys")
    for key, item in value.items():
        if not 1 <= len(key) <= 40:
            raise ValueError("keys are 1 to 40 characters")
        if len(item) > 500:
            raise ValueError("values are at most 500 characters")
    return value


Currency = Annotated[str, Field(examples=["USD"]), AfterValidator(_currency)]
Amount = Annotated[StrictInt, Field(gt=0, le=MAX_AMOUNT, description="minor units, e.g. 1250 is 12.50")]
Metadata = Annotated[dict[str, str], AfterValidator(_metadata)]
AccountId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^acc_[0-9A-Z]{26}$")]
PaymentStatus = Literal["processing", "requires_review", "succeeded", "failed", "declined"]
PaymentType = Literal["transfer", "deposit", "refund"]
Direction = Literal["debit", "credit"]
WebhookEventType = Literal[
    "payment.succeeded", "payment.failed", "payment.declined", "payment.requires_review"
]
assert set(WebhookEventType.__args__) == set(WEBHOOK_EVENT_TYPES)  # type: ignore[attr-defined]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _is_null(value: object) -> bool:
    return value is None


class _Response(BaseModel):
    model_config = ConfigDict(frozen=True)

    @classmethod
    def body(cls, row: Row | None = None, /, **values: Any) -> Body:
        """This response's body for a stored row; ``values`` (by field name) give what the
        row does not have, e.g. a computed balance."""
        return body_of(cls, row, values)


# --- accounts -----------------------------------------------------------------------------


class AccountCreate(_Request):
    currency: Currency
    allow_overdraft: StrictBool = False
    normal_balance: Direction = Field(
        default="credit",
        description="the side that increases the balance: credit for a wallet (money owed to "
                    "its holder), debit for an asset such as a loan receivable",
    )
    lower_limit: StrictInt | None = Field(
        default=None, lt=0, ge=-MAX_AMOUNT,
        description="with allow_overdraft, how far below zero the available balance may go "
                    "(a credit line); omitted means no limit",
    )
    metadata: Metadata = Field(default_factory=dict)
    owner_user_id: str | None = Field(default=None, max_length=64)

    @model_validator(mode="after")
    def _limit_needs_overdraft(self) -> AccountCreate:
        if self.lower_limit is not None and not self.allow_overdraft:
            raise ValueError("lower_limit below zero needs allow_overdraft: true")
        return self


class Balance(_Response):
    posted: int
    pending: int
    available: int


class Account(_Response):
    id: str
    currency: str
    normal_balance: Direction = "credit"
    allow_overdraft: bool
    lower_limit: int | None = Field(default=None, description="0 without overdraft; null for no limit")
    balance: Balance
    metadata: dict[str, str]
    owner_user_id: str | None = None
    created_at: datetime


class Entry(_Response):
    id: str
    account_id: str
    transfer_id: str
    payment_id: str | None
    external_ref: str | None = None
    direction: Literal["debit", "credit"]
    amount: int
    currency: str
    created_at: datetime


# --- ledger transfers ---------------------------------------------------------------------

ExternalRef = Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[\x21-\x7e]+$",
                                   description="your reference; a second transfer with it is refused")]


class LegCreate(_Request):
    account_id: AccountId
    direction: Direction
    amount: Amount
    currency: Currency | None = Field(default=None, description="omitted: the transfer's currency")


class TransferCreate(_Request):
    external_ref: ExternalRef
    currency: Currency
    legs: list[LegCreate] = Field(min_length=2, max_length=64,
                                  description="debits equal credits in every currency")
    pending: StrictBool = Field(default=False, description="a hold: two legs, posted or voided later")
    timeout_seconds: StrictInt | None = Field(default=None, ge=1, le=30 * 86400,
                                              description="a hold left open this long is voided")
    metadata: Metadata = Field(default_factory=dict)

    @model_validator(mode="after")
    def _timeout_needs_pending(self) -> TransferCreate:
        if self.timeout_seconds is not None and not self.pending:
            raise ValueError("timeout_seconds is only for pending transfers")
        if self.pending and len(self.legs) != 2:
            raise ValueError("a pending transfer has exactly two legs")
        return self


class HoldPost(_Request):
    amount: Amount | None = Field(default=None, description="omitted: the whole hold")


class TransferLeg(_Response):
    account_id: str
    direction: Direction
    amount: int
    currency: str


class Transfer(_Response):
    id: str
    external_ref: str
    phase: Literal["posted", "pending", "post_pending", "void_pending", "expire_pending"]
    status: Literal["posted", "pending", "voided", "expired"] = Field(
        description="a hold's state (pending until posted, voided or expired); posted otherwise")
    amount: int
    currency: str
    legs: list[TransferLeg]
    pending_id: str | None = Field(default=None, description="the hold this transfer closed")
    closed_by: str | None = Field(default=None, description="the transfer that closed this hold")
    expires_at: datetime | None = None
    metadata: dict[str, str]
    created_at: datetime


# --- payments -----------------------------------------------------------------------------


ExchangeRate = Annotated[str, Field(
    pattern=r"^(0|[1-9][0-9]{0,11})(\.[0-9]{1,12})?$", examples=["1.0825"],
    description="price of one unit of the source currency in the destination currency, "
                "as a decimal string",
)]


class PaymentCreate(_Request):
    source_account_id: AccountId
    destination_account_id: AccountId
    amount: Amount
    currency: Currency
    exchange_rate: ExchangeRate | None = Field(
        default=None,
        description="required when the destination account holds another currency; the "
                    "destination receives amount times rate, rounded half to even",
    )
    description: str | None = Field(default=None, max_length=1000)
    metadata: Metadata = Field(default_factory=dict)


class RefundCreate(_Request):
    amount: Amount | None = Field(default=None, description="omitted: what is left to refund")
    description: str | None = Field(default=None, max_length=1000)
    metadata: Metadata = Field(default_factory=dict)


class DepositCreate(_Request):
    account_id: AccountId
    amount: Amount
    currency: Currency
    description: str | None = Field(default=None, max_length=1000)
    metadata: Metadata = Field(default_factory=dict)


class Payment(_Response):
    id: str
    type: Annotated[PaymentType, From("kind")]
    status: PaymentStatus
    amount: int
    currency: str
    source_account_id: str | None
    destination_account_id: str | None = Field(description="null for a refund of a deposit")
    destination_amount: int | None = Field(default=None, description="across currencies only")
    destination_currency: str | None = None
    exchange_rate: Annotated[str | None, From(convert=str)] = None  # stored as numeric
    refund_of: str | None = Field(default=None, description="the payment a refund reverses")
    amount_refunded: int = Field(default=0, description="what succeeded refunds returned")
    source_amount: int | None = Field(
        default=None,
        description="a refund of a payment across currencies: what it took back from its source "
                    "account, in that account's currency (set once the ledger has posted it)",
    )
    source_currency: str | None = None
    failure_code: str | None
    review_reasons: Annotated[list[str] | None, From(convert=list)] = Field(
        default=None,
        description="why fraud sent the payment to review (rules, model and its top features, or "
                    "screening_deadline); null if it never was",
    )
    description: str | None = None
    created_at: datetime
    updated_at: datetime
    metadata: dict[str, str]


class PaymentEvent(_Response):
    id: str
    type: str
    status: PaymentStatus
    failure_code: str | None = None
    created_at: datetime


# --- webhooks -----------------------------------------------------------------------------


class WebhookEndpointCreate(_Request):
    url: str = Field(min_length=8, max_length=2048, pattern=r"^https?://[^\s]+$")
    events: list[WebhookEventType] = Field(min_length=1, max_length=len(WEBHOOK_EVENT_TYPES))
    description: str | None = Field(default=None, max_length=500)


class WebhookEndpoint(_Response):
    id: str
    url: str
    events: Annotated[list[str], From(convert=list)]
    description: str | None = None
    created_at: datetime
    secret: Annotated[str | None, From(stored=False)] = Field(
        default=None, exclude_if=_is_null,
        description="shown only in the creation response (absent everywhere else)")


# --- reviews ------------------------------------------------------------------------------


class Review(_Response):
    id: str
    payment_id: str
    status: Literal["open", "approved", "declined"]
    reasons: Annotated[list[str], From(convert=list)]
    amount: int
    currency: str
    created_at: datetime
    decided_at: datetime | None = None
    score: float | None = Field(
        default=None, description="the fraud model's probability of fraud, when it scored the payment")
    model_version: str | None = Field(default=None, description="the model version that gave the score")


FraudReportReason = Literal["chargeback", "fraud_claim", "account_takeover", "scam"]


class FraudReportCreate(_Request):
    reason: FraudReportReason
    note: str | None = Field(default=None, max_length=1000)


class FraudReport(_Response):
    """A payment reported as fraud after the fact: a training label for the next model."""

    payment_id: str
    reason: str
    note: str | None = None
    created_at: datetime


class ReviewDecision(_Request):
    note: str | None = Field(default=None, max_length=1000)


# --- auth, errors, lists ------------------------------------------------------------------


class TokenResponse(_Response):
    access_token: str
    token_type: Literal["Bearer"] = "Bearer"  # noqa: S105 - a name, not a secret
    expires_in: int
    scope: str
    refresh_token: str | None = Field(default=None, exclude_if=_is_null,
                                      description="password and refresh_token grants only")


class FieldError(_Response):
    field: str
    message: str


class Problem(_Response):
    """RFC 9457 problem details, with a stable ``code``."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    errors: list[FieldError] | None = Field(default=None, exclude_if=_is_null,
                                            description="validation problems only")


class OAuthProblem(Problem):
    """The token endpoint's errors: RFC 6749's ``error`` and ``error_description`` beside the
    problem's members, so an OAuth client and a problem-JSON client both understand."""

    error: str
    error_description: str


# --- clients ------------------------------------------------------------------------------

ScopeName = Literal[
    "accounts:read", "accounts:write", "payments:read", "payments:write", "webhooks:write",
    "reviews:write", "users:write", "cards:write", "ledger:read", "ledger:write", "admin",
]


class ClientCreate(_Request):
    name: str = Field(min_length=1, max_length=200)
    tenant: str = Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_-]*$")
    scopes: list[ScopeName] = Field(min_length=1)


class UserCreate(_Request):
    email: str = Field(min_length=3, max_length=320, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
    password: str = Field(min_length=12, max_length=128,
                          description="at least 12 characters (OWASP ASVS 2.1.1)")
    name: str = Field(min_length=1, max_length=200)


class User(_Response):
    id: str
    email: str
    name: str
    created_at: datetime


class CardCreate(_Request):
    number: str = Field(min_length=12, max_length=32, description="13-19 digits; spaces or dashes allowed")
    exp_month: StrictInt = Field(ge=1, le=12)
    exp_year: StrictInt = Field(ge=2000, le=2200)
    cvc: str = Field(min_length=3, max_length=4, description="checked, never stored")
    owner_user_id: str | None = Field(default=None, max_length=64)


class Card(_Response):
    id: str
    brand: str
    last4: str
    exp_month: int
    exp_year: int
    fingerprint: str = Field(description="the same for the same number within a tenant")
    created_at: datetime


class ClientCreated(_Response):
    client_id: str
    client_secret: str | None = Field(
        description="shown only in this response; null when an Idempotency-Key replay answers it")
    name: str
    tenant: str
    scopes: list[str]
    created_at: datetime
