"""The floor under the ledger benchmark: bare PostgreSQL doing the least a transfer needs.

Run from the repository root::

    .venv/bin/python -m tests.benchmarks.bench_floor

Same server, durability, driver, accounts, batch size and connections as
``bench_ledger``, but none of the ledger: per transfer, two balance updates and two entry
inserts, and nothing else (no overdraft check, idempotency, hash chain, outbox, inbox or
foreign keys). ``batched`` does 256 transfers per transaction with one ``unnest`` statement
for the updates and one for the inserts; ``single`` does one transfer per transaction
(BEGIN, the two statements, COMMIT) from 16 connections; the ``-1rt`` variants put both
statements in one (its own transaction: one round trip). It says what this machine can do
at all, so the ledger's figures can be read as a share of it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import asyncpg
import uvloop

from paystream.stack.place import purge
from tests.benchmarks.server import postgres

SCHEMA = "bench_floor"
SETUP = """
CREATE TABLE accounts (id text PRIMARY KEY, balance bigint NOT NULL);
CREATE TABLE entries (id bigserial PRIMARY KEY, account_id text NOT NULL, amount bigint NOT NULL);
"""
UPDATE = ("UPDATE accounts a SET balance = a.balance + v.d FROM (SELECT id, sum(d) AS d FROM "
          "unnest($1::text[], $2::bigint[]) AS u(id, d) GROUP BY id) AS v WHERE a.id = v.id")
INSERT = "INSERT INTO entries (account_id, amount) SELECT * FROM unnest($1::text[], $2::bigint[])"
# Both in one statement: its own transaction, one round trip.
BOTH = (f"WITH u AS ({UPDATE} RETURNING 1) "
        "INSERT INTO entries (account_id, amount) SELECT * FROM unnest($1::text[], $2::bigint[])")


async def run(pool: asyncpg.Pool, accounts: list[str], transfers: int, per_tx: int, conns: int,
              rng: random.Random, one_statement: bool = False) -> float:
    pairs = [rng.sample(accounts, 2) for _ in range(transfers)]
    chunks = iter([pairs[i:i + per_tx] for i in range(0, transfers, per_tx)])

    async def worker() -> None:
        async with pool.acquire() as conn:
            for chunk in chunks:
                ids = [a for pair in chunk for a in pair]
                amounts = [d for _ in chunk for d in (-1, 1)]
                for _attempt in range(5):  # two updates in no set order can deadlock: again
                    try:
                        if one_statement:
                            await conn.execute(BOTH, ids, amounts)
                        else:
                            async with conn.transaction():
                                await conn.execute(UPDATE, ids, amounts)
                                await conn.execute(INSERT, ids, amounts)
                        break
                    except asyncpg.DeadlockDetectedError:
                        continue

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(conns)))
    return transfers / (time.perf_counter() - started)


async def floor_pool(url: str, accounts: int, size: int) -> tuple[asyncpg.Pool, list[str]]:
    """A schema of its own with ``accounts`` accounts, and a pool of ``size`` that works in it."""
    setup = await asyncpg.connect(url)
    try:
        await setup.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE; CREATE SCHEMA {SCHEMA}; "
                            f"SET search_path = {SCHEMA}; {SETUP}")
        ids = [f"acc_{i:08d}" for i in range(accounts)]
        await setup.execute("INSERT INTO accounts SELECT unnest($1::text[]), 1000000000", ids)
        await setup.execute("VACUUM ANALYZE accounts, entries")
    finally:
        await setup.close()
    pool = await asyncpg.create_pool(url, min_size=1, max_size=size, server_settings={"search_path": SCHEMA})
    return pool, ids


async def measure(url: str, args: argparse.Namespace) -> None:
    rng = random.Random(1)
    pool, accounts = await floor_pool(url, args.accounts, args.concurrency)
    try:
        for name, transfers, per_tx, conns, one in (
            ("single", 5_000, 1, args.concurrency, False),
            ("single-1rt", 5_000, 1, args.concurrency, True),
            ("batched", 51_200, args.batch, 1, False),
            ("batched-1rt", 51_200, args.batch, 1, True),
        ):
            rates = [await run(pool, accounts, transfers, per_tx, conns, rng, one) for _ in range(args.runs)]
            print(f"{name:12} {' '.join(f'{r:9,.0f}' for r in rates)}   median {statistics.median(rates):,.0f}/s")
    finally:
        await pool.close()


async def bench(args: argparse.Namespace) -> None:
    home = Path(tempfile.mkdtemp(prefix="paystream-floor-"))
    try:
        async with postgres(home) as url:
            # On uvloop in a thread of its own, as bench_ledger does (see there).
            await asyncio.to_thread(uvloop.run, measure(url, args))
    finally:
        purge(home)


def main() -> None:
    print(f"cores (os.cpu_count()): {os.cpu_count()}")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    asyncio.run(bench(parser.parse_args()))


if __name__ == "__main__":
    main()
