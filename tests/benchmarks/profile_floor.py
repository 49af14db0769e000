"""Where the floor's CPU goes: CPU per process per payment of a `paystream bench --floor` floor run.

Run from the repository root (py-spy is in the ``test`` extra; it needs ptrace, so root or
``kernel.yama.ptrace_scope = 0``)::

    .venv/bin/python -m tests.benchmarks.profile_floor [--payments 10000] [--concurrency 32] [--out DIR]

It starts a stack of its own (``paystream up --auto-ports`` in a temporary home), then, in this
process, the floor of tools/floor.py against it, driven as ``bench --floor`` drives it (the
bench's load engine and client, a webhook receiver here) with payments between made-up
wallets (the floor checks none). Around the run it reads each process's CPU time (user +
system, with reaped children: PostgreSQL's backends) as profile_pipeline.py does, grouped as
the bench client (this process: the load engine and the receiver), the floor's serve and
consume processes, PostgreSQL and NATS, from when the floor is ready until the last
webhook arrived (the floor's start and stop are left out); ``py-spy record`` samples the two floor processes
unless ``--no-profile``. Writes ``DIR/profile.md``, ``DIR/floor-*.txt`` and ``DIR/profile.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import time
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console

from paystream.tools.floor import FloorClient, running_floor
from paystream.tools.fresh import fresh_stack
from paystream.tools.load import EngineOptions, LoadEngine
from paystream.tools.load_results import PaymentSpec
from paystream.tools.load_runs import run_with_progress
from paystream.tools.receiver import WebhookReceiver
from tests.benchmarks.profile_pipeline import (
    SAMPLE_RATE,
    Snapshot,
    cpu_by_group,
    cpu_table,
    find_py_spy,
    group_of,
    profile_table,
    start_py_spy,
    stop_py_spies,
)
from tests.benchmarks.profile_pipeline import snapshot as pipeline_snapshot

ROWS = ("bench client", "PostgreSQL", "nats-server", "floor serve", "floor consume")  # not the idle services


def snapshot(supervisor: psutil.Process) -> Snapshot:
    """This process (the bench client), the floor's processes and the stack's servers."""
    return {pid: row for pid, row in pipeline_snapshot(supervisor, os.getpid()).items() if row[0] in ROWS}


def floor_pids() -> dict[str, int]:
    pids = {}
    for process in psutil.Process().children(recursive=True):
        group = group_of(process, os.getpid())
        if group is not None and group.startswith("floor "):
            pids[group.replace(" ", "-")] = process.pid
    return pids


async def measure(args: argparse.Namespace, py_spy: Path) -> tuple[dict[str, Any], Snapshot, Snapshot, float]:
    """The floor's run with CPU snapshots around it; its figures, the snapshots, the seconds."""
    rng = random.Random(20261121)
    wallets = [f"acc_{i:05d}" for i in range(2_000)]
    transfers = [PaymentSpec(source=a, destination=b, amount=rng.randint(100, 2_000), scenario="bench")
                 for a, b in (rng.sample(wallets, 2) for _ in range(args.payments))]
    console = Console(stderr=True)
    async with fresh_stack(console, prefix="paystream-profile-floor-") as home, WebhookReceiver() as receiver, \
            running_floor(home, receiver.open_unsigned()) as url, \
            FloorClient(url, max_connections=args.concurrency + 16) as client:
        supervisor = psutil.Process(json.loads((home / "stack.json").read_text())["supervisor_pid"])
        spies = [await start_py_spy(py_spy, name, pid, args.out)
                 for name, pid in ({} if args.no_profile else floor_pids()).items()]
        engine = LoadEngine(client, receiver, EngineOptions(concurrency=args.concurrency, accepted_status=201))
        before = after = snapshot(supervisor)
        started = time.monotonic()
        run = asyncio.ensure_future(run_with_progress(engine, transfers, console, "floor: transfers"))
        while not run.done():
            after = {**after, **snapshot(supervisor)}
            await asyncio.wait({run}, timeout=0.5)
        after = {**after, **snapshot(supervisor)}
        elapsed = time.monotonic() - started
        await stop_py_spies(spies)
    return run.result().figures(), before, after, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--payments", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path("profile-floor"))
    parser.add_argument("--no-profile", action="store_true",
                        help="CPU per process only: py-spy's sampling takes CPU of the same cores")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    py_spy = find_py_spy(args.no_profile)

    figures, before, after, elapsed = asyncio.run(measure(args, py_spy))

    cpu = cpu_by_group(before, after)
    total_cpu = sum(cpu.values())
    lines = [
        f"# Where the floor's CPU goes: {args.payments:,} payments, concurrency {args.concurrency}, "
        f"{os.cpu_count()} cores",
        "",
        f"floor: {figures['accepted_per_second']} accepted/s, {figures['completed_per_second']} completed/s; "
        f"run {elapsed:.0f} s, {total_cpu:.0f} CPU-seconds in all",
        "",
        *cpu_table(cpu, args.payments),
    ]
    profiles: dict[str, Any] = {}
    for path in [] if args.no_profile else sorted(args.out.glob("floor-*.txt")):
        samples, own, _ours = profile_table(path.read_text())
        profiles[path.stem] = {"samples": samples, "self_by_area": own}
        lines += ["", f"## {path.stem} ({samples:,} samples at {SAMPLE_RATE} Hz)", "",
                  "| self time in | share |", "|---|---:|"]
        lines += [f"| {area} | {share:.1%} |" for area, share in own]
    (args.out / "profile.md").write_text("\n".join(lines) + "\n")
    (args.out / "profile.json").write_text(json.dumps(
        {"cpu_seconds": cpu, "payments": args.payments, "elapsed_seconds": elapsed, "floor": figures,
         "profiles": profiles}, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
