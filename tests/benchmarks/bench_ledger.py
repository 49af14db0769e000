"""Ledger posting throughput on a real PostgreSQL: transfers per second.

Run from the repository root::

    .venv/bin/python -m tests.benchmarks.bench_ledger [--json results.json]

It starts an embedded PostgreSQL on a free port in a temporary directory (the way
``tests/conftest.py`` does), migrates a ``ledger`` schema, connects as the ledger's own
role (its privileges and its settings, as the service connects), creates ``--accounts``
wallets with ``LedgerStore.create_account`` and funds each with a deposit, then
measures four scenarios, ``--runs`` times each:

``single``       one transfer per transaction, ``--concurrency`` connections, random accounts
``batched``      ``--batch`` transfers per transaction (the consumer's batch), random accounts
``hot-batched``  as ``batched``, but every transfer credits one merchant account
``hot-single``   as ``single``, but every transfer credits one merchant account

Every transaction goes through the service's real code: the ledger consumer's
``EventConsumer._apply`` (inbox insert of the event ids, in the same transaction) calling
``LedgerHandlers.on_fraud_events`` on ``fraud.approved`` envelopes, which does the
idempotency check on the payment id (``decisions``), locks the accounts in id order,
decides each transfer with ``domain.post_batch`` (overdraft checks), writes balances,
transfers, entries and rejections (``write_batch``) and the ``ledger.posted`` outbox rows.
Logging is configured as in the service (JSON lines at info), written to /dev/null.

Not measured: building the envelopes (done before the clock starts), decoding them from
the bus and acking, and the outbox relay (outbox rows are deleted between runs, outside
the clock, as the relay would). PostgreSQL runs with its defaults for durability
(fsync and synchronous_commit on).

Before each run it measures the floor under it (``bench_floor``): bare PostgreSQL doing
the same number of transfers in the same shape (per transaction, connections) on the same
server, with two balance updates and two entry inserts per transfer and nothing else
(between random accounts, for the hot scenarios too). The
table gives each scenario's floor median and its share of the floor (the median of each
run's rate over the floor run just before it). This machine's speed moves by up to 2x
between days and 30 % within an hour; the share moves less between days (batched: 11.6 %
and 13.9 % on two days whose rates differed by 1.5x), so it is the better figure to
compare across machines. ``--no-floor`` skips it.

After each run the benchmark checks that every transfer was posted (no rejections), that
the run wrote one transfer, two entries, one inbox row and one outbox row per transfer,
that debits equal credits over all accounts, and (when the ledger has its hash chain)
that every entry is chained and the chain's head is at the last one.

The server is stopped and the temporary directory removed at the end, also on Ctrl-C
or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import secrets
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
import uvloop

from paystream.contracts.envelope import Envelope, make_envelope
from paystream.contracts.events import FraudApproved, PaymentOrder
from paystream.contracts.ids import new_id
from paystream.contracts.topology import CONSUMERS
from paystream.ledger.handlers import LedgerHandlers
from paystream.ledger.store import LedgerStore
from paystream.platform.consumer import EventConsumer
from paystream.platform.db import create_pool
from paystream.platform.migrations import migrate, role_name
from paystream.platform.observability import configure_logging
from paystream.platform.outbox import Outbox
from paystream.stack.place import purge
from tests.benchmarks import bench_floor
from tests.benchmarks.server import postgres

TENANT = "ten_bench"
CURRENCY = "EUR"
SCHEMA = "bench_ledger"
LEDGER_CONSUMER = next(spec for spec in CONSUMERS if spec.durable == "ledger")
SCENARIOS = ("single", "batched", "hot-batched", "hot-single")

log = logging.getLogger("paystream.bench")


@dataclass
class Scenario:
    name: str
    per_transaction: int
    concurrency: int
    hot: bool
    transfers: int
    runs: list[float] = field(default_factory=list)
    floor_runs: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    @property
    def share_of_floor(self) -> float | None:
        """The median of each run's rate over the floor's run just before it."""
        if not self.floor_runs:
            return None
        return statistics.median(r / f for r, f in zip(self.runs, self.floor_runs, strict=True))


def approved(order: PaymentOrder) -> Envelope:
    return make_envelope(FraudApproved(order=order), partition_key=order.account_key,
                         correlation_id=order.payment_id)


def transfer_orders(
    rng: random.Random, accounts: Sequence[str], count: int, merchant: str | None
) -> list[Envelope]:
    """``count`` approved transfers between random accounts (or random payer -> merchant)."""
    envelopes = []
    for _ in range(count):
        if merchant is None:
            source, destination = rng.sample(accounts, 2)
        else:
            source, destination = rng.choice(accounts), merchant
        envelopes.append(approved(PaymentOrder(
            payment_id=new_id("pay"), tenant_id=TENANT, kind="transfer",
            source_account_id=source, destination_account_id=destination,
            amount=rng.randint(1, 10_000), currency=CURRENCY,
        )))
    return envelopes


async def drive(consumer: EventConsumer, envelopes: list[Envelope], per_transaction: int,
                concurrency: int) -> float:
    """Apply the envelopes in transactions of ``per_transaction`` from ``concurrency`` workers."""
    chunks = [envelopes[i:i + per_transaction] for i in range(0, len(envelopes), per_transaction)]
    queue = iter(chunks)

    async def worker() -> None:
        for chunk in queue:
            await consumer._apply(chunk)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started


async def counts(conn: asyncpg.Connection) -> dict[str, int]:
    row = await conn.fetchrow(
        "SELECT (SELECT count(*) FROM transfers) AS transfers, (SELECT count(*) FROM entries) AS entries, "
        "(SELECT count(*) FROM rejections) AS rejections, (SELECT count(*) FROM inbox) AS inbox, "
        "(SELECT count(*) FROM outbox) AS outbox, "
        "(SELECT sum(debits_posted) - sum(credits_posted) FROM account_totals) AS imbalance"
    )
    assert row is not None
    return dict(row)


async def check_run(conn: asyncpg.Connection, before: dict[str, int], n: int) -> None:
    after = await counts(conn)
    expected = {"transfers": n, "entries": 2 * n, "rejections": 0, "inbox": n, "outbox": n}
    got = {key: after[key] - before[key] for key in expected}
    if got != expected or after["imbalance"] != 0:
        raise SystemExit(f"run did not post what it should: expected {expected}, got {got}, "
                         f"debits - credits = {after['imbalance']}")
    if await conn.fetchval("SELECT to_regclass('chain_head') IS NOT NULL"):
        # The ledger's hash chains (migrations 002, 005): every entry chained, each chain's
        # head at its last entry, and the chains together as long as there are entries.
        unchained, heads, lasts, chains = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM entries WHERE seq IS NULL OR hash IS NULL), "
            "(SELECT sum(seq) FROM chain_head), "
            "(SELECT sum(m) FROM (SELECT max(seq) AS m FROM entries GROUP BY chain) x), "
            "(SELECT count(DISTINCT chain) FROM entries)"
        )
        if unchained or heads != lasts or lasts != after["entries"]:
            raise SystemExit(f"hash chain incomplete: {unchained} unchained, heads sum {heads}, "
                             f"last seqs sum {lasts}, {after['entries']} entries")
        log.info("chains in use: %s", chains)
    kinds = await conn.fetch("SELECT DISTINCT convert_from(body, 'UTF8')::jsonb ->> 'type' AS type FROM outbox")
    if [r["type"] for r in kinds] != ["ledger.posted"]:
        raise SystemExit(f"unexpected outbox events: {[r['type'] for r in kinds]}")


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    # Ctrl-C cancels this task (asyncio.run does that); SIGTERM does the same here.
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    home = Path(tempfile.mkdtemp(prefix="paystream-bench-"))
    try:
        async with postgres(home) as url:
            # The posting runs on uvloop, the loop the service runs on (platform.runtime), in a
            # thread of its own: this loop keeps the server's process (uvloop cannot start it
            # as another user).
            return await asyncio.to_thread(uvloop.run, bench_on(url, args))
    finally:
        purge(home)


async def bench_on(url: str, args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    password = secrets.token_hex(16)
    admin = await asyncpg.connect(url, timeout=10)
    try:
        await migrate(admin, service="ledger", schema=SCHEMA, password=password)
        await admin.execute(f"SET search_path = {SCHEMA}")
        return await bench_as_role(admin, as_role(url, role_name(SCHEMA), password), rng, args,
                                   floor_url=url if args.floor else None)
    finally:
        await admin.close()


def as_role(url: str, role: str, password: str) -> str:
    """``url`` logged in as ``role``: how the ledger service connects (its role, its settings)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{quote(role)}:{quote(password)}@{parts.hostname}:{parts.port}"))


async def bench_as_role(admin: asyncpg.Connection, role_url: str, rng: random.Random,
                        args: argparse.Namespace, floor_url: str | None = None) -> dict[str, Any]:
    conns = max(args.concurrency, args.batch_concurrency)
    pool = await create_pool(role_url, min_size=1, max_size=conns + 1, application_name="paystream-bench")
    floor: tuple[asyncpg.Pool, list[str]] | None = None
    # The floor draws from a random source of its own, so the ledger posts the same transfers
    # with it or without it (--no-floor).
    floor_rng = random.Random(args.seed + 1)
    try:
        if floor_url is not None:
            floor = await bench_floor.floor_pool(floor_url, args.accounts, conns)
        store = LedgerStore()
        handlers = LedgerHandlers(store, Outbox(args.partitions))
        consumer = EventConsumer(spec=LEDGER_CONSUMER, bus=None, pool=pool,  # type: ignore[arg-type]
                                 handler=handlers.on_fraud_events, batch=args.batch)

        print(f"creating {args.accounts:,} wallets and a merchant ...", file=sys.stderr)
        async with pool.acquire() as conn, conn.transaction():
            accounts = [
                (await store.create_account(conn, tenant_id=TENANT, currency=CURRENCY, allow_overdraft=False,
                                            owner_user_id=None, metadata={}, create_key=None))["id"]
                for _ in range(args.accounts)
            ]
            merchant = (await store.create_account(conn, tenant_id=TENANT, currency=CURRENCY,
                                                   allow_overdraft=False, owner_user_id=None,
                                                   metadata={"bench": "merchant"}, create_key=None))["id"]
        deposits = [approved(PaymentOrder(
            payment_id=new_id("pay"), tenant_id=TENANT, kind="deposit", source_account_id=None,
            destination_account_id=account, amount=args.funding, currency=CURRENCY,
        )) for account in accounts]
        await drive(consumer, deposits, args.batch, 1)
        async with pool.acquire() as conn:
            funded = await conn.fetchval(
                "SELECT count(*) FROM account_totals WHERE kind = 'wallet' AND credits_posted = $1", args.funding)
            if funded != args.accounts:
                raise SystemExit(f"funding failed: {funded} of {args.accounts} wallets funded")
            await conn.execute("DELETE FROM outbox")
        await admin.execute("VACUUM ANALYZE")  # the tables' owner

        scenarios = {
            "single": Scenario("single", 1, args.concurrency, False, args.single_transfers),
            "batched": Scenario("batched", args.batch, args.batch_concurrency, False, args.batched_transfers),
            "hot-batched": Scenario("hot-batched", args.batch, args.batch_concurrency, True, args.batched_transfers),
            "hot-single": Scenario("hot-single", 1, args.concurrency, True, args.single_transfers),
        }
        scenarios = {name: s for name, s in scenarios.items() if name in args.scenarios}
        for scenario in scenarios.values():
            for run in range(args.runs):
                if floor is not None:  # the floor, the same shape of work, just before each run
                    floor_rate = await bench_floor.run(floor[0], floor[1], scenario.transfers,
                                                       scenario.per_transaction, scenario.concurrency,
                                                       floor_rng)
                    scenario.floor_runs.append(floor_rate)
                    print(f"{'floor':12} run {run + 1}: {floor_rate:,.0f}/s", file=sys.stderr)
                envelopes = transfer_orders(rng, accounts, scenario.transfers, merchant if scenario.hot else None)
                async with pool.acquire() as conn:
                    before = await counts(conn)
                seconds = await drive(consumer, envelopes, scenario.per_transaction, scenario.concurrency)
                async with pool.acquire() as conn:
                    await check_run(conn, before, scenario.transfers)
                    await conn.execute("DELETE FROM outbox")  # what the relay would do
                rate = scenario.transfers / seconds
                scenario.runs.append(rate)
                print(f"{scenario.name:12} run {run + 1}: {scenario.transfers:,} transfers in {seconds:.2f} s "
                      f"= {rate:,.0f}/s", file=sys.stderr)
        async with pool.acquire() as conn:
            totals = await counts(conn)
    finally:
        await pool.close()
        if floor is not None:
            await floor[0].close()

    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
        "postgres": "embedded, defaults for durability (fsync, synchronous_commit on)",
        "accounts": args.accounts,
        "concurrency": args.concurrency,
        "batch": args.batch,
        "batch_concurrency": args.batch_concurrency,
        "totals": totals,
        "scenarios": {
            name: {
                "transfers_per_transaction": s.per_transaction,
                "concurrency": s.concurrency,
                "hot_account": s.hot,
                "transfers_per_run": s.transfers,
                "runs_per_second": [round(r, 1) for r in s.runs],
                "median_per_second": round(s.median, 1),
                **({
                    "floor_runs_per_second": [round(r, 1) for r in s.floor_runs],
                    "floor_median_per_second": round(statistics.median(s.floor_runs), 1),
                    "share_of_floor": round(s.share_of_floor, 4),
                } if s.share_of_floor is not None else {}),
            }
            for name, s in scenarios.items()
        },
    }


def table(result: dict[str, Any]) -> str:
    runs = max(len(s["runs_per_second"]) for s in result["scenarios"].values())
    floor = all("share_of_floor" in s for s in result["scenarios"].values())
    head = ["scenario", "per tx", "conns", "transfers/run", *[f"run {i + 1}" for i in range(runs)], "median",
            *(["floor median", "share of floor"] if floor else [])]
    lines = ["| " + " | ".join(head) + " |", "|---|---:|---:|---:|" + "---:|" * (len(head) - 4)]
    for name, s in result["scenarios"].items():
        cells = [name, str(s["transfers_per_transaction"]), str(s["concurrency"]), f"{s['transfers_per_run']:,}",
                 *[f"{r:,.0f}" for r in s["runs_per_second"]], f"**{s['median_per_second']:,.0f}**"]
        if floor:
            cells += [f"{s['floor_median_per_second']:,.0f}", f"{s['share_of_floor']:.1%}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=16, help="connections for the one-per-tx scenarios")
    parser.add_argument("--batch", type=int, default=256, help="transfers per transaction when batched")
    parser.add_argument("--batch-concurrency", type=int, default=1,
                        help="connections for the batched scenarios (the ledger consumer has one batch in flight)")
    parser.add_argument("--single-transfers", type=int, default=5_000, help="transfers per one-per-tx run")
    parser.add_argument("--batched-transfers", type=int, default=51_200, help="transfers per batched run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--funding", type=int, default=1_000_000_000, help="deposit per wallet, minor units")
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS),
                        help="which scenarios to run (all by default)")
    parser.add_argument("--no-floor", dest="floor", action="store_false",
                        help="skip the bare-PostgreSQL floor run (bench_floor) before each run")
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    args = parser.parse_args(argv)

    with open(os.devnull, "w") as devnull:
        configure_logging("ledger", "info", stream=devnull)
        try:
            result = asyncio.run(bench(args))
        except (KeyboardInterrupt, asyncio.CancelledError):
            print("interrupted; server stopped and temporary directory removed", file=sys.stderr)
            raise SystemExit(130) from None

    print(f"cores (os.cpu_count()): {result['cpu_count']}")
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"results written to {args.json}")


if __name__ == "__main__":
    main()
