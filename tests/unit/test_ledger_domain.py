"""Double entry: which transfers post, which are refused, and the invariants of a batch."""

from __future__ import annotations

from collections.abc import Iterable
from itertools import count

import pytest
from hypothesis import given
from hypothesis import strategies as st

from paystream.ledger.domain import (
    AccountState,
    Book,
    HoldAction,
    HoldVerb,
    Leg,
    NormalBalance,
    Posted,
    Rejected,
    TransferRequest,
    check_balanced,
    exchange_legs,
    post_batch,
    refund_legs,
    screening_step,
    simple_transfer,
)

TENANT = "ten_a"
_serial = count()


def _account(
    account_id: str,
    *,
    normal: NormalBalance = "credit",
    overdraft: bool = False,
    currency: str = "USD",
    tenant: str = TENANT,
    balance: int = 0,
) -> AccountState:
    """An account holding ``balance`` in its normal direction."""
    account = AccountState(account_id, tenant, currency, normal, overdraft)
    if balance:
        account.apply(normal, balance)
    return account


def _book(*accounts: AccountState) -> dict[str, AccountState]:
    return {account.id: account for account in accounts}


def _move(
    debit: str, credit: str, amount: int, *, currency: str = "USD", tenant: str = TENANT
) -> TransferRequest:
    n = next(_serial)
    return simple_transfer(
        transfer_id=f"trf_{n}", tenant_id=tenant, external_ref=f"pay_{n}", kind="transfer",
        debit_account=debit, credit_account=credit, amount=amount, currency=currency,
    )


def _transfer(*legs: Leg, currency: str = "USD") -> TransferRequest:
    n = next(_serial)
    return TransferRequest(f"trf_{n}", TENANT, f"pay_{n}", "transfer", currency, tuple(legs))


def _only(accounts: dict[str, AccountState], request: TransferRequest) -> Posted | Rejected:
    outcomes = post_batch(accounts, [request]).outcomes
    assert len(outcomes) == 1
    return outcomes[0]


def _code(outcome: Posted | Rejected) -> str:
    return outcome.code if isinstance(outcome, Rejected) else "posted"


def _totals(accounts: dict[str, AccountState]) -> dict[str, tuple[int, int]]:
    return {a.id: (a.debits_posted, a.credits_posted) for a in accounts.values()}


# What posts.


def test_balanced_transfer_posts_and_moves_the_money() -> None:
    book = _book(_account("alice", balance=500), _account("bob"))
    outcome = _only(book, _move("alice", "bob", 200))
    assert isinstance(outcome, Posted)
    assert (book["alice"].available, book["bob"].available) == (300, 200)


def test_posting_reports_the_accounts_it_touched() -> None:
    book = _book(_account("alice", balance=500), _account("bob"), _account("carol"))
    result = post_batch(book, [_move("alice", "bob", 200)])
    assert result.touched == {"alice", "bob"}


def test_transfer_may_spend_exactly_the_available_balance() -> None:
    book = _book(_account("alice", balance=500), _account("bob"))
    assert isinstance(_only(book, _move("alice", "bob", 500)), Posted)
    assert book["alice"].available == 0


def test_multi_leg_transfer_that_balances_posts() -> None:
    book = _book(_account("alice", balance=500), _account("bob"), _account("fees"))
    request = _transfer(
        Leg("alice", "debit", 100), Leg("bob", "credit", 97), Leg("fees", "credit", 3)
    )
    assert isinstance(_only(book, request), Posted)
    assert (book["bob"].available, book["fees"].available) == (97, 3)


# What is refused, whole.


def test_unbalanced_transfer_is_rejected() -> None:
    book = _book(_account("alice", balance=500), _account("bob"))
    request = _transfer(Leg("alice", "debit", 100), Leg("bob", "credit", 90))
    assert _code(_only(book, request)) == "unbalanced_transfer"


def test_zero_amount_transfer_is_rejected_as_unbalanced() -> None:
    book = _book(_account("alice", balance=500), _account("bob"))
    assert _code(_only(book, _move("alice", "bob", 0))) == "unbalanced_transfer"


def test_negative_amount_transfer_is_rejected_as_unbalanced() -> None:
    book = _book(_account("alice", balance=500), _account("bob"))
    assert _code(_only(book, _move("alice", "bob", -100))) == "unbalanced_transfer"


def test_check_balanced_refuses_a_non_positive_leg_even_if_totals_match() -> None:
    legs = [Leg("a", "debit", 0), Leg("b", "credit", 0)]
    assert not check_balanced(legs)


def test_transfer_to_an_unknown_account_is_rejected() -> None:
    book = _book(_account("alice", balance=500))
    assert _code(_only(book, _move("alice", "nobody", 100))) == "account_not_found"


def test_transfer_from_an_unknown_account_is_rejected() -> None:
    book = _book(_account("bob"))
    assert _code(_only(book, _move("nobody", "bob", 100))) == "account_not_found"


def test_transfer_touching_another_tenants_account_is_rejected_as_not_found() -> None:
    book = _book(_account("alice", balance=500), _account("bob", tenant="ten_b"))
    assert _code(_only(book, _move("alice", "bob", 100))) == "account_not_found"


def test_transfer_in_a_currency_an_account_does_not_hold_is_rejected() -> None:
    book = _book(_account("alice", balance=500), _account("bob", currency="EUR"))
    assert _code(_only(book, _move("alice", "bob", 100))) == "currency_mismatch"


def test_transfer_from_an_account_to_itself_is_rejected() -> None:
    book = _book(_account("alice", balance=500))
    assert _code(_only(book, _move("alice", "alice", 100))) == "same_account"


def test_transfer_with_no_legs_is_rejected() -> None:
    book = _book(_account("alice", balance=500))
    assert isinstance(_only(book, _transfer()), Rejected)


def test_transfer_beyond_the_available_balance_is_rejected() -> None:
    book = _book(_account("alice", balance=500), _account("bob"))
    assert _code(_only(book, _move("alice", "bob", 501))) == "insufficient_funds"


def test_rejected_transfer_changes_no_account() -> None:
    book = _book(_account("alice", balance=500), _account("bob"))
    before = _totals(book)
    _only(book, _move("alice", "bob", 501))
    assert _totals(book) == before


def test_rejected_multi_leg_transfer_applies_none_of_its_legs() -> None:
    # alice can pay her part, bob cannot: alice must not be charged either.
    book = _book(_account("alice", balance=500), _account("bob", balance=10), _account("shop"))
    before = _totals(book)
    request = _transfer(
        Leg("alice", "debit", 100), Leg("bob", "debit", 100), Leg("shop", "credit", 200)
    )
    assert _code(_only(book, request)) == "insufficient_funds"
    assert _totals(book) == before


def test_rejected_transfer_is_not_reported_as_touched() -> None:
    book = _book(_account("alice", balance=500), _account("bob"))
    assert post_batch(book, [_move("alice", "bob", 501)]).touched == set()


def test_held_funds_cannot_be_spent() -> None:
    alice = _account("alice", balance=500)
    alice.debits_pending = 450  # a hold against the wallet
    book = _book(alice, _account("bob"))
    assert _code(_only(book, _move("alice", "bob", 100))) == "insufficient_funds"


def test_debit_normal_account_without_overdraft_cannot_be_credited_below_zero() -> None:
    book = _book(_account("cash", normal="debit", balance=100), _account("bob", balance=1000))
    # Crediting a debit-normal account lowers its balance.
    assert _code(_only(book, _move("bob", "cash", 101))) == "insufficient_funds"


def test_overdraft_account_may_go_negative() -> None:
    book = _book(_account("world", overdraft=True), _account("alice"))
    assert isinstance(_only(book, _move("world", "alice", 1_000)), Posted)
    assert book["world"].available == -1_000


def test_receiving_money_never_needs_funds() -> None:
    book = _book(_account("world", overdraft=True), _account("alice"))
    assert isinstance(_only(book, _move("world", "alice", 1)), Posted)


# Running balances within one batch.


def test_later_transfer_in_a_batch_spends_what_an_earlier_one_brought_in() -> None:
    book = _book(_account("world", overdraft=True), _account("alice"), _account("bob"))
    result = post_batch(book, [_move("world", "alice", 100), _move("alice", "bob", 100)])
    assert [_code(o) for o in result.outcomes] == ["posted", "posted"]


def test_later_transfer_in_a_batch_sees_what_an_earlier_one_spent() -> None:
    book = _book(_account("alice", balance=100), _account("bob"), _account("carol"))
    result = post_batch(book, [_move("alice", "bob", 100), _move("alice", "carol", 1)])
    assert [_code(o) for o in result.outcomes] == ["posted", "insufficient_funds"]


def test_a_rejection_does_not_stop_the_rest_of_the_batch() -> None:
    book = _book(_account("alice", balance=100), _account("bob"))
    result = post_batch(book, [_move("alice", "bob", 500), _move("alice", "bob", 100)])
    assert [_code(o) for o in result.outcomes] == ["insufficient_funds", "posted"]


def test_outcomes_come_back_in_request_order_with_their_requests() -> None:
    book = _book(_account("alice", balance=100), _account("bob"))
    requests = [_move("alice", "bob", 500), _move("alice", "bob", 100)]
    result = post_batch(book, requests)
    assert [o.request for o in result.outcomes] == requests


# Invariants, for any sequence of transfers among a few accounts.

ACCOUNTS: tuple[tuple[str, NormalBalance, bool], ...] = (
    ("world", "credit", True),  # overdraft: where money comes from
    ("bank", "debit", True),  # overdraft, debit-normal
    ("alice", "credit", False),
    ("bob", "credit", False),
    ("cash", "debit", False),  # debit-normal without overdraft
)
NAMES = [name for name, _, _ in ACCOUNTS]


def _fresh_book() -> dict[str, AccountState]:
    return _book(*(_account(n, normal=nb, overdraft=od) for n, nb, od in ACCOUNTS))


@st.composite
def transfers(draw: st.DrawFn) -> TransferRequest:
    """Mostly valid two-leg or three-leg transfers, with some malformed ones mixed in."""
    n = next(_serial)
    kind = draw(st.sampled_from(["two", "two", "two", "split", "broken"]))
    amount = draw(st.integers(min_value=1, max_value=1_000))
    if kind == "two":
        debit, credit = draw(st.lists(st.sampled_from(NAMES), min_size=2, max_size=2))
        legs: tuple[Leg, ...] = (Leg(debit, "debit", amount), Leg(credit, "credit", amount))
    elif kind == "split":
        debit = draw(st.sampled_from(NAMES))
        first, second = draw(st.lists(st.sampled_from(NAMES), min_size=2, max_size=2))
        part = draw(st.integers(min_value=0, max_value=amount))
        legs = (Leg(debit, "debit", amount + 1), Leg(first, "credit", part + 1))
        if amount - part > 0:
            legs += (Leg(second, "credit", amount - part),)
    else:
        legs = tuple(
            draw(
                st.lists(
                    st.builds(
                        Leg, st.sampled_from([*NAMES, "ghost"]),
                        st.sampled_from(["debit", "credit"]), st.integers(-5, 1_000),
                    ),
                    max_size=4,
                )
            )
        )
    # Now and then a foreign currency or tenant, which must be refused.
    currency = draw(st.sampled_from(["USD"] * 7 + ["EUR"]))
    tenant = draw(st.sampled_from([TENANT] * 7 + ["ten_b"]))
    return TransferRequest(f"trf_{n}", tenant, f"pay_{n}", "transfer", currency, legs)


batches = st.lists(transfers(), max_size=40)


def _posted(outcomes: Iterable[Posted | Rejected]) -> list[TransferRequest]:
    return [o.request for o in outcomes if isinstance(o, Posted)]


@given(requests=batches)
def test_transfers_never_change_the_sum_of_all_balances(requests: list[TransferRequest]) -> None:
    book = _fresh_book()
    post_batch(book, requests)
    assert sum(a.credits_posted - a.debits_posted for a in book.values()) == 0


@given(requests=batches)
def test_no_account_without_overdraft_ever_goes_below_zero(
    requests: list[TransferRequest],
) -> None:
    book = _fresh_book()
    for request in requests:  # checked after every transfer, not just at the end
        post_batch(book, [request])
        for account in book.values():
            if not account.allow_overdraft:
                assert account.available >= 0, account


@given(requests=batches)
def test_account_totals_are_the_sum_of_the_posted_legs(requests: list[TransferRequest]) -> None:
    book = _fresh_book()
    result = post_batch(book, requests)
    expected = {name: [0, 0] for name in NAMES}
    for request in _posted(result.outcomes):
        for leg in request.legs:
            expected[leg.account_id][0 if leg.direction == "debit" else 1] += leg.amount
    assert {k: list(v) for k, v in _totals(book).items()} == expected


@given(requests=batches)
def test_every_posted_transfer_balances_in_one_currency_and_tenant(
    requests: list[TransferRequest],
) -> None:
    book = _fresh_book()
    for request in _posted(post_batch(book, requests).outcomes):
        assert check_balanced(request.legs)
        for leg in request.legs:
            assert book[leg.account_id].currency == request.currency
            assert book[leg.account_id].tenant_id == request.tenant_id


@given(requests=batches)
def test_one_batch_decides_like_the_same_transfers_one_by_one(
    requests: list[TransferRequest],
) -> None:
    together, apart = _fresh_book(), _fresh_book()
    batch_codes = [_code(o) for o in post_batch(together, requests).outcomes]
    single_codes = [_code(_only(apart, request)) for request in requests]
    assert batch_codes == single_codes
    assert _totals(together) == _totals(apart)


# Holds, lower limits, refunds, currencies.


def _hold(debit: str, credit: str, amount: int) -> TransferRequest:
    n = next(_serial)
    return simple_transfer(
        transfer_id=f"trf_h{n}", tenant_id=TENANT, external_ref=f"pay_h{n}", kind="transfer",
        debit_account=debit, credit_account=credit, amount=amount, currency="USD", phase="pending",
    )


def _act(hold: TransferRequest, verb: HoldVerb, amount: int | None = None) -> HoldAction:
    n = next(_serial)
    return HoldAction(f"trf_a{n}", TENANT, hold.external_ref, hold.transfer_id, verb, amount)


def test_a_hold_moves_only_pending_totals_and_reduces_what_can_be_spent() -> None:
    book = Book(_book(_account("alice", balance=500), _account("bob")))
    hold = _hold("alice", "bob", 300)
    assert isinstance(book.transfer(hold), Posted)
    alice, bob = book.accounts["alice"], book.accounts["bob"]
    assert (alice.posted, alice.pending, alice.available) == (500, 300, 200)
    assert (bob.posted, bob.credits_pending) == (0, 300)
    assert _code(book.transfer(_move("alice", "carol", 201))) == "account_not_found"
    book.accounts["carol"] = _account("carol")
    assert _code(book.transfer(_move("alice", "carol", 201))) == "insufficient_funds"
    assert _code(book.transfer(_move("alice", "carol", 200))) == "posted"


def test_posting_part_of_a_hold_releases_the_rest() -> None:
    book = Book(_book(_account("alice", balance=500), _account("bob")))
    hold = _hold("alice", "bob", 300)
    book.transfer(hold)
    posted = book.act_on_hold(_act(hold, "post", 120))
    assert isinstance(posted, Posted) and posted.request.phase == "post_pending"
    assert posted.request.amount == 120 and posted.request.pending_id == hold.transfer_id
    alice, bob = book.accounts["alice"], book.accounts["bob"]
    assert (alice.posted, alice.pending, bob.posted, bob.credits_pending) == (380, 0, 120, 0)
    assert book.result.closed_holds[hold.transfer_id] == ("posted", posted.request.transfer_id)


@pytest.mark.parametrize(("first", "second", "code"), [
    ("post", "post", "hold_posted"), ("post", "void", "hold_posted"),
    ("void", "post", "hold_voided"), ("expire", "post", "hold_expired"),
    ("expire", "void", "hold_expired"),
])
def test_a_hold_is_closed_exactly_once(first: HoldVerb, second: HoldVerb, code: str) -> None:
    book = Book(_book(_account("alice", balance=500), _account("bob")))
    hold = _hold("alice", "bob", 300)
    book.transfer(hold)
    assert isinstance(book.act_on_hold(_act(hold, first)), Posted)
    before = _totals(book.accounts), book.accounts["alice"].pending
    assert _code(book.act_on_hold(_act(hold, second))) == code
    assert (_totals(book.accounts), book.accounts["alice"].pending) == before


def test_posting_more_than_was_held_or_an_unknown_hold_is_refused() -> None:
    book = Book(_book(_account("alice", balance=500), _account("bob")))
    hold = _hold("alice", "bob", 300)
    book.transfer(hold)
    assert _code(book.act_on_hold(_act(hold, "post", 301))) == "amount_exceeds_hold"
    assert _code(book.act_on_hold(HoldAction("trf_x", TENANT, "r", "trf_nope", "void"))) == "hold_not_found"
    assert book.accounts["alice"].pending == 300


def test_a_hold_has_two_legs_in_one_currency() -> None:
    book = Book(_book(_account("alice", balance=500), _account("bob"), _account("fees")))
    three = TransferRequest("trf_3", TENANT, "pay_3", "transfer", "USD",
                            (Leg("alice", "debit", 10), Leg("bob", "credit", 5), Leg("fees", "credit", 5)),
                            phase="pending")
    assert _code(book.transfer(three)) == "invalid_hold"


def test_a_lower_limit_is_a_credit_line_the_account_cannot_pass() -> None:
    line = AccountState("line", TENANT, "USD", "credit", True, lower_limit=-1_000)
    book = _book(line, _account("bob"))
    assert _code(_only(book, _move("line", "bob", 1_000))) == "posted"
    assert _code(_only(book, _move("line", "bob", 1))) == "insufficient_funds"
    assert line.available == -1_000


def test_a_debit_normal_account_is_limited_on_its_credit_side() -> None:
    loan = AccountState("loan", TENANT, "USD", "debit", False, debits_posted=300)
    book = _book(loan, _account("bob", overdraft=True))
    assert loan.posted == 300
    assert _code(_only(book, _move("bob", "loan", 301))) == "insufficient_funds"
    assert _code(_only(book, _move("bob", "loan", 300))) == "posted"


def test_refunds_never_exceed_what_the_transfer_moved_even_within_one_batch() -> None:
    accounts = _book(_account("alice", balance=1_000), _account("bob", balance=1_000))
    book = Book(accounts, refundable={"trf_paid": 500})

    def refund(amount: int) -> TransferRequest:
        n = next(_serial)
        return simple_transfer(transfer_id=f"trf_r{n}", tenant_id=TENANT, external_ref=f"pay_r{n}",
                               kind="refund", debit_account="bob", credit_account="alice",
                               amount=amount, currency="USD", refund_of="trf_paid")

    codes = [_code(o) for o in book.run([refund(300), refund(201), refund(200), refund(1)]).outcomes]
    assert codes == ["posted", "refund_exceeds_payment", "posted", "refund_exceeds_payment"]
    assert book.refundable["trf_paid"] == 0
    assert _code(Book(accounts).transfer(refund(1))) == "refund_not_possible"


def test_an_exchange_balances_in_each_currency_through_the_exchange_accounts() -> None:
    usd, eur = _account("usd", balance=1_000), _account("eur", currency="EUR")
    ex_usd = AccountState("ex_usd", TENANT, "USD", "debit", True)
    ex_eur = AccountState("ex_eur", TENANT, "EUR", "debit", True)
    legs = exchange_legs(source="usd", source_amount=1_000, source_currency="USD", source_exchange="ex_usd",
                         destination="eur", destination_amount=921, destination_currency="EUR",
                         destination_exchange="ex_eur")
    request = TransferRequest("trf_fx", TENANT, "pay_fx", "transfer", "USD", legs)
    assert check_balanced(legs) and request.amount == 1_000
    assert _code(_only(_book(usd, eur, ex_usd, ex_eur), request)) == "posted"
    assert (usd.posted, eur.posted, ex_usd.posted, ex_eur.posted) == (0, 921, -1_000, 921)


def test_legs_in_two_currencies_must_balance_in_each() -> None:
    book = _book(_account("usd", balance=100), _account("eur", currency="EUR"))
    request = TransferRequest("trf_m", TENANT, "pay_m", "transfer", "USD",
                              (Leg("usd", "debit", 100), Leg("eur", "credit", 100, "EUR")))
    assert _code(_only(book, request)) == "unbalanced_transfer"


def test_refund_shares_of_an_exchange_add_up_exactly_whatever_the_partial_refunds() -> None:
    legs = exchange_legs(source="usd", source_amount=10_000, source_currency="USD", source_exchange="ex_usd",
                         destination="eur", destination_amount=9_215, destination_currency="EUR",
                         destination_exchange="ex_eur")
    refunded, back = 0, {"USD": 0, "EUR": 0}
    for part in (1, 3_332, 2, 4_999, 1_666):
        reversed_legs = refund_legs(legs, "USD", 10_000, refunded, part)
        assert check_balanced(reversed_legs)
        assert {leg.account_id for leg in reversed_legs if leg.direction == "debit"} <= {"eur", "ex_usd"}
        for leg in reversed_legs:
            if leg.account_id in ("usd", "eur"):
                back[leg.currency or "USD"] += leg.amount
        refunded += part
    assert refunded == 10_000 and back == {"USD": 10_000, "EUR": 9_215}


def test_a_two_leg_refund_reverses_exactly_the_amount_asked() -> None:
    legs = (Leg("alice", "debit", 500), Leg("bob", "credit", 500))
    assert refund_legs(legs, "USD", 500, 200, 123) == (
        Leg("alice", "credit", 123, "USD"), Leg("bob", "debit", 123, "USD"))


# What the ledger does with fraud outcomes: the first screening decision for a payment wins;
# only a review's resolution closes its hold.


def test_a_first_automatic_approval_posts_the_payment() -> None:
    assert screening_step("approved", resolution=False, decided=False, held=False) == "post"


def test_a_first_automatic_review_holds_the_funds() -> None:
    assert screening_step("review", resolution=False, decided=False, held=False) == "hold"


def test_an_automatic_approval_after_the_deadline_held_the_funds_changes_nothing() -> None:
    # The deadline's review came first: fraud's late approval must not post the hold.
    assert screening_step("approved", resolution=False, decided=True, held=True) == "ignore"


@pytest.mark.parametrize("verb", ["approved", "review", "declined"])
def test_any_automatic_decision_after_the_first_changes_nothing(verb: str) -> None:
    for held in (False, True):
        assert screening_step(verb, resolution=False, decided=True, held=held) == "ignore"  # type: ignore[arg-type]


def test_an_automatic_decline_moves_nothing() -> None:
    assert screening_step("declined", resolution=False, decided=False, held=False) == "ignore"


def test_a_reviewers_approval_posts_the_hold() -> None:
    assert screening_step("approved", resolution=True, decided=True, held=True) == "post_hold"


def test_a_reviewers_decline_voids_the_hold() -> None:
    assert screening_step("declined", resolution=True, decided=True, held=True) == "void_hold"


def test_a_resolution_of_a_payment_already_posted_changes_nothing() -> None:
    # fraud's approval reached the ledger before the deadline's review did: it posted, and
    # the re-screen of the deadline's review comes too late to move anything.
    assert screening_step("approved", resolution=True, decided=True, held=False) == "ignore"
    assert screening_step("declined", resolution=True, decided=True, held=False) == "ignore"


def test_a_resolution_before_its_review_reached_the_ledger_posts_once() -> None:
    assert screening_step("approved", resolution=True, decided=False, held=False) == "post"
    assert screening_step("review", resolution=False, decided=True, held=False) == "ignore"


def test_a_refund_is_never_held() -> None:
    assert screening_step("review", resolution=False, decided=False, held=False, refund=True) == "ignore"
