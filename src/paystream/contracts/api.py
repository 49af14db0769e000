"""Schemas of the public API (`../shared/API.md`), shared by the gateway and the services.

Request models forbid unknown fields and coerce nothing: ``"amount": "100"`` is an
error, not a hundred. The gateway validates with them before anything is stored,
and each service validates again at its own door.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Generic, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictInt

from paystream.contracts.events import WEBHOOK_EVENT_TYPES
from paystream.platform.money import MAX_AMOUNT, is_currency


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
PaymentType = Literal["transfer", "deposit"]
WebhookEventType = Literal[
    "payment.succeeded", "payment.failed", "payment.declined", "payment.requires_review"
]
assert set(WebhookEventType.__args__) == set(WEBHOOK_EVENT_TYPES)  # type: ignore[attr-defined]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _Response(BaseModel):
    model_config = ConfigDict(frozen=True)


# --- accounts -----------------------------------------------------------------------------


class AccountCreate(_Request):
    currency: Currency
    allow_overdraft: StrictBool = False
    metadata: Metadata = Field(default_factory=dict)
    owner_user_id: str | None = Field(default=None, max_length=64)


class Balance(_Response):
    posted: int
    pending: int
    available: int


class Account(_Response):
    id: str
    currency: str
    allow_overdraft: bool
    balance: Balance
    metadata: dict[str, str]
    owner_user_id: str | None = None
    created_at: datetime


class Entry(_Response):
    id: str
    account_id: str
    transfer_id: str
    payment_id: str | None
    direction: Literal["debit", "credit"]
    amount: int
    currency: str
    created_at: datetime


# --- payments -----------------------------------------------------------------------------


class PaymentCreate(_Request):
    source_account_id: AccountId
    destination_account_id: AccountId
    amount: Amount
    currency: Currency
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
    type: PaymentType
    status: PaymentStatus
    amount: int
    currency: str
    source_account_id: str | None
    destination_account_id: str
    failure_code: str | None
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
    events: list[str]
    description: str | None = None
    created_at: datetime
    secret: str | None = Field(default=None, description="shown only in the creation response")


# --- reviews ------------------------------------------------------------------------------


class Review(_Response):
    id: str
    payment_id: str
    status: Literal["open", "approved", "declined"]
    reasons: list[str]
    amount: int
    currency: str
    created_at: datetime
    decided_at: datetime | None = None


class ReviewDecision(_Request):
    note: str | None = Field(default=None, max_length=1000)


# --- auth, errors, lists ------------------------------------------------------------------


class TokenResponse(_Response):
    access_token: str
    token_type: Literal["Bearer"] = "Bearer"  # noqa: S105 - a name, not a secret
    expires_in: int
    scope: str
    refresh_token: str | None = Field(default=None, description="password and refresh_token grants only")


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
    errors: list[FieldError] | None = None


T = TypeVar("T")


class Page(_Response, Generic[T]):
    data: list[T]
    has_more: bool


# --- clients ------------------------------------------------------------------------------

ScopeName = Literal[
    "accounts:read", "accounts:write", "payments:read", "payments:write", "webhooks:write",
    "reviews:write", "users:write", "cards:write", "admin",
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
    client_secret: str = Field(description="shown only in this response")
    name: str
    tenant: str
    scopes: list[str]
    created_at: datetime
