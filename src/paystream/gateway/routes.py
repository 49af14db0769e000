"""The public API as a table: each route's owner service, scope, body and idempotency rule.

The gateway registers one forwarding endpoint per row; the OpenAPI document is built
from the same rows, so the spec and the behaviour cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel

from paystream.contracts.api import (
    Account,
    AccountCreate,
    DepositCreate,
    Entry,
    FraudReport,
    FraudReportCreate,
    HoldPost,
    Payment,
    PaymentCreate,
    PaymentEvent,
    RefundCreate,
    Review,
    ReviewDecision,
    Transfer,
    TransferCreate,
    WebhookEndpoint,
    WebhookEndpointCreate,
)

Idempotency = Literal["required", "honoured", "none"]


@dataclass(frozen=True, slots=True)
class QueryParam:
    name: str
    schema: dict[str, object]
    description: str = ""


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    service: str
    scope: str
    summary: str
    status: int = 200
    body: type[BaseModel] | None = None
    body_required: bool = True
    response: type[BaseModel] | None = None
    paged: bool = False
    idempotency: Idempotency = "none"
    query: tuple[QueryParam, ...] = field(default_factory=tuple)


_PAGE = (
    QueryParam("limit", {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}),
    QueryParam("starting_after", {"type": "string", "minLength": 1, "maxLength": 40, "pattern": "^[a-z]+_[0-9A-Z]+$"},
               "id of the last object of the previous page (an id of the listed type)"),
)

ROUTES: tuple[Route, ...] = (
    Route("POST", "/v1/accounts", "ledger", "accounts:write", "Create an account (wallet)",
          status=201, body=AccountCreate, response=Account, idempotency="honoured"),
    Route("GET", "/v1/accounts/{account_id}", "ledger", "accounts:read", "Retrieve an account",
          response=Account,
          query=(QueryParam("as_of", {"type": "string", "format": "date-time"},
                            "the balance as it stood at this instant (with a time zone)"),)),
    Route("GET", "/v1/accounts/{account_id}/entries", "ledger", "accounts:read",
          "List an account's ledger entries, newest first", response=Entry, paged=True, query=_PAGE),
    Route("POST", "/v1/payments", "payments", "payments:write", "Create a transfer between accounts",
          status=202, body=PaymentCreate, response=Payment, idempotency="required"),
    Route("POST", "/v1/deposits", "payments", "payments:write",
          "Deposit money into an account from outside", status=202, body=DepositCreate,
          response=Payment, idempotency="required"),
    Route("GET", "/v1/payments", "payments", "payments:read", "List payments, newest first",
          response=Payment, paged=True,
          query=(
              QueryParam("account_id", {"type": "string"}, "only payments touching this account"),
              QueryParam("status", {"type": "string", "enum": [
                  "processing", "requires_review", "succeeded", "failed", "declined"]}),
              *_PAGE,
          )),
    Route("GET", "/v1/payments/{payment_id}", "payments", "payments:read", "Retrieve a payment",
          response=Payment),
    Route("POST", "/v1/payments/{payment_id}/refunds", "payments", "payments:write",
          "Refund a succeeded payment, in full or in part: a payment of type refund that "
          "reverses it through the same pipeline (never more than was paid)",
          status=202, body=RefundCreate, body_required=False, response=Payment,
          idempotency="required"),
    Route("POST", "/v1/transfers", "ledger", "ledger:write",
          "Post a ledger transfer with any number of legs, or hold one (pending: true); "
          "refused whole, with nothing written, when it does not balance or an account "
          "would pass its limit",
          status=201, body=TransferCreate, response=Transfer, idempotency="honoured"),
    Route("GET", "/v1/transfers/{transfer_id}", "ledger", "ledger:read", "Retrieve a transfer",
          response=Transfer),
    Route("POST", "/v1/transfers/{transfer_id}/post", "ledger", "ledger:write",
          "Post a pending transfer, in full or in part (the rest is released)",
          body=HoldPost, body_required=False, response=Transfer, idempotency="honoured"),
    Route("POST", "/v1/transfers/{transfer_id}/void", "ledger", "ledger:write",
          "Void a pending transfer: its funds are released", response=Transfer,
          idempotency="honoured"),
    Route("GET", "/v1/payments/{payment_id}/events", "payments", "payments:read",
          "A payment's timeline", response=PaymentEvent, paged=True),
    Route("POST", "/v1/webhook_endpoints", "notifications", "webhooks:write",
          "Register a webhook endpoint (the response shows its signing secret, once)",
          status=201, body=WebhookEndpointCreate, response=WebhookEndpoint, idempotency="honoured"),
    Route("GET", "/v1/webhook_endpoints", "notifications", "webhooks:write",
          "List webhook endpoints", response=WebhookEndpoint, paged=True, query=_PAGE),
    Route("GET", "/v1/webhook_endpoints/{endpoint_id}", "notifications", "webhooks:write",
          "Retrieve a webhook endpoint", response=WebhookEndpoint),
    Route("DELETE", "/v1/webhook_endpoints/{endpoint_id}", "notifications", "webhooks:write",
          "Delete a webhook endpoint", status=204),
    Route("GET", "/v1/reviews", "fraud", "reviews:write", "List fraud reviews", response=Review,
          paged=True,
          query=(QueryParam("status", {"type": "string", "enum": ["open", "approved", "declined"]}),
                 *_PAGE)),
    Route("POST", "/v1/reviews/{review_id}/approve", "fraud", "reviews:write",
          "Approve a payment held for review: it continues to the ledger", body=ReviewDecision,
          body_required=False, response=Review, idempotency="honoured"),
    Route("POST", "/v1/reviews/{review_id}/decline", "fraud", "reviews:write",
          "Decline a payment held for review", body=ReviewDecision, body_required=False,
          response=Review, idempotency="honoured"),
    Route("POST", "/v1/payments/{payment_id}/fraud_report", "fraud", "reviews:write",
          "Report a screened payment as fraud (a chargeback-style training label); a repeat "
          "returns the first report", status=201, body=FraudReportCreate, response=FraudReport,
          idempotency="honoured"),
)


def route_class(route: Route) -> str:
    """Which rate limit a route counts against: ``money``, ``write`` or ``read``."""
    if route.method == "GET":
        return "read"
    if route.service == "payments" or route.path.startswith(("/v1/reviews/", "/v1/transfers")):
        return "money"
    return "write"
