"""Fraud outcomes into ledger commands (`ledger.orders`), pure: posts, holds, refunds, expiries."""

from __future__ import annotations

import ast
from collections.abc import Callable
from itertools import count
from pathlib import Path

from paystream.contracts.events import PaymentOrder
from paystream.ledger import orders
from paystream.ledger.domain import (
    AccountState,
    Book,
    HoldState,
    Leg,
    Posted,
    Rejected,
    ScreeningVerb,
    TransferRequest,
    simple_transfer,
)
from paystream.ledger.orders import (
    Decision,
    OrderContext,
    OrderSignal,
    PostedTransfer,
    decide,
    expired_payment,
    moves,
    taken_in_another_currency,
)

TENANT = "ten_a"
HOLD_SECONDS = 600


def _ids() -> Callable[[], str]:
    numbers = count(1)
    return lambda: f"trf_{next(numbers)}"


def _wallet(account_id: str, currency: str = "USD", balance: int = 0) -> AccountState:
    return AccountState(account_id, TENANT, currency, "credit", False, credits_posted=balance)


def _system(account_id: str, currency: str) -> AccountState:
    return AccountState(account_id, TENANT, currency, "debit", True)


def _book() -> Book:
    accounts = [_wallet("acc_a", balance=10_000), _wallet("acc_b"), _wallet("acc_e", "EUR"),
                _system("acc_settle", "USD"), _system("acc_fx_usd", "USD"), _system("acc_fx_eur", "EUR")]
    return Book({a.id: a for a in accounts})


def _context() -> OrderContext:
    return OrderContext(decided=set(), holds={}, originals={},
                        settlement={(TENANT, "USD"): "acc_settle"},
                        exchange={(TENANT, "USD"): "acc_fx_usd", (TENANT, "EUR"): "acc_fx_eur"})


def _order(payment_id: str = "pay_1", amount: int = 1_000, **fields: object) -> PaymentOrder:
    values: dict[str, object] = {"kind": "transfer", "source_account_id": "acc_a",
                                 "destination_account_id": "acc_b", "currency": "USD"}
    values.update(fields)
    return PaymentOrder(payment_id=payment_id, tenant_id=TENANT, amount=amount, **values)  # type: ignore[arg-type]


def _decide(book: Book, context: OrderContext, verb: ScreeningVerb, order: PaymentOrder,
            review_id: str | None = None) -> Decision:
    return decide(book, context, OrderSignal(verb, order, review_id),
                  review_hold_seconds=HOLD_SECONDS, transfer_id=_ids())


def test_an_approval_posts_the_payment_from_source_to_destination() -> None:
    book, context = _book(), _context()
    decision = _decide(book, context, "approved", _order())
    assert isinstance(decision.outcome, Posted)
    assert decision.outcome.request.legs == (Leg("acc_a", "debit", 1_000), Leg("acc_b", "credit", 1_000))
    assert (book.accounts["acc_a"].posted, book.accounts["acc_b"].posted) == (9_000, 1_000)
    assert (TENANT, "pay_1") in context.decided


def test_an_approval_the_payer_cannot_cover_is_rejected_for_insufficient_funds() -> None:
    decision = _decide(_book(), _context(), "approved", _order(amount=20_000))
    assert isinstance(decision.outcome, Rejected)
    assert decision.outcome.code == "insufficient_funds"


def test_a_deposit_is_paid_from_the_currency_s_settlement_account() -> None:
    order = _order(kind="deposit", source_account_id=None)
    decision = _decide(_book(), _context(), "approved", order)
    assert isinstance(decision.outcome, Posted)
    assert decision.outcome.request.legs[0] == Leg("acc_settle", "debit", 1_000)


def test_a_deposit_without_a_settlement_account_is_rejected_as_account_not_found() -> None:
    order = _order(kind="deposit", source_account_id=None, currency="EUR", destination_account_id="acc_e")
    decision = _decide(_book(), _context(), "approved", order)
    assert isinstance(decision.outcome, Rejected)
    assert decision.outcome.code == "account_not_found"


def test_an_exchange_posts_four_legs_through_the_exchange_accounts() -> None:
    order = _order(destination_account_id="acc_e", destination_amount=920, destination_currency="EUR")
    decision = _decide(_book(), _context(), "approved", order)
    assert isinstance(decision.outcome, Posted)
    assert decision.outcome.request.legs == (
        Leg("acc_a", "debit", 1_000, "USD"), Leg("acc_fx_usd", "credit", 1_000, "USD"),
        Leg("acc_fx_eur", "debit", 920, "EUR"), Leg("acc_e", "credit", 920, "EUR"),
    )


def test_a_review_holds_the_funds_and_announces_nothing() -> None:
    book, context = _book(), _context()
    decision = _decide(book, context, "review", _order(), review_id="rev_1")
    assert decision == Decision(None)
    hold_id = context.holds[(TENANT, "pay_1")]
    assert book.holds[hold_id].amount == 1_000
    assert book.accounts["acc_a"].available == 9_000
    assert book.accounts["acc_a"].posted == 10_000


def test_a_review_hold_carries_the_review_hold_timeout() -> None:
    book = _book()
    _decide(book, _context(), "review", _order(), review_id="rev_1")
    [posted] = book.result.outcomes
    assert isinstance(posted, Posted)
    assert (posted.request.phase, posted.request.timeout_seconds) == ("pending", HOLD_SECONDS)


def test_a_review_s_approval_posts_the_hold() -> None:
    book, context = _book(), _context()
    _decide(book, context, "review", _order(), review_id="rev_1")
    decision = _decide(book, context, "approved", _order(), review_id="rev_1")
    assert isinstance(decision.outcome, Posted)
    assert decision.outcome.request.phase == "post_pending"
    assert (book.accounts["acc_a"].posted, book.accounts["acc_b"].posted) == (9_000, 1_000)


def test_a_held_exchange_s_approval_posts_the_hold_and_the_destination_side() -> None:
    book, context = _book(), _context()
    order = _order(destination_account_id="acc_e", destination_amount=920, destination_currency="EUR")
    _decide(book, context, "review", order, review_id="rev_1")
    decision = _decide(book, context, "approved", order, review_id="rev_1")
    assert isinstance(decision.outcome, Posted)
    assert book.accounts["acc_e"].posted == 920
    assert book.accounts["acc_a"].posted == 9_000


def test_a_review_s_decline_voids_the_hold_and_announces_nothing() -> None:
    book, context = _book(), _context()
    _decide(book, context, "review", _order(), review_id="rev_1")
    decision = _decide(book, context, "declined", _order(), review_id="rev_1")
    assert decision == Decision(None)
    assert book.accounts["acc_a"].available == 10_000
    assert book.holds[context.holds[(TENANT, "pay_1")]].status == "voided"


def test_an_approval_of_a_hold_closed_already_says_so_with_the_hold_s_code() -> None:
    book, context = _book(), _context()
    _decide(book, context, "review", _order(), review_id="rev_1")
    _decide(book, context, "declined", _order(), review_id="rev_1")
    decision = _decide(book, context, "approved", _order(), review_id="rev_1")
    assert decision == Decision(None, "hold_closed_already", "hold_voided")


def test_a_second_screening_decision_is_skipped_as_already_decided() -> None:
    book, context = _book(), _context()
    _decide(book, context, "approved", _order())
    decision = _decide(book, context, "approved", _order())
    assert decision == Decision(None, "already_decided")
    assert book.accounts["acc_a"].posted == 9_000


def test_an_automatic_decline_moves_nothing_and_is_not_a_duplicate() -> None:
    book = _book()
    assert _decide(book, _context(), "declined", _order()) == Decision(None)
    assert book.result.outcomes == []


def _posted_original(context: OrderContext, book: Book) -> None:
    context.originals[(TENANT, "pay_1")] = PostedTransfer(
        "trf_orig", "pay_1", "USD", 1_000, (Leg("acc_a", "debit", 1_000), Leg("acc_b", "credit", 1_000)))
    book.refundable["trf_orig"] = 1_000
    book.accounts["acc_b"].credits_posted = 1_000


def test_a_refund_reverses_the_original_s_legs_for_its_amount() -> None:
    book, context = _book(), _context()
    _posted_original(context, book)
    refund = _order("pay_2", 400, kind="refund", source_account_id="acc_b", destination_account_id="acc_a",
                    refund_of="pay_1")
    decision = _decide(book, context, "approved", refund)
    assert isinstance(decision.outcome, Posted)
    assert decision.outcome.request.legs == (Leg("acc_a", "credit", 400, "USD"), Leg("acc_b", "debit", 400, "USD"))
    assert decision.outcome.request.refund_of == "trf_orig"
    assert book.refundable["trf_orig"] == 600


def test_a_refund_past_what_is_left_is_rejected_whole() -> None:
    book, context = _book(), _context()
    _posted_original(context, book)
    book.refundable["trf_orig"] = 300
    refund = _order("pay_2", 400, kind="refund", source_account_id="acc_b", destination_account_id="acc_a",
                    refund_of="pay_1")
    decision = _decide(book, context, "approved", refund)
    assert isinstance(decision.outcome, Rejected)
    assert decision.outcome.code == "refund_exceeds_payment"


def test_a_refund_of_a_payment_never_posted_is_rejected_as_not_possible() -> None:
    refund = _order("pay_2", 400, kind="refund", refund_of="pay_9")
    decision = _decide(_book(), _context(), "approved", refund)
    assert isinstance(decision.outcome, Rejected)
    assert decision.outcome.code == "refund_not_possible"


def test_a_refund_under_review_is_never_held() -> None:
    refund = _order("pay_2", 400, kind="refund", refund_of="pay_1")
    book = _book()
    assert _decide(book, _context(), "review", refund, review_id="rev_1") == Decision(None)
    assert book.holds == {}


def test_moves_cover_both_sides_exchange_accounts_and_open_holds() -> None:
    context = _context()
    order = _order(destination_account_id="acc_e", destination_amount=920, destination_currency="EUR")
    hold = HoldState("trf_h", TENANT, "pay_7", "transfer", "acc_x", "acc_y", 5, "USD")
    wanted = moves([OrderSignal("approved", order, None)], context, {"trf_h": hold})
    assert wanted == [
        ("acc_a", "debit"), ("acc_e", "credit"), ("acc_fx_usd", "credit"), ("acc_fx_eur", "debit"),
        ("acc_x", "debit"), ("acc_x", "credit"), ("acc_y", "debit"), ("acc_y", "credit"),
    ]


def test_a_refund_of_an_exchange_reports_what_it_took_in_the_payee_s_currency() -> None:
    refund = _order("pay_2", 1_000, kind="refund", source_account_id="acc_e", destination_account_id="acc_a")
    request = simple_transfer(transfer_id="t", tenant_id=TENANT, external_ref="pay_2", kind="refund",
                                     debit_account="acc_b", credit_account="acc_a", amount=1, currency="USD")
    assert taken_in_another_currency(refund, request) is None
    legs = (Leg("acc_e", "debit", 920, "EUR"), Leg("acc_fx_eur", "credit", 920, "EUR"),
            Leg("acc_fx_usd", "debit", 1_000, "USD"), Leg("acc_a", "credit", 1_000, "USD"))
    exchange_refund = TransferRequest("t", TENANT, "pay_2", "refund", "USD", legs)
    assert taken_in_another_currency(refund, exchange_refund) == (920, "EUR")
    assert taken_in_another_currency(_order(), exchange_refund) is None


def test_an_expired_review_hold_fails_its_payment_keyed_by_the_payer() -> None:
    hold = HoldState("trf_h", TENANT, "pay_1", "transfer", "acc_a", "acc_b", 5, "USD")
    failed = expired_payment(hold)
    assert failed is not None
    event, key = failed
    assert (event.payment_id, event.failure_code, key) == ("pay_1", "review_expired", "acc_a")


def test_an_expired_deposit_hold_is_keyed_by_the_account_paid_into() -> None:
    hold = HoldState("trf_h", TENANT, "pay_1", "deposit", "acc_settle", "acc_b", 5, "USD")
    failed = expired_payment(hold)
    assert failed is not None and failed[1] == "acc_b"


def test_an_expired_api_hold_fails_no_payment() -> None:
    hold = HoldState("trf_h", TENANT, "ref_1", "ledger", "acc_a", "acc_b", 5, "USD")  # kind of /v1/transfers
    assert expired_payment(hold) is None


def test_the_orders_module_does_no_io() -> None:
    source = Path(orders.__file__).read_text()
    imported = [n.module for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ImportFrom) and n.module]
    imported += [a.name for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Import) for a in n.names]
    assert [name for name in imported if not name.startswith(("paystream.contracts", "paystream.ledger.domain",
                                                               "__future__", "collections", "dataclasses",
                                                               "typing"))] == []


def test_plain_approvals_and_reviews_of_transfers_need_only_the_decisions() -> None:
    signals = [OrderSignal("approved", _order("pay_1"), None),
               OrderSignal("review", _order("pay_2"), "rev_2"),
               OrderSignal("declined", _order("pay_3"), None)]
    assert orders.needs_only_decisions(signals)


def test_a_review_s_resolution_needs_its_hold_looked_up_and_locked_first() -> None:
    for verb in ("approved", "declined"):
        signals = [OrderSignal("approved", _order("pay_1"), None), OrderSignal(verb, _order("pay_2"), "rev_2")]
        assert not orders.needs_only_decisions(signals)  # type: ignore[arg-type]


def test_deposits_refunds_and_exchanges_need_their_accounts_looked_up_first() -> None:
    for order in (_order(kind="deposit", source_account_id=None),
                  _order(kind="refund", refund_of="pay_0"),
                  _order(destination_account_id="acc_e", destination_amount=920, destination_currency="EUR")):
        assert not orders.needs_only_decisions([OrderSignal("approved", order, None)])
