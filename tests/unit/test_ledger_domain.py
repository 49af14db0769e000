"""Double entry: which transfers post, which are refused, and the invariants of a batch."""

from __future__ import annotations

from collections.abc import Iterable
from itertools import count

from hypothesis import given
from hypothesis import strategies as st

from paystream.ledger.domain import (
    AccountState,
    Leg,
    NormalBalance,
    Posted,
    Rejected,
    TransferRequest,
    check_balanced,
    post_batch,
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
