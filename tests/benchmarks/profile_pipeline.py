"""Where the pipeline's CPU goes: CPU per process per payment, and a py-spy profile of every service.

Run from the repository root (py-spy is in the ``test`` extra; it needs ptrace, so root or
``kernel.yama.ptrace_scope = 0``)::

    .venv/bin/python -m tests.benchmarks.profile_pipeline [--payments 5000] [--accounts 1000] [--out DIR]

It starts a stack of its own (``paystream up --auto-ports`` in a temporary home), then runs
``paystream bench --home`` against it while ``py-spy record`` samples every service process
(every copy) at 50 Hz. Around the bench it reads each process's CPU time (user + system,
with reaped children: PostgreSQL's backends), grouped as PostgreSQL, NATS, Redis, each
service and the bench client. The figures cover the whole bench, setup included (the
deposits that fund the wallets go through the same pipeline), so CPU per payment divides by
transfers + deposits.

Writes ``DIR/profile.md`` (the tables), ``DIR/<process>.txt`` (py-spy's collapsed stacks, for
flame graphs: ``flamegraph.pl``, speedscope) and ``DIR/profile.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console

from paystream.tools.fresh import fresh_stack

SAMPLE_RATE = 50
Snapshot = dict[int, tuple[str, float]]  # pid -> (its row, CPU-seconds)
FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^():]+)(?::\d+)?\)$")


def group_of(process: psutil.Process, bench_pid: int) -> str | None:
    """Which row a process's CPU counts in (None: not part of the run)."""
    try:
        if process.pid == bench_pid:
            return "bench client"
        name = process.name()
        cmdline = process.cmdline()
    except psutil.Error:
        return None
    if name.startswith("postgres") or (cmdline and "postgres" in Path(cmdline[0]).name):
        return "PostgreSQL"
    if "nats-server" in name:
        return "nats-server"
    if "redis" in name:
        return "Redis"
    if "paystream.tools.floor" in cmdline:  # the pipeline's floor (profile_floor.py)
        return f"floor {cmdline[cmdline.index('paystream.tools.floor') + 1]}"
    if "serve" in cmdline:
        return str(cmdline[cmdline.index("serve") + 1])
    return None


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system + times.children_user + times.children_system)


def snapshot(supervisor: psutil.Process, bench_pid: int) -> Snapshot:
    seen: dict[int, tuple[str, float]] = {}
    candidates = [*supervisor.children(recursive=True)]
    try:
        bench = psutil.Process(bench_pid)
        candidates += [bench, *bench.children(recursive=True)]
    except psutil.Error:
        pass
    for process in candidates:
        group = group_of(process, bench_pid)
        if group is None:
            continue
        try:
            seen[process.pid] = (group, cpu_seconds(process))
        except psutil.Error:
            continue
    return seen


def cpu_by_group(before: Snapshot, after: Snapshot) -> dict[str, float]:
    totals: dict[str, float] = defaultdict(float)
    for pid, (group, seconds) in after.items():
        totals[group] += seconds - before.get(pid, (group, 0.0))[1]
    return dict(totals)


def area_of(file: str) -> str:
    """A frame's file as a module name (py-spy writes paths from the import root:
    ``paystream/gateway/api.py``, ``asyncpg/connection.py``). Time in a native extension is
    its Python caller's: ``asyncio.runners`` is uvloop's loop (callbacks, socket I/O in C),
    ``asyncpg.connection`` includes asyncpg's Cython protocol."""
    path = file.replace("\\", "/")
    for root in ("site-packages/", "/paystream/"):
        if root in path:
            path = ("paystream/" if root == "/paystream/" else "") + path.rsplit(root, 1)[1]
    return path.removesuffix(".py").replace("/", ".")


ENTRY = ("paystream.__main__.", "paystream.cli.", "paystream.platform.runtime.run_service")


def _ours(file: str) -> bool:
    return file.startswith("paystream/") or "/paystream/" in file


def profile_table(collapsed: str, top: int = 12) -> tuple[int, list[tuple[str, float]], list[tuple[str, float]]]:
    """From py-spy's collapsed stacks: samples, the areas with most self time, and paystream's
    own functions with most inclusive time (each as a share of the samples)."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [m for m in (FRAME.match(f) for f in stack.split(";")) if m]
        if not frames:
            continue
        own[area_of(frames[-1]["file"])] += count
        ours = {f"{area_of(m['file'])}.{m['function']}" for m in frames if _ours(m["file"])}
        for name in ours:
            if not name.startswith(ENTRY):  # the process's start, under every sample
                inclusive[name] += count
    if total == 0:
        return 0, [], []
    return (total,
            [(name, count / total) for name, count in own.most_common(top)],
            [(name, count / total) for name, count in inclusive.most_common(top)])


def service_pids(stack: dict[str, Any]) -> dict[str, int]:
    return {name: pid for name, pid in stack["pids"].items()
            if name.split("-")[0] in {"gateway", "payments", "fraud", "ledger", "notifications"}}


def cpu_table(cpu: dict[str, float], payments: int) -> list[str]:
    """Markdown rows: each process's CPU-seconds, share and CPU per payment, then all of them."""
    total = sum(cpu.values())
    lines = ["| process | CPU-seconds | share | CPU per payment |", "|---|---:|---:|---:|"]
    for group, seconds in sorted(cpu.items(), key=lambda item: -item[1]):
        lines.append(f"| {group} | {seconds:.1f} | {seconds / total:.1%} | {seconds / payments * 1000:.2f} ms |")
    lines.append(f"| **all** | {total:.1f} | 100 % | {total / payments * 1000:.2f} ms |")
    return lines


def find_py_spy(no_profile: bool) -> Path:
    py_spy = Path(sys.executable).with_name("py-spy")
    if not py_spy.exists() and not no_profile:
        raise SystemExit("py-spy is not installed in this environment (it is in paystream's test extra)")
    return py_spy


async def start_py_spy(py_spy: Path, name: str, pid: int, out: Path) -> asyncio.subprocess.Process:
    """``py-spy record`` of ``pid`` at `SAMPLE_RATE` into ``out/<name>.txt`` (collapsed stacks)."""
    with (out / f"{name}.spy.log").open("wb") as spy_log:
        return await asyncio.create_subprocess_exec(
            str(py_spy), "record", "--pid", str(pid), "--rate", str(SAMPLE_RATE), "--format", "raw",
            "--output", str(out / f"{name}.txt"), "--nonblocking",
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=spy_log,
        )


async def stop_py_spies(spies: list[asyncio.subprocess.Process]) -> None:
    for spy in spies:
        spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
    await asyncio.wait_for(asyncio.gather(*(spy.wait() for spy in spies)), 60)


async def measure(args: argparse.Namespace, py_spy: Path) -> tuple[dict[str, Any], Snapshot, Snapshot, float]:
    """Run the bench against a stack of its own with py-spy on every service; the stack's
    description, the CPU snapshots before and after, and the seconds the bench took."""
    async with fresh_stack(Console(stderr=True), prefix="paystream-profile-") as home:
        stack = json.loads((home / "stack.json").read_text())
        supervisor = psutil.Process(stack["supervisor_pid"])
        with (args.out / "bench.out").open("wb") as bench_log:
            bench = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "paystream", "bench", "--home", str(home), "--payments", str(args.payments),
                "--accounts", str(args.accounts), "--concurrency", str(args.concurrency),
                "--json", str(args.out / "bench.json"),
                stdin=subprocess.DEVNULL, stdout=bench_log, stderr=subprocess.STDOUT,
            )
        before = after = snapshot(supervisor, bench.pid)
        spies = [await start_py_spy(py_spy, name, pid, args.out)
                 for name, pid in ({} if args.no_profile else service_pids(stack)).items()]
        started = time.monotonic()
        finished = asyncio.ensure_future(bench.wait())
        while not finished.done():  # the bench client's own CPU is lost once it exits: sample as it goes
            after = {**after, **snapshot(supervisor, bench.pid)}
            await asyncio.wait({finished}, timeout=0.5)
        after = {**after, **snapshot(supervisor, bench.pid)}
        elapsed = time.monotonic() - started
        await stop_py_spies(spies)
    return stack, before, after, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--payments", type=int, default=5000)
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path("profile-pipeline"))
    parser.add_argument("--no-profile", action="store_true",
                        help="CPU per process only: py-spy's sampling takes CPU of the same cores")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    py_spy = find_py_spy(args.no_profile)

    stack, before, after, elapsed = asyncio.run(measure(args, py_spy))

    figures = json.loads((args.out / "bench.json").read_text()) if (args.out / "bench.json").exists() else {}
    payments = args.payments + args.accounts  # transfers + the deposits that fund the wallets
    cpu = cpu_by_group(before, after)
    total_cpu = sum(cpu.values())
    lines = [
        f"# Where the CPU goes: {args.payments:,} transfers + {args.accounts:,} deposits, "
        f"concurrency {args.concurrency}, {os.cpu_count()} cores",
        "",
        f"bench: {figures.get('accepted_per_second', '?')} accepted/s, {figures.get('completed_per_second', '?')} "
        f"completed/s; whole run {elapsed:.0f} s, {total_cpu:.0f} CPU-seconds in all "
        f"({total_cpu / elapsed / (os.cpu_count() or 1):.0%} of the cores)",
        "",
        *cpu_table(cpu, payments),
    ]
    profiles: dict[str, Any] = {}
    for name in [] if args.no_profile else sorted(service_pids(stack)):
        path = args.out / f"{name}.txt"
        if not path.exists():
            lines += ["", f"## {name}: no profile (see {name}.spy.log)"]
            continue
        samples, own, ours = profile_table(path.read_text())
        profiles[name] = {"samples": samples, "self_by_area": own, "paystream_inclusive": ours}
        lines += ["", f"## {name} ({samples:,} samples at {SAMPLE_RATE} Hz)", "",
                  "| self time in | share |", "|---|---:|"]
        lines += [f"| {area} | {share:.1%} |" for area, share in own]
        lines += ["", "| paystream function (inclusive) | share |", "|---|---:|"]
        lines += [f"| `{function}` | {share:.1%} |" for function, share in ours]
    (args.out / "profile.md").write_text("\n".join(lines) + "\n")
    (args.out / "profile.json").write_text(json.dumps(
        {"cpu_seconds": cpu, "payments": payments, "elapsed_seconds": elapsed, "bench": figures,
         "profiles": profiles}, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
