"""Double-entry rules, pure: balances, legs that sum to zero per currency, limits, holds.

No I/O here. The store loads what a batch touches (accounts and holds, locked), a
`Book` decides each command in order against running balances, and the store writes
the outcome in one transaction.

Three kinds of command:

* a transfer (`TransferRequest`): any number of legs, summing to zero in each currency.
  With ``phase="pending"`` it is a hold: exactly two legs in one currency, moving the
  amount into the accounts' *pending* totals, so the debited side cannot spend it;
* a hold action (`HoldAction`): post a pending transfer, in full or in part (the rest is
  released), void it, or expire it. A hold is closed by exactly one action;
* a refund: a transfer that reverses (part of) an earlier posted transfer; the book
  refuses refunds beyond what that transfer moved.

Every rejection leaves the book exactly as it was: nothing of a refused command applies.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

Direction = Literal["debit", "credit"]
NormalBalance = Literal["debit", "credit"]
Phase = Literal["posted", "pending", "post_pending", "void_pending", "expire_pending"]
HoldStatus = Literal["pending", "posted", "voided", "expired"]
HoldVerb = Literal["post", "void", "expire"]

# What each hold action writes as its transfer's phase, and the status it leaves the hold in.
_ACTION_PHASE: dict[str, Phase] = {
    "post": "post_pending", "void": "void_pending", "expire": "expire_pending",
}
_ACTION_STATUS: dict[str, HoldStatus] = {"post": "posted", "void": "voided", "expire": "expired"}


@dataclass(slots=True)
class AccountState:
    """An account's identity, limits and running totals, as the ledger holds them.

    ``lower_limit`` is the least available balance the account may show (in its normal
    direction): 0 for an account that forbids overdraft, a negative number for a credit
    line, ``None`` for no limit at all (only with ``allow_overdraft``).
    """

    id: str
    tenant_id: str
    currency: str
    normal_balance: NormalBalance
    allow_overdraft: bool
    debits_posted: int = 0
    credits_posted: int = 0
    debits_pending: int = 0
    credits_pending: int = 0
    lower_limit: int | None = None
    # How the store loaded it: ``baseline`` holds the totals as read when the row was read
    # without a lock (its changes are then written as deltas); ``folded`` when deltas were
    # folded into it, so it must be written back even if nothing else changed it.
    baseline: tuple[int, int, int, int] | None = None
    folded: bool = False

    @property
    def floor(self) -> int | None:
        """The least available balance allowed; ``None`` when there is none."""
        if self.lower_limit is not None:
            return self.lower_limit
        return None if self.allow_overdraft else 0

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
        """True when moving ``amount`` in ``direction`` takes the account below its floor."""
        floor = self.floor
        if floor is None or direction == self.normal_balance:
            return False
        return self.available - amount < floor

    def apply(self, direction: Direction, amount: int) -> None:
        if direction == "debit":
            self.debits_posted += amount
        else:
            self.credits_posted += amount

    def apply_pending(self, direction: Direction, amount: int) -> None:
        """Add (or, with a negative amount, release) a pending movement."""
        if direction == "debit":
            self.debits_pending += amount
        else:
            self.credits_pending += amount


@dataclass(frozen=True, slots=True)
class Leg:
    """One side of a transfer; ``currency`` None means the transfer's currency."""

    account_id: str
    direction: Direction
    amount: int
    currency: str | None = None


@dataclass(frozen=True, slots=True)
class TransferRequest:
    """A transfer to write: ``external_ref`` (e.g. the payment id) makes it idempotent.

    ``currency`` is the transfer's own currency: its legs' unless they say otherwise, and
    the one its ``amount`` is counted in. ``pending_id`` names the hold a hold action
    closes; ``refund_of`` the posted transfer a refund reverses.
    """

    transfer_id: str
    tenant_id: str
    external_ref: str
    kind: str
    currency: str
    legs: tuple[Leg, ...]
    phase: Phase = "posted"
    pending_id: str | None = None
    refund_of: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    timeout_seconds: int | None = None

    @property
    def amount(self) -> int:
        """The debits in the transfer's own currency."""
        return sum(
            leg.amount for leg in self.legs
            if leg.direction == "debit" and self.currency_of(leg) == self.currency
        )

    def currency_of(self, leg: Leg) -> str:
        return leg.currency or self.currency

    @property
    def writes_entries(self) -> bool:
        """Posted movements become entries; holds, voids and expiries only move pending totals."""
        return self.phase in ("posted", "post_pending")


@dataclass(slots=True)
class HoldState:
    """A pending transfer: two legs of one amount, and whether it is still open."""

    transfer_id: str
    tenant_id: str
    external_ref: str
    kind: str
    debit_account_id: str
    credit_account_id: str
    amount: int
    currency: str
    status: HoldStatus = "pending"


@dataclass(frozen=True, slots=True)
class HoldAction:
    """Post (``amount`` None = in full), void or expire the hold ``hold_id``."""

    transfer_id: str
    tenant_id: str
    external_ref: str
    hold_id: str
    verb: HoldVerb
    amount: int | None = None


@dataclass(frozen=True, slots=True)
class Posted:
    request: TransferRequest


@dataclass(frozen=True, slots=True)
class Rejected:
    request: TransferRequest | HoldAction
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
    phase: Phase = "posted",
    refund_of: str | None = None,
    timeout_seconds: int | None = None,
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
        phase=phase,
        refund_of=refund_of,
        timeout_seconds=timeout_seconds,
    )


def exchange_legs(
    *,
    source: str,
    source_amount: int,
    source_currency: str,
    source_exchange: str,
    destination: str,
    destination_amount: int,
    destination_currency: str,
    destination_exchange: str,
) -> tuple[Leg, ...]:
    """The four legs of a currency exchange, through one exchange account per currency.

    Each currency sums to zero on its own: the source pays into its currency's exchange
    account, and the destination's currency's exchange account pays the destination.
    """
    return (
        Leg(source, "debit", source_amount, source_currency),
        Leg(source_exchange, "credit", source_amount, source_currency),
        Leg(destination_exchange, "debit", destination_amount, destination_currency),
        Leg(destination, "credit", destination_amount, destination_currency),
    )


def refund_legs(legs: Iterable[Leg], currency: str, total: int, before: int, amount: int) -> tuple[Leg, ...]:
    """The legs that refund ``amount`` more of a payment that posted ``legs`` for ``total``
    (in ``currency``), after ``before`` was already refunded.

    Each leg is reversed by its share of the refund. Shares are cumulative, rounded half to
    even: a leg of n gets round(n * (before + amount) / total) - round(n * before / total), so
    partial refunds always add up to exactly n when the payment is fully refunded, whatever
    the rounding on the way. Legs of equal amount get equal shares, so each currency still
    sums to zero; for a plain two-leg payment every share is just ``amount``.
    """
    def share(n: int, part: int) -> int:
        q, r = divmod(n * part, total)
        return q + (1 if 2 * r > total or (2 * r == total and q % 2) else 0)

    out = []
    for leg in legs:
        moved = share(leg.amount, before + amount) - share(leg.amount, before)
        if moved > 0:
            opposite: Direction = "credit" if leg.direction == "debit" else "debit"
            out.append(Leg(leg.account_id, opposite, moved, leg.currency or currency))
    return tuple(out)


def check_balanced(legs: Iterable[Leg], currency: str | None = None) -> bool:
    """Debits equal credits in every currency, and every leg moves a positive amount."""
    totals: dict[str | None, int] = {}
    for leg in legs:
        if leg.amount <= 0:
            return False
        key = leg.currency or currency
        totals[key] = totals.get(key, 0) + (leg.amount if leg.direction == "debit" else -leg.amount)
    return all(total == 0 for total in totals.values())


ScreeningVerb = Literal["approved", "review", "declined"]
Step = Literal["post", "hold", "post_hold", "void_hold", "ignore"]


def screening_step(
    verb: ScreeningVerb, *, resolution: bool, decided: bool, held: bool, refund: bool = False
) -> Step:
    """What the ledger does with a fraud outcome for a payment.

    * An automatic **screening decision** (fraud's rules, or payments' screening deadline,
      which sends a payment to review when fraud is late): **the first one for a payment
      wins**. Once the payment is decided (posted, held or rejected), a later one, such as
      fraud's approval arriving after the deadline held the funds, changes nothing: the hold
      waits for its review. An approval posts; a review holds (a refund is never held: it
      waits for its approval); a decline holds nothing and moves nothing.
    * A **resolution of a review** (it names the review: a reviewer's decision, or fraud's
      re-screen once a dependency is back) closes the hold: an approval posts it, a decline
      voids it. An approval with no hold posts the payment unless it was decided already
      (a refund's review, or a review resolved before the ledger saw it).

    ``decided``: the payment has a transfer or a rejection; ``held``: one of them is its hold.
    """
    if resolution:
        if held:
            return "post_hold" if verb == "approved" else "void_hold"
        return "post" if verb == "approved" and not decided else "ignore"
    if decided:
        return "ignore"
    if verb == "approved":
        return "post"
    if verb == "review":
        return "ignore" if refund else "hold"
    return "ignore"


@dataclass(slots=True)
class BatchResult:
    outcomes: list[Outcome] = field(default_factory=list)
    touched: set[str] = field(default_factory=set)
    closed_holds: dict[str, tuple[HoldStatus, str]] = field(default_factory=dict)
    """Hold id → (new status, id of the transfer that closed it)."""


@dataclass(slots=True)
class Book:
    """The accounts, holds and refund allowances a batch works on; mutated as commands apply.

    ``refundable`` maps a posted transfer's id to what can still be refunded of it.
    """

    accounts: dict[str, AccountState]
    holds: dict[str, HoldState] = field(default_factory=dict)
    refundable: dict[str, int] = field(default_factory=dict)
    result: BatchResult = field(default_factory=BatchResult)

    def run(self, commands: Iterable[TransferRequest | HoldAction]) -> BatchResult:
        for command in commands:
            if isinstance(command, HoldAction):
                self.act_on_hold(command)
            else:
                self.transfer(command)
        return self.result

    # ------------------------------------------------------------------ transfers

    def transfer(self, request: TransferRequest) -> Outcome:
        rejection = self._validate(request)
        if rejection is not None:
            return self._reject(rejection)
        for leg in request.legs:
            account = self.accounts[leg.account_id]
            if request.phase == "pending":
                account.apply_pending(leg.direction, leg.amount)
            else:
                account.apply(leg.direction, leg.amount)
            self.result.touched.add(leg.account_id)
        if request.phase == "pending":
            debit = next(leg for leg in request.legs if leg.direction == "debit")
            credit = next(leg for leg in request.legs if leg.direction == "credit")
            self.holds[request.transfer_id] = HoldState(
                request.transfer_id, request.tenant_id, request.external_ref, request.kind,
                debit.account_id, credit.account_id, debit.amount, request.currency,
            )
        if request.refund_of is not None:
            self.refundable[request.refund_of] -= request.amount
        return self._accept(request)

    def _validate(self, request: TransferRequest) -> Rejected | None:
        if request.phase not in ("posted", "pending"):
            return Rejected(request, "invalid_phase", "hold actions go through act_on_hold")
        if not check_balanced(request.legs, request.currency):
            return Rejected(request, "unbalanced_transfer",
                            "debits and credits differ in at least one currency")
        if len({leg.account_id for leg in request.legs}) < 2:
            return Rejected(request, "same_account", "a transfer needs two different accounts")
        if request.phase == "pending" and (
            len(request.legs) != 2 or any(leg.currency not in (None, request.currency)
                                          for leg in request.legs)
        ):
            return Rejected(request, "invalid_hold", "a pending transfer has two legs in one currency")
        for leg in request.legs:
            account = self.accounts.get(leg.account_id)
            if account is None or account.tenant_id != request.tenant_id:
                return Rejected(request, "account_not_found", f"unknown account {leg.account_id}")
            if account.currency != request.currency_of(leg):
                return Rejected(
                    request, "currency_mismatch",
                    f"account {account.id} holds {account.currency}, not {request.currency_of(leg)}",
                )
        if request.refund_of is not None:
            room = self.refundable.get(request.refund_of)
            if room is None:
                return Rejected(request, "refund_not_possible",
                                f"transfer {request.refund_of} was not posted")
            if request.amount > room:
                return Rejected(request, "refund_exceeds_payment",
                                f"only {room} of the payment is left to refund")
        # Net effect per account, so an account debited and credited in one transfer is judged once.
        net: dict[str, int] = {}
        for leg in request.legs:
            sign = 1 if leg.direction == "debit" else -1
            net[leg.account_id] = net.get(leg.account_id, 0) + sign * leg.amount
        for account_id, amount in net.items():
            account = self.accounts[account_id]
            if amount > 0 and account.would_overdraw("debit", amount):
                return Rejected(request, "insufficient_funds", f"account {account_id} lacks funds")
            if amount < 0 and account.would_overdraw("credit", -amount):
                return Rejected(request, "insufficient_funds", f"account {account_id} over its limit")
        return None

    # ------------------------------------------------------------------ holds

    def act_on_hold(self, action: HoldAction) -> Outcome:
        hold = self.holds.get(action.hold_id)
        if hold is None or hold.tenant_id != action.tenant_id:
            return self._reject(Rejected(action, "hold_not_found", f"no pending transfer {action.hold_id}"))
        if hold.status != "pending":
            return self._reject(Rejected(action, f"hold_{hold.status}",
                                         f"transfer {hold.transfer_id} is already {hold.status}"))
        # A post moves what it asks (all of the hold when it asks nothing); a void or an
        # expiry releases the whole hold.
        amount = action.amount if action.verb == "post" and action.amount is not None else hold.amount
        if not 0 < amount <= hold.amount:
            return self._reject(Rejected(action, "amount_exceeds_hold",
                                         f"a hold of {hold.amount} can post 1 to {hold.amount}"))
        debit, credit = self.accounts[hold.debit_account_id], self.accounts[hold.credit_account_id]
        debit.apply_pending("debit", -hold.amount)
        credit.apply_pending("credit", -hold.amount)
        if action.verb == "post":
            debit.apply("debit", amount)
            credit.apply("credit", amount)
        self.result.touched.update((debit.id, credit.id))
        hold.status = _ACTION_STATUS[action.verb]
        self.result.closed_holds[hold.transfer_id] = (hold.status, action.transfer_id)
        return self._accept(TransferRequest(
            transfer_id=action.transfer_id,
            tenant_id=action.tenant_id,
            external_ref=action.external_ref,
            kind=hold.kind,
            currency=hold.currency,
            legs=(Leg(hold.debit_account_id, "debit", amount), Leg(hold.credit_account_id, "credit", amount)),
            phase=_ACTION_PHASE[action.verb],
            pending_id=action.hold_id,
        ))

    # ------------------------------------------------------------------ outcomes

    def refuse(self, rejection: Rejected) -> Rejected:
        """Record a rejection decided outside the book (e.g. a refund of nothing)."""
        return self._reject(rejection)

    def _accept(self, request: TransferRequest) -> Posted:
        outcome = Posted(request)
        self.result.outcomes.append(outcome)
        return outcome

    def _reject(self, rejection: Rejected) -> Rejected:
        self.result.outcomes.append(rejection)
        return rejection


def post_batch(accounts: dict[str, AccountState], requests: Iterable[TransferRequest]) -> BatchResult:
    """Decide each transfer in order against running balances; mutates ``accounts``.

    A request is rejected whole (nothing of it applied) when an account is unknown or
    belongs to another tenant, a currency differs, the legs do not balance in every
    currency, the source is the destination, or an account would go below its floor.
    """
    return Book(accounts).run(requests)
