"""`paystream bench`: N payments through the public HTTP API at a concurrency, measured.

Setup (not measured): ``accounts`` wallets are created and funded with deposits below
the review band, enough for everything each will send. Then the measured run: N
transfers between random funded wallets, small enough that fraud approves them and
funds always suffice, sent at ``concurrency`` and followed to their terminal state by
webhook. It prints accepted/s, completed/s, API latency p50/p95/p99, end-to-end
latency p50/p99 and the invariant check; ``--json`` writes the same figures to a file.

Keep ``payments / accounts`` well under the velocity limit per minute, or the velocity
rule will (rightly) decline some transfers and the run measures something else.
"""

from __future__ import annotations

import math
import os
import platform
import random
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console

from paystream.platform.config import load_settings
from paystream.tools.client import PaystreamClient, StackInfo
from paystream.tools.invariants import check_invariants
from paystream.tools.load import (
    EngineOptions,
    LoadEngine,
    PaymentSpec,
    create_wallets,
    outcome_table,
    performance_table,
    registered_receiver,
    run_with_progress,
)

TRANSFER_AMOUNTS = (100, 2_000)  # minor units, uniform


@dataclass(frozen=True, slots=True)
class BenchPlan:
    payments: int
    accounts: int
    deposit_amount: int

    def transfers(self, wallets: list[str], rng: random.Random) -> list[PaymentSpec]:
        specs = []
        for _ in range(self.payments):
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


async def run_bench(
    home: Path, *, payments: int, concurrency: int, accounts: int, console: Console,
    json_path: Path | None = None,
) -> bool:
    """Run the benchmark against the stack of ``home``; True when every payment settled
    as planned and the invariants hold."""
    info = StackInfo.load(home)  # no stack: `NoStack`, one line from the CLI
    settings = load_settings()
    accounts = max(2, min(accounts, payments * 2))
    per_account_per_minute = payments / accounts
    if per_account_per_minute > settings.fraud_velocity_limit:
        console.print(
            f"[yellow]{payments} payments over {accounts} accounts is more than the velocity "
            f"limit ({settings.fraud_velocity_limit}) per account: some will be declined[/yellow]"
        )
    plan = BenchPlan(payments, accounts, deposit_amount=settings.fraud_review_threshold - 1)
    rng = random.Random(20261121)  # noqa: S311 - a reproducible workload, not a secret
    cores = os.cpu_count()
    console.rule("[bold]paystream bench")
    console.print(f"gateway {info.gateway_url} · {payments:,} transfers over {accounts:,} accounts "
                  f"at concurrency {concurrency} · {cores} CPU cores ({platform.processor() or platform.machine()})")
    async with PaystreamClient.for_stack(info, max_connections=concurrency + 16) as client, \
            registered_receiver(client) as receiver:
        wallets = await create_wallets(client, accounts, concurrency=concurrency, label="bench")
        transfers = plan.transfers(wallets, rng)
        deposits = plan.deposits(wallets, transfers)
        options = EngineOptions(concurrency=concurrency)
        funding = await run_with_progress(LoadEngine(client, receiver, options), deposits, console,
                                          "setup: deposits")
        if Counter(t.status for t in funding.tracked)["succeeded"] != len(deposits):
            console.print(outcome_table(funding, "Deposits"))
            console.print("[red]not every deposit succeeded; no measurement[/red]")
            return False
        started = time.time()
        result = await run_with_progress(LoadEngine(client, receiver, options), transfers, console,
                                         "measured: transfers")
    console.print(outcome_table(result, "Final status of the measured transfers"))
    console.print(performance_table(result, f"Throughput and latency ({cores} cores)"))
    report = await check_invariants(info.postgres_url)
    console.print(report.table())
    succeeded = Counter(t.status for t in result.tracked)["succeeded"]
    ok = report.ok and not result.unsettled and succeeded == payments
    if json_path is not None:
        figures: dict[str, Any] = {
            "started_at": started,
            "cpu_cores": cores,
            "payments": payments,
            "accounts": accounts,
            "concurrency": concurrency,
            **result.figures(),
            "invariants_ok": report.ok,
        }
        json_path.write_bytes(orjson.dumps(figures, option=orjson.OPT_INDENT_2))
        console.print(f"figures written to {json_path}")
    console.print("[bold green]bench passed[/bold green]" if ok else
                  f"[bold red]bench FAILED[/bold red]: {succeeded} of {payments} succeeded, "
                  f"{len(result.unsettled)} not terminal, invariants {'hold' if report.ok else 'FAIL'}")
    return ok


async def run_bench_on_fresh_stack(
    *, payments: int, concurrency: int, accounts: int, console: Console, json_path: Path | None,
) -> bool:
    """Start a stack of its own on free ports in a temporary home, bench it, stop it."""
    from paystream.tools.fresh import FreshStackFailed, fresh_stack

    try:
        async with fresh_stack(console, prefix="paystream-bench-") as home:
            return await run_bench(home, payments=payments, concurrency=concurrency,
                                   accounts=accounts, console=console, json_path=json_path)
    except FreshStackFailed as exc:
        console.print(f"[red]{exc}[/red]")
        return False
