"""`Model.body(row)`: a response body read off its contract model (`paystream.contracts.bodies`)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any

import orjson
import pytest
from pydantic import BaseModel, Field

from paystream.contracts.api import Payment, Problem, WebhookEndpoint
from paystream.contracts.bodies import From, body_of

NOW = datetime(2026, 12, 7, 12, 0, 0, 123456, tzinfo=UTC)

PAYMENT_ROW: dict[str, Any] = {
    "id": "pay_1", "tenant_id": "default", "kind": "transfer", "status": "succeeded", "amount": 1250,
    "currency": "USD", "source_account_id": "acc_1", "destination_account_id": "acc_2",
    "destination_amount": 1152, "destination_currency": "EUR", "exchange_rate": Decimal("0.9215"),
    "refund_of": None, "amount_refunded": 0, "source_amount": None, "source_currency": None,
    "failure_code": None, "review_reasons": ("amount_band",), "description": None,
    "created_at": NOW, "updated_at": NOW, "metadata": {"k": "v"}, "screening": "approved",
}


def test_a_body_has_the_models_keys_in_field_order_read_from_renamed_and_converted_columns() -> None:
    body = Payment.body(PAYMENT_ROW)

    assert list(body) == list(Payment.model_fields)
    assert (body["type"], body["exchange_rate"], body["review_reasons"]) == ("transfer", "0.9215", ["amount_band"])
    assert body["created_at"] is NOW  # encoded by the service's encoder, as before
    assert Payment.model_validate(body).model_dump() == body


def test_a_null_column_stays_null_whatever_its_conversion() -> None:
    body = Payment.body({**PAYMENT_ROW, "exchange_rate": None, "review_reasons": None})

    assert (body["exchange_rate"], body["review_reasons"]) == (None, None)


def test_given_values_win_over_the_row_and_an_unknown_one_is_refused() -> None:
    assert Payment.body(PAYMENT_ROW, status="failed")["status"] == "failed"
    with pytest.raises(TypeError, match="no field colour"):
        Payment.body(PAYMENT_ROW, colour="red")


def test_a_missing_column_is_an_error_not_a_default() -> None:
    row = {k: v for k, v in PAYMENT_ROW.items() if k != "refund_of"}
    with pytest.raises(KeyError):
        Payment.body(row)


def test_a_field_left_out_when_null_is_absent_as_model_dump_leaves_it_out() -> None:
    row = {"id": "whe_1", "url": "https://example.com/hook", "events": ["payment.succeeded"],
           "description": None, "created_at": NOW}

    listed, created = WebhookEndpoint.body(row), WebhookEndpoint.body(row, secret="whsec_1")

    assert "secret" not in listed and created["secret"] == "whsec_1"
    assert WebhookEndpoint.model_validate(listed).model_dump() == listed
    assert "errors" not in Problem.body(type="t", title="T", status=404, detail="d", code="c", errors=None)


def test_an_unstored_field_needs_a_plain_default() -> None:
    class Secretive(BaseModel):
        token: Annotated[str, From(stored=False)]

    with pytest.raises(TypeError, match="needs a plain default"):
        body_of(Secretive, {}, {})


def test_a_body_encodes_as_the_old_hand_written_dict_did() -> None:
    class Thing(BaseModel):
        id: str
        kind_name: Annotated[str, From("kind")]
        tags: Annotated[list[str], From(convert=list)] = Field(default_factory=list)
        at: datetime

    body = body_of(Thing, {"id": "x", "kind": "k", "tags": ("a",), "at": NOW}, {})

    assert orjson.dumps(body) == b'{"id":"x","kind_name":"k","tags":["a"],"at":"2026-12-07T12:00:00.123456+00:00"}'
