"""`paystream bench`: N payments through the public HTTP API at a concurrency, measured.

Setup (not measured): ``accounts`` wallets are created and funded with deposits below
the review band, enough for everything each will send. Then the measured run: N
transfers between random funded wallets, small enough that fraud approves them and
funds always suffice, sent at ``concurrency`` and followed to their terminal state by
webhook. It prints accepted/s, completed/s, API latency p50/p95/p99, end-to-end
latency p50/p99 and the invariant check; ``--json`` writes the same figures to a file.

Keep ``payments / accounts`` well under the velocity limit per minute, or the velocity
rule will (rightly) decline some transfers and the run measures something else.

With ``--floor`` the same transfers first go through the pipeline's floor (`floor`: HTTP
in, one PostgreSQL write, a bus hop, another write, a webhook out, none of our logic) on the
same stack, from the same client at the same concurrency; the report adds the floor's
figures and the pipeline's accepted/s as a share of the floor's. Closed loop only.

Latency at a given load (``--rate R --duration S``): the same setup, then ``R * S``
transfers sent open loop by the load engine (`load.LoadEngine` with ``rate``, as
`paystream gameday` sends them): each is due at a fixed time, a slow answer holds up no
later send, and the latencies count from the due time. At most `RATE_MAX_IN_FLIGHT` POSTs
are in flight; a send that leaves more than `load.LATE_AFTER_SECONDS` after its due time
(held by that cap, by the client's own loop, or by its user's connection) is counted late,
and the report says plainly when the client could not keep up with the rate.

With ``--users N`` the payments come from N signed-in wallet users (`wallet_users`), each on
its own keep-alive connection with its own token; payment i is user ``i mod N``'s, from the
wallet it owns. A user whose previous payment is still in flight when the next is due sends
it once that one is answered (its connection carries one request at a time), and that wait
counts as lateness. Setting the users up (argon2 password hashing on sign-up and sign-in)
is timed apart and not in the figures; connection errors are a figure of their own.
"""

from __future__ import annotations

import json
import math
import os
import platform
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console

from paystream.platform.config import load_settings
from paystream.platform.limits import raise_open_files
from paystream.tools.client import PaystreamClient, StackInfo
from paystream.tools.floor import FloorFailed, floor_figures, floor_table, measure_floor
from paystream.tools.invariants import check_invariants
from paystream.tools.load import EngineOptions, LoadEngine, Sender
from paystream.tools.load_results import LoadResult, PaymentSpec, lateness_of
from paystream.tools.load_runs import (
    create_wallets,
    outcome_table,
    performance_table,
    progress_bars,
    registered_receiver,
    run_with_progress,
)
from paystream.tools.wallet_users import UsersReady, close_users, set_up_users

TRANSFER_AMOUNTS = (100, 2_000)  # minor units, uniform
DEFAULT_PAYMENTS = 10_000
DEFAULT_CONCURRENCY = 32
DEFAULT_ACCOUNTS = 2_000
DEFAULT_DURATION = 30.0  # seconds, with --rate
RATE_MAX_IN_FLIGHT = 1_024  # POSTs in flight at once at a set rate; a send it holds is late
FILES_BESIDES_USERS = 512  # descriptors the bench needs besides one per user connection
FRESH_KEEP_ALIVE_SECONDS = 3_600  # a --fresh stack keeps idle user connections this long


class BenchError(Exception):
    """Bad input, or a run this machine cannot make: one line, exit 2, nothing sent."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BenchOptions:
    """What `paystream bench` was asked; None: not given (see `check_bench_options`)."""

    payments: int | None = None
    concurrency: int | None = None
    accounts: int | None = None
    rate: float | None = None  # payments per second, open loop; None: closed loop
    duration: float | None = None  # seconds at ``rate``
    users: int | None = None  # signed-in wallet users sending the payments
    floor: bool = False  # first the same payments on the floor (tools/floor.py), then the pipeline
    json_path: Path | None = None

    @property
    def total(self) -> int:
        """How many transfers the measured run sends."""
        if self.rate is None:
            return self.payments or DEFAULT_PAYMENTS
        return max(1, round(self.rate * (self.duration or DEFAULT_DURATION)))

    @property
    def wallets(self) -> int:
        """How many wallets the transfers are paid from: one per user, else the accounts."""
        return self.users or max(2, min(self.accounts or DEFAULT_ACCOUNTS, self.total * 2))


def check_bench_options(options: BenchOptions) -> BenchOptions:
    """Refuse what cannot be run (`BenchError`); return the options with defaults filled in."""
    if options.floor:
        for flag, value in (("--rate", options.rate), ("--users", options.users)):
            if value is not None:
                raise BenchError(f"--floor and {flag} conflict: the floor is measured closed loop, "
                                 "at --payments and --concurrency")
    if options.rate is None:
        for flag, value in (("--duration", options.duration), ("--users", options.users)):
            if value is not None:
                raise BenchError(f"{flag} needs --rate: it is for the open-loop run at a rate")
        return replace(options, payments=options.payments or DEFAULT_PAYMENTS,
                       concurrency=options.concurrency or DEFAULT_CONCURRENCY,
                       accounts=options.accounts or DEFAULT_ACCOUNTS)
    if not (options.rate > 0 and math.isfinite(options.rate)):
        raise BenchError(f"--rate must be a positive number of payments per second, not {options.rate:g}")
    if options.payments is not None:
        raise BenchError("--payments and --rate conflict: at a rate the run sends rate * --duration payments")
    if options.concurrency is not None:
        raise BenchError(f"--concurrency and --rate conflict: at a rate the payments are not sent by a "
                         f"fixed number of workers (at most {RATE_MAX_IN_FLIGHT} are in flight)")
    duration = DEFAULT_DURATION if options.duration is None else options.duration
    if not (duration > 0 and math.isfinite(duration)):
        raise BenchError(f"--duration must be a positive number of seconds, not {duration:g}")
    if options.users is not None:
        if options.users < 1:
            raise BenchError(f"--users must be at least 1, not {options.users}")
        if options.accounts is not None:
            raise BenchError("--accounts and --users conflict: each user pays from the wallet it owns")
    return replace(options, duration=duration,
                   accounts=options.accounts or (None if options.users else DEFAULT_ACCOUNTS))


def fresh_bench_env(options: BenchOptions) -> dict[str, str]:
    """How `paystream up` is started for a --fresh run: with users, idle connections are kept
    and the sign-in limit (60 a minute per client and address) leaves room for the setup."""
    if options.users is None:
        return {}
    limits = dict(load_settings().rate_limits)
    limits["auth"] = f"{2 * options.users + 100}/60s"
    return {"PAYSTREAM_HTTP_KEEP_ALIVE_SECONDS": str(FRESH_KEEP_ALIVE_SECONDS),
            "PAYSTREAM_RATE_LIMITS": json.dumps(limits)}


@dataclass(frozen=True, slots=True)
class BenchPlan:
    payments: int
    accounts: int
    deposit_amount: int

    def transfers(self, wallets: list[str], rng: random.Random,
                  sources: list[str] | None = None) -> list[PaymentSpec]:
        """Random transfers between ``wallets``; with ``sources``, transfer i is paid from
        ``sources[i % len(sources)]`` (each user in turn) to another wallet at random."""
        specs = []
        for index in range(self.payments):
            if sources:
                source = sources[index % len(sources)]
                destination = source
                while destination == source:
                    destination = rng.choice(wallets)
            else:
                source, destination = rng.sample(wallets, 2)
            amount = rng.randint(*TRANSFER_AMOUNTS)
            specs.append(PaymentSpec(source=source, destination=destination, amount=amount,
                                     scenario="bench"))
        return specs

    def deposits(self, wallets: list[str], transfers: list[PaymentSpec]) -> list[PaymentSpec]:
        """Enough deposits that no wallet runs out, whatever order the transfers land in."""
        outflow: Counter[str] = Counter()
        for spec in transfers:
            assert spec.source is not None
            outflow[spec.source] += spec.amount
        deposits: list[PaymentSpec] = []
        for wallet in wallets:
            count = max(1, math.ceil(outflow[wallet] / self.deposit_amount))
            deposits.extend(
                PaymentSpec(destination=wallet, amount=self.deposit_amount, scenario="funding")
                for _ in range(count)
            )
        return deposits



async def run_bench(home: Path, options: BenchOptions, console: Console) -> bool:
    """Run the benchmark against the stack of ``home``; True when every payment settled
    as planned and the invariants hold."""
    options = check_bench_options(options)
    info = StackInfo.load(home)  # no stack: `NoStack`, one line from the CLI
    open_files = raise_open_files()
    if options.users is not None and options.users + FILES_BESIDES_USERS > open_files:
        raise BenchError(f"--users {options.users} needs about {options.users + FILES_BESIDES_USERS} open "
                         f"files, and this process may open {open_files} (ulimit -Hn)")
    settings = load_settings()
    payments = options.total
    per_minute = payments if options.rate is None else min(payments, options.rate * 60)
    spread = options.wallets
    if per_minute / spread > settings.fraud_velocity_limit:
        console.print(
            f"[yellow]{per_minute:,.0f} payments a minute over {spread:,} accounts is more than the "
            f"velocity limit ({settings.fraud_velocity_limit}) per account: some will be declined[/yellow]"
        )
    plan = BenchPlan(payments, spread, deposit_amount=settings.fraud_review_threshold - 1)
    rng = random.Random(20261121)  # noqa: S311 - a reproducible workload, not a secret
    cores = os.cpu_count()
    console.rule("[bold]paystream bench")
    if options.rate is None:
        load = f"at concurrency {options.concurrency}"
    else:
        load = (f"open loop at {options.rate:g}/s for {options.duration:g} s (at most "
                f"{RATE_MAX_IN_FLIGHT} in flight)" + (f", sent by {options.users:,} signed-in users, each "
                                                      "on its own connection" if options.users else ""))
    console.print(f"gateway {info.gateway_url} · {payments:,} transfers over {spread:,} accounts "
                  f"{load} · {cores} CPU cores ({platform.processor() or platform.machine()})")
    setup_concurrency = options.concurrency or DEFAULT_CONCURRENCY
    pool_size = setup_concurrency + 16 if options.rate is None or options.users else RATE_MAX_IN_FLIGHT + 16
    users_ready: UsersReady | None = None
    async with PaystreamClient.for_stack(info, max_connections=pool_size) as client, \
            registered_receiver(client) as receiver:
        sender_of: Callable[[PaymentSpec], Sender] | None = None
        try:
            if options.users is not None:
                console.print("setup: users sign in through the admin client; sign-ins count against the "
                              "stack's auth rate limit (--fresh raises it for the run)")
                users_ready = await _users_with_progress(client, info, options.users, console)
                by_wallet = {u.wallet: u.connection for u in users_ready.users}
                sources = list(by_wallet)
                wallets = sources + (await create_wallets(client, 1, concurrency=1, label="bench")
                                     if len(sources) < 2 else [])
                transfers = plan.transfers(wallets, rng, sources=sources)

                def its_user(spec: PaymentSpec) -> Sender:
                    assert spec.source is not None
                    return by_wallet[spec.source]

                sender_of = its_user

                console.print(f"setup: {len(users_ready.users):,} users ready in {users_ready.seconds:,.1f} s "
                              f"(connections {users_ready.connect_seconds:,.1f} s, "
                              f"{users_ready.connection_errors} connection errors); not measured")
            else:
                wallets = await create_wallets(client, spread, concurrency=setup_concurrency, label="bench")
                transfers = plan.transfers(wallets, rng)
            deposits = plan.deposits(wallets, transfers)
            funding = await run_with_progress(
                LoadEngine(client, receiver, EngineOptions(concurrency=setup_concurrency)),
                deposits, console, "setup: deposits")
            if Counter(t.status for t in funding.tracked)["succeeded"] != len(deposits):
                console.print(outcome_table(funding, "Deposits"))
                console.print("[red]not every deposit succeeded; no measurement[/red]")
                return False
            if options.rate is None:
                engine_options = EngineOptions(concurrency=setup_concurrency)
            else:
                engine_options = EngineOptions(rate=options.rate, concurrency=RATE_MAX_IN_FLIGHT,
                                               poll_after=10.0, max_wait=(options.duration or 0) + 300)
            errors_before = users_ready.connection_errors if users_ready else 0
            if users_ready is not None:
                ends = time.monotonic() + (options.duration or 0) + 60
                expiring = sum(1 for u in users_ready.users if u.expires_at < ends)
                if expiring:
                    console.print(f"[yellow]{expiring:,} user tokens expire before the run ends (the setup "
                                  "took long); their later payments will be refused with 401[/yellow]")
            floor = None
            if options.floor:
                console.print("the floor first: the same transfers through HTTP in, one write, a bus hop, "
                              "one write and a webhook out, with none of paystream's logic")
                try:
                    floor = await measure_floor(info.home, receiver, transfers, concurrency=setup_concurrency,
                                                console=console)
                except FloorFailed as exc:
                    console.print(f"[red]{exc}[/red]", markup=False)
                    return False
            started = time.time()
            result = await run_with_progress(
                LoadEngine(client, receiver, engine_options, sender_of=sender_of), transfers, console,
                "measured: transfers")
        finally:
            if users_ready is not None:
                await close_users(users_ready.users)
    return await _report(result, options, info, console, started=started, users_ready=users_ready,
                         setup_errors=errors_before, floor=floor)


async def _report(result: LoadResult, options: BenchOptions, info: StackInfo, console: Console, *,
                  started: float, users_ready: UsersReady | None, setup_errors: int,
                  floor: LoadResult | None = None) -> bool:
    """The measured run's tables, invariants, lateness and users' figures; the JSON; the verdict."""
    payments = options.total
    cores = os.cpu_count()
    spread = options.wallets
    console.print(outcome_table(result, "Final status of the measured transfers"))
    console.print(performance_table(result, f"Throughput and latency ({cores} cores)"))
    report = await check_invariants(info.postgres_url)
    console.print(report.table())
    succeeded = Counter(t.status for t in result.tracked)["succeeded"]
    ok = report.ok and not result.unsettled and succeeded == payments
    figures: dict[str, Any] = {
        "started_at": started,
        "cpu_cores": cores,
        "payments": payments,
        "accounts": spread,
        **({"concurrency": options.concurrency} if options.rate is None else
           {"rate": options.rate, "duration_seconds": options.duration, "max_in_flight": RATE_MAX_IN_FLIGHT}),
        **result.figures(),
        "invariants_ok": report.ok,
    }
    lateness = None if options.rate is None else lateness_of(result.tracked)
    if lateness is not None:
        keep_up = lateness.line()
        console.print(keep_up if lateness.kept_up else f"[bold yellow]{keep_up}[/bold yellow]",
                      soft_wrap=True)
    if users_ready is not None:
        errors = users_ready.connection_errors - setup_errors
        figures["users"] = {
            "count": len(users_ready.users),
            "setup_seconds": round(users_ready.seconds, 2),
            "connect_seconds": round(users_ready.connect_seconds, 2),
            "setup_connection_errors": setup_errors,
            "reconnects": users_ready.reconnects,
        }
        figures["connection_errors"] = errors
        console.print(f"connection errors during the run: {errors} (setup: {setup_errors}); "
                      f"connections reopened after the server closed them idle: {users_ready.reconnects}")
    if floor is not None:
        console.print(floor_table(floor, result))
        figures.update(floor_figures(floor, result))
        floor_done = Counter(t.status for t in floor.tracked)["succeeded"]
        if floor_done != payments:
            console.print(f"[red]the floor completed {floor_done:,} of {payments:,}: its figure is not one[/red]")
            ok = False
    if options.json_path is not None:
        options.json_path.write_bytes(orjson.dumps(figures, option=orjson.OPT_INDENT_2))
        console.print(f"figures written to {options.json_path}")
    if ok:
        console.print("[bold green]bench passed[/bold green]" + (
            "" if lateness is None or lateness.kept_up
            else " (but the client could not keep up with the rate: see above)"))
    else:
        console.print(f"[bold red]bench FAILED[/bold red]: {succeeded} of {payments} succeeded, "
                      f"{len(result.unsettled)} not terminal, invariants {'hold' if report.ok else 'FAIL'}")
    return ok


async def _users_with_progress(client: PaystreamClient, info: StackInfo, count: int,
                               console: Console) -> UsersReady:
    with progress_bars(console) as progress:
        task = progress.add_task("setup: users", total=count)
        return await set_up_users(client, info, count,
                                  progress=lambda done: progress.update(task, completed=done))


async def run_bench_on_fresh_stack(options: BenchOptions, console: Console) -> bool:
    """Start a stack of its own on free ports in a temporary home, bench it, stop it."""
    from paystream.tools.fresh import FreshStackFailed, fresh_stack

    options = check_bench_options(options)
    try:
        async with fresh_stack(console, prefix="paystream-bench-", env=fresh_bench_env(options)) as home:
            return await run_bench(home, options, console)
    except FreshStackFailed as exc:
        console.print(f"[red]{exc}[/red]")
        return False
