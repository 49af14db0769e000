"""Double-entry rules, pure: balances, legs that sum to zero, overdraft checks.

No I/O here. The store loads the accounts a batch touches (locked), `post_batch`
decides each transfer in order against running balances, and the store writes the
outcome in one transaction.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

Direction = Literal["debit", "credit"]
NormalBalance = Literal["debit", "credit"]


@dataclass(slots=True)
class AccountState:
    """An account's identity and running totals, as the ledger holds them."""

    id: str
    tenant_id: str
    currency: str
    normal_balance: NormalBalance
    allow_overdraft: bool
    debits_posted: int = 0
    credits_posted: int = 0
    debits_pending: int = 0
    credits_pending: int = 0

    @property
    def posted(self) -> int:
        """Posted balance, positive in the account's normal direction."""
        if self.normal_balance == "credit":
            return self.credits_posted - self.debits_posted
        return self.debits_posted - self.credits_posted

    @property
    def pending(self) -> int:
        """Funds held against the account (pending movements away from its normal side)."""
        return self.debits_pending if self.normal_balance == "credit" else self.credits_pending

    @property
    def available(self) -> int:
        """What can still be spent: posted minus what is held."""
        return self.posted - self.pending

    def would_overdraw(self, direction: Direction, amount: int) -> bool:
        """True when moving ``amount`` in ``direction`` takes a no-overdraft account below zero."""
        if self.allow_overdraft or direction == self.normal_balance:
            return False
        return self.available - amount < 0

    def apply(self, direction: Direction, amount: int) -> None:
        if direction == "debit":
            self.debits_posted += amount
        else:
            self.credits_posted += amount


@dataclass(frozen=True, slots=True)
class Leg:
    account_id: str
    direction: Direction
    amount: int


@dataclass(frozen=True, slots=True)
class TransferRequest:
    """A transfer to post: ``external_ref`` (the payment id) makes it idempotent."""

    transfer_id: str
    tenant_id: str
    external_ref: str
    kind: str
    currency: str
    legs: tuple[Leg, ...]

    @property
    def amount(self) -> int:
        return sum(leg.amount for leg in self.legs if leg.direction == "debit")


@dataclass(frozen=True, slots=True)
class Posted:
    request: TransferRequest


@dataclass(frozen=True, slots=True)
class Rejected:
    request: TransferRequest
    code: str
    detail: str


Outcome = Posted | Rejected


def simple_transfer(
    *,
    transfer_id: str,
    tenant_id: str,
    external_ref: str,
    kind: str,
    debit_account: str,
    credit_account: str,
    amount: int,
    currency: str,
) -> TransferRequest:
    """A two-leg transfer: ``amount`` from ``debit_account`` to ``credit_account``."""
    return TransferRequest(
        transfer_id=transfer_id,
        tenant_id=tenant_id,
        external_ref=external_ref,
        kind=kind,
        currency=currency,
        legs=(
            Leg(debit_account, "debit", amount),
            Leg(credit_account, "credit", amount),
        ),
    )


def check_balanced(legs: Iterable[Leg]) -> bool:
    """Debits equal credits, and every leg moves a positive amount."""
    total = 0
    for leg in legs:
        if leg.amount <= 0:
            return False
        total += leg.amount if leg.direction == "debit" else -leg.amount
    return total == 0


@dataclass(slots=True)
class BatchResult:
    outcomes: list[Outcome] = field(default_factory=list)
    touched: set[str] = field(default_factory=set)


def post_batch(accounts: dict[str, AccountState], requests: Iterable[TransferRequest]) -> BatchResult:
    """Decide each request in order against running balances; mutates ``accounts``.

    A request is rejected whole (nothing of it applied) when an account is unknown or
    belongs to another tenant, a currency differs, the legs do not balance, the source
    is the destination, or a no-overdraft account would go below zero.
    """
    result = BatchResult()
    for request in requests:
        rejection = _validate(accounts, request)
        if rejection is not None:
            result.outcomes.append(rejection)
            continue
        for leg in request.legs:
            accounts[leg.account_id].apply(leg.direction, leg.amount)
            result.touched.add(leg.account_id)
        result.outcomes.append(Posted(request))
    return result


def _validate(accounts: dict[str, AccountState], request: TransferRequest) -> Rejected | None:
    if not check_balanced(request.legs):
        return Rejected(request, "unbalanced_transfer", "debits and credits differ")
    if len({leg.account_id for leg in request.legs}) < 2:
        return Rejected(request, "same_account", "a transfer needs two different accounts")
    for leg in request.legs:
        account = accounts.get(leg.account_id)
        if account is None or account.tenant_id != request.tenant_id:
            return Rejected(request, "account_not_found", f"unknown account {leg.account_id}")
        if account.currency != request.currency:
            return Rejected(
                request, "currency_mismatch",
                f"account {account.id} holds {account.currency}, not {request.currency}",
            )
    # Net effect per account, so an account debited and credited in one transfer is judged once.
    net: dict[str, int] = {}
    for leg in request.legs:
        sign = 1 if leg.direction == "debit" else -1
        net[leg.account_id] = net.get(leg.account_id, 0) + sign * leg.amount
    for account_id, amount in net.items():
        if amount > 0 and accounts[account_id].would_overdraw("debit", amount):
            return Rejected(request, "insufficient_funds", f"account {account_id} lacks funds")
        if amount < 0 and accounts[account_id].would_overdraw("credit", -amount):
            return Rejected(request, "insufficient_funds", f"account {account_id} over its limit")
    return None
