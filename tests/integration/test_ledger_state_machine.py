"""Hypothesis drives the real ledger store on PostgreSQL through random sequences of
transfers (two legs and many), holds, partial posts, voids, expiries, refunds, exchanges and
the folding of balance deltas into account rows.

A plain model written apart from the ledger's domain says what each step must do (post or
refuse) and what every balance must then be. After every step: the store agreed with the
model, every account's balance equals the sum of its entries, and `paystream ledger verify`
passes over the whole schema (hash chain, transfers balanced per currency, limits, holds).

The state machine is synchronous (Hypothesis' stateful API), so it runs the store on its
own event loop and its own connection, logged in as the ledger service's role.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import asyncpg
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from paystream.contracts.ids import new_id
from paystream.ledger.domain import (
    Book,
    HoldAction,
    Leg,
    Posted,
    TransferRequest,
    exchange_legs,
    simple_transfer,
)
from paystream.ledger.store import LedgerStore
from paystream.ledger.verify import verify_connection
from paystream.ledger.workers import HoldSweeper
from paystream.platform.db import _init_connection
from paystream.platform.migrations import migrate, role_name
from paystream.platform.outbox import Outbox
from tests.conftest import with_credentials

T = TypeVar("T")
AMOUNTS = st.integers(min_value=1, max_value=2_000)


@dataclass
class ModelAccount:
    """What the model expects of one account, in its normal direction."""

    id: str
    currency: str
    normal: str
    floor: int | None
    posted: int = 0
    pending: int = 0

    def change(self, direction: str, amount: int) -> int:
        """How ``amount`` moved in ``direction`` changes the balance."""
        return amount if direction == self.normal else -amount


@dataclass
class ModelHold:
    id: str
    debit: str
    credit: str
    amount: int
    expires_at: datetime
    open: bool = True


@dataclass
class ModelPosting:
    """A posted two-leg transfer a refund can reverse."""

    id: str
    debit: str
    credit: str
    amount: int
    refunded: int = 0


@dataclass
class World:
    """The real side: the store on its own loop and connection."""

    loop: asyncio.AbstractEventLoop
    conn: asyncpg.Connection
    admin: asyncpg.Connection
    schema: str
    store: LedgerStore = field(default_factory=LedgerStore)

    def run(self, work: Callable[[], Awaitable[T]]) -> T:
        return self.loop.run_until_complete(work())


class LedgerMachine(RuleBasedStateMachine):
    world: World  # set by the test before the machine runs

    holds = Bundle("holds")
    postings = Bundle("postings")

    def __init__(self) -> None:
        super().__init__()
        self.accounts: dict[str, ModelAccount] = {}
        self.usd: list[str] = []
        self.clock = datetime.now(UTC)
        self.made_holds: list[ModelHold] = []
        self.tenant = "ten_" + secrets.token_hex(8)  # each run its own tenant, so its own exchange accounts

    # ------------------------------------------------------------------ helpers

    def _account(self, currency: str, *, overdraft: bool, lower_limit: int | None,
                 normal: str = "credit") -> str:
        async def make() -> str:
            row = await self.world.store.create_account(
                self.world.conn, tenant_id=self.tenant, currency=currency, allow_overdraft=overdraft,
                owner_user_id=None, metadata={}, create_key=None, normal_balance=normal,  # type: ignore[arg-type]
                lower_limit=lower_limit,
            )
            return str(row["id"])
        account_id = self.world.run(make)
        floor = lower_limit if overdraft else 0
        self.accounts[account_id] = ModelAccount(account_id, currency, normal, floor)
        return account_id

    def _post(self, *commands: TransferRequest | HoldAction, now: datetime | None = None,
              held: str | None = None) -> list[bool]:
        """What the ledger consumer does: lock holds then accounts, decide, write; posted or not.

        The accounts are loaded with the legs' directions, as the consumer does, so a credit
        to a row another transaction holds is written as a balance delta. ``held`` is such a
        row: the admin connection holds it ``FOR NO KEY UPDATE`` while the commands post.
        """
        store, conn, admin = self.world.store, self.world.conn, self.world.admin

        async def work() -> list[bool]:
            blocker = admin.transaction()
            if held:
                await blocker.start()
                await admin.execute(f'SELECT 1 FROM "{self.world.schema}".accounts WHERE id = $1 '
                                    "FOR NO KEY UPDATE", held)
            try:
                async with conn.transaction():
                    holds = await store.lock_holds(conn, [c.hold_id for c in commands if isinstance(c, HoldAction)])
                    moves = [(leg.account_id, leg.direction)
                             for c in commands if isinstance(c, TransferRequest) for leg in c.legs]
                    moves += [(a, d) for h in holds.values() for a in (h.debit_account_id, h.credit_account_id)
                              for d in ("debit", "credit")]  # closing a hold moves both sides
                    accounts = await store.lock_accounts(conn, {a for a, _ in moves}, moves)  # type: ignore[misc]
                    refundable = await store.refundable(
                        conn, [c.refund_of for c in commands if isinstance(c, TransferRequest) and c.refund_of]
                    )
                    result = Book(accounts, holds, refundable).run(commands)
                    await store.write_batch(conn, accounts, result, now or datetime.now(UTC))
            finally:
                if held:
                    await blocker.rollback()
            return [isinstance(o, Posted) for o in result.outcomes]
        return self.world.run(work)

    def _fits(self, moves: dict[str, int]) -> bool:
        """Would these balance changes keep every account at or above its floor?"""
        for account_id, delta in moves.items():
            account = self.accounts[account_id]
            if delta < 0 and account.floor is not None and \
                    account.posted - account.pending + delta < account.floor:
                return False
        return True

    def _moves(self, legs: list[tuple[str, str, int]]) -> dict[str, int]:
        moves: dict[str, int] = {}
        for account_id, direction, amount in legs:
            moves[account_id] = moves.get(account_id, 0) + self.accounts[account_id].change(direction, amount)
        return moves

    # ------------------------------------------------------------------ rules

    @initialize()
    def open_accounts(self) -> None:
        self.source = self._account("USD", overdraft=True, lower_limit=None, normal="debit")
        self.usd = [
            self._account("USD", overdraft=False, lower_limit=None),
            self._account("USD", overdraft=False, lower_limit=None),
            self._account("USD", overdraft=True, lower_limit=-1_500),
        ]
        self.eur = self._account("EUR", overdraft=False, lower_limit=None)

    @rule(target=postings, to=st.integers(0, 2), amount=AMOUNTS)
    def fund(self, to: int, amount: int) -> ModelPosting:
        return self.transfer_between(-1, to, amount)

    @rule(target=postings, frm=st.integers(0, 2), to=st.integers(0, 2), amount=AMOUNTS)
    def transfer(self, frm: int, to: int, amount: int) -> ModelPosting:
        return self.transfer_between(frm, to, amount)

    @rule(target=postings, to=st.integers(0, 2), amount=AMOUNTS)
    def fund_while_the_row_is_held(self, to: int, amount: int) -> ModelPosting:
        """A payment into a wallet whose row another transaction holds: it posts at once, as a
        balance delta (migration 006), which the next lock of the row or the folder folds in."""
        posting = self.transfer_between(-1, to, amount, held=self.usd[to])
        deltas = self.world.run(lambda: self.world.conn.fetchval(
            "SELECT count(*) FROM balance_deltas WHERE account_id = $1", self.usd[to]))
        assert deltas > 0
        return posting

    def transfer_between(self, frm: int, to: int, amount: int, held: str | None = None) -> ModelPosting:
        debit = self.source if frm < 0 else self.usd[frm]
        credit = self.usd[to]
        request = simple_transfer(transfer_id=new_id("trf"), tenant_id=self.tenant, external_ref=new_id("pay"),
                                  kind="transfer", debit_account=debit, credit_account=credit,
                                  amount=amount, currency="USD")
        legs = [(debit, "debit", amount), (credit, "credit", amount)]
        expected = debit != credit and self._fits(self._moves(legs))
        assert self._post(request, held=held) == [expected]
        if expected:
            self._apply(legs)
        return ModelPosting(request.transfer_id, debit, credit, amount) if expected else \
            ModelPosting("", debit, credit, 0)

    @rule(frm=st.integers(0, 2), split=st.lists(AMOUNTS, min_size=2, max_size=4))
    def split_transfer(self, frm: int, split: list[int]) -> None:
        """One debit, several credits (one may be the debited account itself: net judged)."""
        debit = self.usd[frm]
        credits = [(self.usd[i % 3], "credit", n) for i, n in enumerate(split)]
        legs = [(debit, "debit", sum(split)), *credits]
        request = TransferRequest(new_id("trf"), self.tenant, new_id("pay"), "transfer", "USD",
                                  tuple(Leg(a, d, n) for a, d, n in legs))  # type: ignore[arg-type]
        expected = self._fits(self._moves(legs))
        assert self._post(request) == [expected]
        if expected:
            self._apply(legs)

    @rule(frm=st.integers(0, 2), amount=AMOUNTS, rate=st.sampled_from(["0.5", "0.9215", "1", "2"]))
    def exchange(self, frm: int, amount: int, rate: str) -> None:
        source = self.usd[frm]
        received = max(1, int(amount * float(rate)))
        store, conn = self.world.store, self.world.conn

        async def exchanges() -> dict[tuple[str, str], str]:
            await store.ensure_system(conn, "exchange", [(self.tenant, "USD"), (self.tenant, "EUR")])
            return await store.system_ids(conn, "exchange", [(self.tenant, "USD"), (self.tenant, "EUR")])
        ex = self.world.run(exchanges)
        for account_id, currency in ((ex[(self.tenant, "USD")], "USD"), (ex[(self.tenant, "EUR")], "EUR")):
            self.accounts.setdefault(account_id, ModelAccount(account_id, currency, "debit", None))
        legs = exchange_legs(source=source, source_amount=amount, source_currency="USD",
                             source_exchange=ex[(self.tenant, "USD")], destination=self.eur,
                             destination_amount=received, destination_currency="EUR",
                             destination_exchange=ex[(self.tenant, "EUR")])
        request = TransferRequest(new_id("trf"), self.tenant, new_id("pay"), "transfer", "USD", legs)
        moves = self._moves([(leg.account_id, leg.direction, leg.amount) for leg in legs])
        expected = self._fits(moves)
        assert self._post(request) == [expected]
        if expected:
            self._apply([(leg.account_id, leg.direction, leg.amount) for leg in legs])

    @rule(target=holds, frm=st.integers(-1, 2), to=st.integers(0, 2), amount=AMOUNTS,
          timeout=st.integers(1, 120))
    def hold(self, frm: int, to: int, amount: int, timeout: int) -> ModelHold:
        debit = self.source if frm < 0 else self.usd[frm]
        credit = self.usd[to]
        request = simple_transfer(transfer_id=new_id("trf"), tenant_id=self.tenant, external_ref=new_id("pay"),
                                  kind="transfer", debit_account=debit, credit_account=credit,
                                  amount=amount, currency="USD", phase="pending", timeout_seconds=timeout)
        expected = debit != credit and self._fits({debit: -amount})
        assert self._post(request, now=self.clock) == [expected]
        if not expected:
            return ModelHold("", debit, credit, amount, self.clock, open=False)
        self.accounts[debit].pending += amount if self.accounts[debit].normal == "credit" else 0
        self.accounts[credit].pending += amount if self.accounts[credit].normal == "debit" else 0
        made = ModelHold(request.transfer_id, debit, credit, amount, self.clock + timedelta(seconds=timeout))
        self.made_holds.append(made)
        return made

    def _release(self, hold: ModelHold) -> None:
        self.accounts[hold.debit].pending -= hold.amount if self.accounts[hold.debit].normal == "credit" else 0
        self.accounts[hold.credit].pending -= hold.amount if self.accounts[hold.credit].normal == "debit" else 0
        hold.open = False

    @rule(target=postings, hold=consumes(holds), part=st.none() | st.integers(1, 2_500))
    def post_hold(self, hold: ModelHold, part: int | None) -> ModelPosting:
        if not hold.id:
            return ModelPosting("", hold.debit, hold.credit, 0)
        action = HoldAction(new_id("trf"), self.tenant, "post", hold.id, "post", part)
        amount = hold.amount if part is None else part
        expected = hold.open and amount <= hold.amount
        assert self._post(action) == [expected]
        if not expected:
            return ModelPosting("", hold.debit, hold.credit, 0)
        self._release(hold)
        self._apply([(hold.debit, "debit", amount), (hold.credit, "credit", amount)])
        return ModelPosting(action.transfer_id, hold.debit, hold.credit, amount)

    @rule(hold=consumes(holds))
    def void_hold(self, hold: ModelHold) -> None:
        if not hold.id:
            return
        assert self._post(HoldAction(new_id("trf"), self.tenant, "void", hold.id, "void")) == [hold.open]
        if hold.open:
            self._release(hold)

    @rule(hold=holds)
    def act_on_a_closed_or_open_hold_twice(self, hold: ModelHold) -> None:
        """Voiding twice: the second is refused and changes nothing."""
        if not hold.id or not hold.open:
            return
        results = self._post(HoldAction(new_id("trf"), self.tenant, "v1", hold.id, "void"),
                             HoldAction(new_id("trf"), self.tenant, "v2", hold.id, "void"))
        assert results == [True, False]
        self._release(hold)

    @rule(seconds=st.integers(1, 90))
    def time_passes(self, seconds: int) -> None:
        """The ledger's sweeper expires every hold whose timeout has passed, and nothing else."""
        self.clock += timedelta(seconds=seconds)
        sweeper = HoldSweeper(_OneConnection(self.world.conn), self.world.store, Outbox(4),  # type: ignore[arg-type]
                              batch=10_000)
        self.world.run(lambda: sweeper.sweep_once(self.clock))
        for hold in self._open_holds():
            if hold.expires_at <= self.clock:
                self._release(hold)

    @rule()
    def fold_deltas(self) -> None:
        """The ledger's folder moves balance deltas into the rows: no total changes."""
        async def fold() -> None:
            async with self.world.conn.transaction():
                await self.world.store.fold_deltas(self.world.conn, 10_000)
        self.world.run(fold)

    def _open_holds(self) -> list[ModelHold]:
        # Every hold ever made, not the bundle: a rule may consume a hold it failed to close.
        return [h for h in self.made_holds if h.open and h.id]

    @rule(posting=postings, part=st.none() | st.integers(1, 2_500))
    def refund(self, posting: ModelPosting, part: int | None) -> None:
        if not posting.id:
            return
        amount = posting.amount - posting.refunded if part is None else part
        if amount <= 0:
            return
        request = simple_transfer(transfer_id=new_id("trf"), tenant_id=self.tenant, external_ref=new_id("pay"),
                                  kind="refund", debit_account=posting.credit, credit_account=posting.debit,
                                  amount=amount, currency="USD", refund_of=posting.id)
        legs = [(posting.credit, "debit", amount), (posting.debit, "credit", amount)]
        expected = amount <= posting.amount - posting.refunded and self._fits(self._moves(legs))
        assert self._post(request) == [expected]
        if expected:
            posting.refunded += amount
            self._apply(legs)

    def _apply(self, legs: list[tuple[str, str, int]]) -> None:
        for account_id, delta in self._moves(legs).items():
            self.accounts[account_id].posted += delta

    # ------------------------------------------------------------------ invariants

    @invariant()
    def store_matches_model_and_entries(self) -> None:
        if not self.accounts:
            return

        async def read() -> list[asyncpg.Record]:
            return await self.world.conn.fetch(
                "SELECT a.id, a.normal_balance, a.debits_posted, a.credits_posted, a.debits_pending, "
                "a.credits_pending, coalesce(sum(e.amount) FILTER (WHERE e.direction = 'debit'), 0) AS d, "
                "coalesce(sum(e.amount) FILTER (WHERE e.direction = 'credit'), 0) AS c "
                "FROM account_totals a LEFT JOIN entries e ON e.account_id = a.id "
                "WHERE a.id = ANY($1::text[]) GROUP BY a.id, a.normal_balance, a.debits_posted, "
                "a.credits_posted, a.debits_pending, a.credits_pending",
                list(self.accounts),
            )
        for row in self.world.run(read):
            model = self.accounts[row["id"]]
            sign = 1 if row["normal_balance"] == "debit" else -1
            posted = sign * (row["debits_posted"] - row["credits_posted"])
            pending = row["debits_pending"] if row["normal_balance"] == "credit" else row["credits_pending"]
            assert (row["d"], row["c"]) == (row["debits_posted"], row["credits_posted"]), row
            assert (posted, pending) == (model.posted, model.pending), (row, model)
            if model.floor is not None:
                assert posted - pending >= model.floor

    @invariant()
    def verify_passes(self) -> None:
        report = self.world.run(lambda: verify_connection(self.world.admin, self.world.schema))
        assert report.ok, str(report)


class _OneConnection:
    """Stands in for a pool: the sweeper acquires the machine's one connection."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    def acquire(self) -> Any:
        conn = self._conn

        class _Held:
            async def __aenter__(self) -> asyncpg.Connection:
                return conn

            async def __aexit__(self, *_: object) -> None:
                return None
        return _Held()


async def _open_world(loop: asyncio.AbstractEventLoop, postgres_url: str, schema: str) -> World:
    password = secrets.token_hex(16)
    admin = await asyncpg.connect(postgres_url)
    await migrate(admin, service="ledger", schema=schema, password=password)
    conn = await asyncpg.connect(with_credentials(postgres_url, role_name(schema), password))
    await _init_connection(conn)
    return World(loop, conn, admin, schema)


async def _close_world(world: World) -> None:
    await world.conn.close()
    role = role_name(world.schema)
    await world.admin.execute(f'DROP SCHEMA IF EXISTS "{world.schema}" CASCADE')
    await world.admin.execute("DELETE FROM paystream_meta.schema_migrations WHERE schema_name = $1",
                              world.schema)
    await world.admin.execute(f'DROP OWNED BY "{role}" CASCADE')
    await world.admin.execute(f'DROP ROLE "{role}"')
    await world.admin.close()


def test_random_ledger_histories_keep_every_invariant(postgres_url: str, uid: str) -> None:
    loop = asyncio.new_event_loop()
    world = loop.run_until_complete(_open_world(loop, postgres_url, f"{uid}_ledger"))
    LedgerMachine.world = world
    try:
        run_state_machine_as_test(LedgerMachine, settings=settings(
            max_examples=25, stateful_step_count=30, deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        ))
    finally:
        loop.run_until_complete(_close_world(world))
        loop.close()
