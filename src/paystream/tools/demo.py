"""`paystream demo`: show a running stack doing real work, then prove the money adds up.

Against the stack of ``home`` it registers a local webhook receiver, creates wallets,
funds them with deposits, and sends a mix of transfers, each built for an outcome:

* ``ordinary``: small amounts between funded wallets, which succeed;
* ``over_limit``: above the fraud amount limit, declined;
* ``review``: in the review band, then approved or declined here (about half each);
* ``no_funds``: from wallets never funded, failed with ``insufficient_funds``;
* ``velocity_burst``: one wallet sends more than the velocity limit in a burst, so the
  last of them are declined.

It ends with tables: final statuses, each scenario against what it should have done,
throughput and latency, webhooks, a client-side balance check of every wallet, and the
database invariants. The demo passes only when every check does.
"""

from __future__ import annotations

import itertools
import math
import os
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from rich.console import Console
from rich.table import Table

from paystream.platform.checks import Check, CheckReport
from paystream.platform.config import load_settings
from paystream.tools.client import PaystreamClient, StackInfo
from paystream.tools.invariants import check_invariants
from paystream.tools.load import EngineOptions, LoadEngine
from paystream.tools.load_results import LoadResult, PaymentSpec, Tracked
from paystream.tools.load_runs import (
    bounded_gather,
    create_wallets,
    outcome_table,
    performance_table,
    registered_receiver,
    run_with_progress,
)
from paystream.tools.receiver import WebhookReceiver

SCENARIOS = ("ordinary", "over_limit", "review", "no_funds", "velocity_burst")
SENDS_PER_WALLET = 12  # ordinary wallets each send about this many: well under the velocity limit
DEPOSITS_PER_WALLET = 3
SENDS_PER_UNFUNDED_WALLET = 5


@dataclass(frozen=True, slots=True)
class FraudLimits:
    """The fraud rules the stack runs with (from the same settings the services read)."""

    amount_limit: int
    review_threshold: int
    velocity_limit: int

    @classmethod
    def from_settings(cls) -> FraudLimits:
        settings = load_settings()
        return cls(settings.fraud_amount_limit, settings.fraud_review_threshold,
                   settings.fraud_velocity_limit)

    @property
    def largest_deposit(self) -> int:
        """The largest amount that is neither reviewed nor declined by amount."""
        return self.review_threshold - 1


@dataclass(frozen=True, slots=True)
class DemoPlan:
    """How many transfers of each scenario, and how many wallets they need."""

    ordinary: int
    over_limit: int
    review: int
    no_funds: int
    burst: int

    @classmethod
    def for_payments(cls, payments: int, limits: FraudLimits) -> DemoPlan:
        over_limit = max(5, round(payments * 0.02))
        review = max(6, min(40, round(payments * 0.02)))
        no_funds = max(5, round(payments * 0.03))
        burst = limits.velocity_limit + 10
        ordinary = max(1, payments - over_limit - review - no_funds - burst)
        return cls(ordinary, over_limit, review, no_funds, burst)

    @property
    def total(self) -> int:
        return self.ordinary + self.over_limit + self.review + self.no_funds + self.burst

    @property
    def ordinary_wallets(self) -> int:
        return max(10, math.ceil((self.ordinary + self.over_limit) / SENDS_PER_WALLET))

    @property
    def unfunded_wallets(self) -> int:
        return math.ceil(self.no_funds / SENDS_PER_UNFUNDED_WALLET)


@dataclass(frozen=True, slots=True)
class Wallets:
    """The wallets of one demo run, by role."""

    ordinary: list[str]
    review: list[str]
    unfunded: list[str]
    burst: str

    def funded(self) -> list[str]:
        return [*self.ordinary, *self.review, self.burst]

    def all(self) -> list[str]:
        return [*self.funded(), *self.unfunded]


# -- planning (pure) ----------------------------------------------------------------------------


def plan_transfers(
    plan: DemoPlan, wallets: Wallets, limits: FraudLimits, rng: random.Random
) -> list[PaymentSpec]:
    """Every transfer of the demo, mixed, with the velocity burst as one block a third in."""
    sources = _cycle_shuffled(wallets.ordinary, rng)

    def to_someone_else(source: str, amount: int, scenario: str) -> PaymentSpec:
        destination = rng.choice(wallets.ordinary)
        while destination == source:
            destination = rng.choice(wallets.ordinary)
        return PaymentSpec(source=source, destination=destination, amount=amount, scenario=scenario)

    mixed: list[PaymentSpec] = []
    for _ in range(plan.ordinary):
        mixed.append(to_someone_else(next(sources), rng.randint(100, 2_000), "ordinary"))
    for _ in range(plan.over_limit):
        amount = rng.randint(limits.amount_limit + 1, limits.amount_limit * 2)
        mixed.append(to_someone_else(next(sources), amount, "over_limit"))
    for source in wallets.review:
        amount = rng.randint(limits.review_threshold, limits.review_threshold * 18 // 10)
        mixed.append(to_someone_else(source, amount, "review"))
    for index in range(plan.no_funds):
        source = wallets.unfunded[index % len(wallets.unfunded)]
        mixed.append(to_someone_else(source, rng.randint(500, 5_000), "no_funds"))
    rng.shuffle(mixed)
    burst = [
        to_someone_else(wallets.burst, rng.randint(100, 500), "velocity_burst")
        for _ in range(plan.burst)
    ]
    cut = len(mixed) // 3
    return [*mixed[:cut], *burst, *mixed[cut:]]


def plan_deposits(
    wallets: Wallets, transfers: Sequence[PaymentSpec], limits: FraudLimits, rng: random.Random
) -> list[PaymentSpec]:
    """Deposits below the review band, enough for everything each funded wallet sends."""
    smallest = limits.largest_deposit * 6 // 10
    outflow: Counter[str] = Counter()
    for spec in transfers:
        if spec.source is not None and spec.scenario in ("ordinary", "review", "velocity_burst"):
            outflow[spec.source] += spec.amount
    deposits = []
    for wallet in wallets.funded():
        count = max(DEPOSITS_PER_WALLET, math.ceil(outflow[wallet] / smallest))
        for _ in range(count):
            amount = rng.randint(smallest, limits.largest_deposit)
            deposits.append(PaymentSpec(destination=wallet, amount=amount, scenario="funding"))
    rng.shuffle(deposits)
    return deposits


def _cycle_shuffled(items: Sequence[str], rng: random.Random) -> Iterator[str]:
    shuffled = list(items)
    rng.shuffle(shuffled)
    return itertools.cycle(shuffled)


class AlternatingReviewer:
    """Approves every other payment held for review, and declines the rest."""

    def __init__(self) -> None:
        self.approved = 0
        self.declined = 0

    def __call__(self, spec: PaymentSpec) -> bool:
        approve = self.approved <= self.declined
        if approve:
            self.approved += 1
        else:
            self.declined += 1
        return approve


# -- checks -------------------------------------------------------------------------------------


def scenario_problem(scenario: str, tracked: Sequence[Tracked]) -> str | None:
    """What is wrong with how one scenario's payments ended; None when all is as expected."""
    unexpected = [t for t in tracked if not _as_expected(scenario, t)]
    wrong = Counter(
        f"refused: {t.rejection}" if t.status is None
        else f"{t.status}/{t.failure_code}" if t.failure_code else str(t.status)
        for t in unexpected
    )
    if wrong:
        named = ", ".join(_described(t) for t in unexpected[:5])
        return f"{wrong.total()} of {len(tracked)} did not end as expected ({dict(wrong)}): {named}"
    if scenario == "velocity_burst":
        statuses = Counter(t.status for t in tracked)
        if not statuses["declined"] or not statuses["succeeded"]:
            return f"expected some succeeded and some declined, got {dict(statuses)}"
    return None


def _described(t: Tracked) -> str:
    """One payment, enough to find it in the logs: id, status, and how our reviewer decided."""
    review = {None: "", True: " review approved", False: " review declined"}[t.review_approved]
    sent = "" if t.review_approved is not None or t.review_sent is None else f" review sent={t.review_sent}"
    return f"{t.payment_id or 'key ' + t.spec.key}={t.status}{review}{sent} via {t.learned_by}"


def _as_expected(scenario: str, t: Tracked) -> bool:
    if not t.terminal:
        return False
    if scenario == "ordinary":
        return t.status == "succeeded"
    if scenario == "over_limit":
        return t.status == "declined" and t.failure_code == "fraud_declined"
    if scenario == "review":
        return t.status == ("succeeded" if t.review_decision else "declined")
    if scenario == "no_funds":
        return t.status == "failed" and t.failure_code == "insufficient_funds"
    if scenario == "velocity_burst":
        return t.status == "succeeded" or (t.status == "declined" and t.failure_code == "fraud_declined")
    return False


def expected_balances(wallets: Sequence[str], tracked: Sequence[Tracked]) -> dict[str, int]:
    """What each wallet should hold, from the final statuses this demo observed."""
    balances = dict.fromkeys(wallets, 0)
    for t in tracked:
        if t.status != "succeeded" or not t.terminal:
            continue
        balances[t.spec.destination] = balances.get(t.spec.destination, 0) + t.spec.amount
        if t.spec.source is not None:
            balances[t.spec.source] = balances.get(t.spec.source, 0) - t.spec.amount
    return balances


async def actual_balances(client: PaystreamClient, wallets: Sequence[str], concurrency: int) -> dict[str, int]:
    """Each wallet's posted balance, as ``GET /v1/accounts/{id}`` reports it."""
    accounts = await bounded_gather([_getter(client, w) for w in wallets], concurrency)
    return {str(a["id"]): int(a["balance"]["posted"]) for a in accounts}


def _getter(client: PaystreamClient, wallet: str):  # type: ignore[no-untyped-def]
    return lambda: client.get_account(wallet)


# -- tables -------------------------------------------------------------------------------------


def scenario_table(result: LoadResult) -> tuple[Table, list[Check]]:
    table = Table(title="Scenarios: what each kind of transfer did")
    for column in ("scenario", "sent", "succeeded", "declined", "failed", "other", "as expected"):
        table.add_column(column, justify="left" if column == "scenario" else "right")
    checks = []
    for scenario in SCENARIOS:
        tracked = [t for t in result.tracked if t.spec.scenario == scenario]
        statuses = Counter(t.status if t.terminal else "other" for t in tracked)
        problem = scenario_problem(scenario, tracked)
        table.add_row(
            scenario, str(len(tracked)), str(statuses["succeeded"]), str(statuses["declined"]),
            str(statuses["failed"]), str(statuses["other"]),
            "[green]yes[/green]" if problem is None else f"[red]{problem}[/red]",
        )
        checks.append(Check(f"scenario {scenario}", problem is None, problem or "as expected"))
    return table, checks


def webhook_table(receiver: WebhookReceiver, results: Sequence[LoadResult]) -> Table:
    stats = receiver.stats
    learned: Counter[str] = Counter()
    for result in results:
        learned.update(result.learned_by())
    table = Table(title="Webhooks")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("deliveries received", f"{stats.deliveries:,}")
    table.add_row("valid signatures", f"{stats.valid:,}")
    table.add_row("invalid signatures", f"{stats.invalid:,}")
    table.add_row("duplicate deliveries (ignored)", f"{stats.duplicates:,}")
    for event_type, count in sorted(stats.by_type.items()):
        table.add_row(f"  {event_type}", f"{count:,}")
    table.add_row("terminal states learned by webhook", f"{learned['webhook']:,}")
    table.add_row("terminal states learned by polling", f"{learned['poll'] + learned['api']:,}")
    return table


def balance_table(expected: dict[str, int], actual: dict[str, int]) -> tuple[Table, Check]:
    mismatched = [w for w in expected if expected[w] != actual.get(w)]
    table = Table(title="Balances: what the demo expects vs. GET /v1/accounts/{id}")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("wallets checked", f"{len(expected):,}")
    table.add_row("matching", f"{len(expected) - len(mismatched):,}")
    table.add_row("mismatched", f"{len(mismatched):,}")
    table.add_row("total expected (minor units)", f"{sum(expected.values()):,}")
    table.add_row("total posted (minor units)", f"{sum(actual.values()):,}")
    for wallet in mismatched[:5]:
        table.add_row(f"[red]{wallet}[/red]", f"expected {expected[wallet]:,}, posted {actual.get(wallet)}")
    detail = f"{len(expected)} wallets match" if not mismatched else f"{len(mismatched)} wallets differ"
    return table, Check("balances match", not mismatched, detail)


class DemoChecks(CheckReport):
    title: ClassVar[str] = "Demo checks"


# -- the demo -----------------------------------------------------------------------------------


async def run_demo(home: Path, *, payments: int, concurrency: int, console: Console) -> bool:
    """Run the demo against the stack of ``home``; True when every check passes."""
    info = StackInfo.load(home)  # no stack: `NoStack`, one line from the CLI
    limits = FraudLimits.from_settings()
    plan = DemoPlan.for_payments(payments, limits)
    console.rule("[bold]paystream demo")
    console.print(
        f"gateway {info.gateway_url} · {plan.total:,} transfers at concurrency {concurrency} · "
        f"{os.cpu_count()} CPU cores on this machine"
    )
    console.print(
        f"mix: {plan.ordinary} ordinary, {plan.over_limit} over the limit, {plan.review} for review, "
        f"{plan.no_funds} without funds, a burst of {plan.burst} from one wallet"
    )
    async with PaystreamClient.for_stack(info, max_connections=concurrency + 16) as client:
        return await _demo(client, info, plan, limits, concurrency, console)


@dataclass(slots=True)
class DemoRun:
    """Everything one run of the scenarios observed (the end-to-end tests assert on it)."""

    wallets: Wallets
    funding: LoadResult
    result: LoadResult | None  # None when funding failed and no transfer was sent
    expected: dict[str, int]
    actual: dict[str, int]
    reviewer: AlternatingReviewer


async def run_scenarios(
    client: PaystreamClient, receiver: WebhookReceiver, plan: DemoPlan, limits: FraudLimits,
    concurrency: int, console: Console, rng: random.Random | None = None, retries: int = 3,
) -> DemoRun:
    """Create and fund the wallets, send every planned transfer, follow each to its end."""
    rng = rng or random.Random()  # noqa: S311 - test data, not secrets
    wallets = await _make_wallets(client, plan, concurrency)
    transfers = plan_transfers(plan, wallets, limits, rng)
    deposits = plan_deposits(wallets, transfers, limits, rng)
    console.print(f"created {len(wallets.all())} wallets; funding {len(wallets.funded())} "
                  f"of them with {len(deposits)} deposits")
    options = EngineOptions(concurrency=concurrency, retries=retries)
    funding = await run_with_progress(LoadEngine(client, receiver, options), deposits, console,
                                      "deposits")
    reviewer = AlternatingReviewer()
    if Counter(t.status for t in funding.tracked)["succeeded"] != len(deposits):
        return DemoRun(wallets, funding, None, {}, {}, reviewer)
    engine = LoadEngine(client, receiver, options, decide_review=reviewer)
    result = await run_with_progress(engine, transfers, console, "transfers")
    expected = expected_balances(wallets.all(), [*funding.tracked, *result.tracked])
    actual = await actual_balances(client, wallets.all(), concurrency)
    return DemoRun(wallets, funding, result, expected, actual, reviewer)


async def _demo(
    client: PaystreamClient, info: StackInfo, plan: DemoPlan, limits: FraudLimits, concurrency: int,
    console: Console,
) -> bool:
    async with registered_receiver(client) as receiver:
        console.print(f"webhook receiver listening at {receiver.url}")
        run = await run_scenarios(client, receiver, plan, limits, concurrency, console)
        if run.result is None:
            console.print(outcome_table(run.funding, "Deposits"))
            console.print("[red]not every deposit succeeded; stopping before the transfers[/red]")
            return False
        return await _report(info, run.result, run.funding, receiver, run.expected, run.actual,
                             run.reviewer, console)


async def _make_wallets(client: PaystreamClient, plan: DemoPlan, concurrency: int) -> Wallets:
    count = plan.ordinary_wallets + plan.review + plan.unfunded_wallets + 1
    ids = await create_wallets(client, count, concurrency=concurrency, label="demo")
    review_end = plan.ordinary_wallets + plan.review
    return Wallets(
        ordinary=ids[: plan.ordinary_wallets],
        review=ids[plan.ordinary_wallets : review_end],
        unfunded=ids[review_end:-1],
        burst=ids[-1],
    )


async def _report(
    info: StackInfo, result: LoadResult, funding: LoadResult, receiver: WebhookReceiver,
    expected: dict[str, int], actual: dict[str, int], reviewer: AlternatingReviewer, console: Console,
) -> bool:
    checks: list[Check] = []
    console.print(outcome_table(result, "Final status of the transfers"))
    scenarios, scenario_checks = scenario_table(result)
    console.print(scenarios)
    checks.extend(scenario_checks)
    console.print(f"reviews: {reviewer.approved} approved, {reviewer.declined} declined by the demo")
    console.print(performance_table(result))
    console.print(webhook_table(receiver, [funding, result]))
    balances, balance_check = balance_table(expected, actual)
    console.print(balances)
    checks.append(balance_check)
    rejected = sum(result.rejections().values())
    checks.append(Check("every transfer accepted", rejected == 0,
                            f"{len(result.accepted)} answered 202" if rejected == 0
                            else f"{rejected} not accepted"))
    unsettled = len(result.unsettled)
    checks.append(Check("every transfer terminal", unsettled == 0,
                            f"{len(result.settled)} terminal" if unsettled == 0
                            else f"{unsettled} still open"))
    stats = receiver.stats
    checks.append(Check("webhook signatures valid", stats.invalid == 0 and stats.valid > 0,
                            f"{stats.valid} valid, {stats.invalid} invalid"))
    report = await check_invariants(info.postgres_url)
    console.print(report.table())
    checks.append(Check("database invariants", report.ok,
                            "all hold" if report.ok else f"{len(report.failures())} failed"))
    console.print(DemoChecks(checks).table())
    ok = all(check.ok for check in checks)
    verdict = "[bold green]demo passed[/bold green]" if ok else "[bold red]demo FAILED[/bold red]"
    console.print(verdict)
    return ok
