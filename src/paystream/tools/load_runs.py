"""What the tools built on the load engine share: a registered webhook receiver, wallets made in
bulk, progress bars over a run, and the report tables."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from paystream.tools.client import PaystreamClient
from paystream.tools.load import LoadEngine
from paystream.tools.load_results import LoadResult, PaymentSpec, lateness_of, percentile
from paystream.tools.receiver import WebhookReceiver

T = TypeVar("T")

WEBHOOK_EVENTS = ("payment.succeeded", "payment.failed", "payment.declined", "payment.requires_review")


@contextlib.asynccontextmanager
async def registered_receiver(client: PaystreamClient) -> AsyncIterator[WebhookReceiver]:
    """A started receiver, registered as a webhook endpoint for every payment event.

    The endpoint is deleted on the way out, so a stack does not keep retrying
    deliveries to a receiver that is gone.
    """
    receiver = WebhookReceiver()
    await receiver.start()
    try:
        endpoint = await client.create_webhook_endpoint(receiver.url, list(WEBHOOK_EVENTS))
        receiver.secret = str(endpoint["secret"])
        try:
            yield receiver
        finally:
            with contextlib.suppress(httpx.HTTPError):
                await client.request("DELETE", f"/v1/webhook_endpoints/{endpoint['id']}")
    finally:
        await receiver.close()


async def bounded_gather(jobs: Sequence[Callable[[], Awaitable[T]]], limit: int) -> list[T]:
    """Run ``jobs`` with at most ``limit`` at a time; results in the jobs' order."""
    slots = asyncio.Semaphore(limit)

    async def one(job: Callable[[], Awaitable[T]]) -> T:
        async with slots:
            return await job()

    return await asyncio.gather(*(one(job) for job in jobs))


async def create_wallets(client: PaystreamClient, count: int, *, concurrency: int, label: str) -> list[str]:
    """Create ``count`` USD wallets (no overdraft) and return their ids."""

    def job(index: int) -> Callable[[], Awaitable[dict[str, Any]]]:
        return lambda: client.create_account("USD", metadata={"tool": label, "n": str(index)})

    accounts = await bounded_gather([job(i) for i in range(count)], concurrency)
    return [str(account["id"]) for account in accounts]


def progress_bars(console: Console) -> Progress:
    """The tools' progress display: a label, the bar, done of total, the time taken."""
    return Progress(TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console)


async def run_with_progress(
    engine: LoadEngine, specs: Sequence[PaymentSpec], console: Console, label: str
) -> LoadResult:
    """`engine.run` with two progress bars: submitted and terminal."""
    with progress_bars(console) as progress:
        submitted = progress.add_task(f"{label}: submitted", total=len(specs))
        finished = progress.add_task(f"{label}: terminal", total=len(specs))
        running = asyncio.create_task(engine.run(specs))
        while not running.done():
            progress.update(submitted, completed=engine.sent)
            progress.update(finished, completed=engine.settled + engine.rejected)
            await asyncio.wait({running}, timeout=0.2)
        progress.update(submitted, completed=engine.sent)
        progress.update(finished, completed=engine.settled + engine.rejected)
    return running.result()


# -- report tables ------------------------------------------------------------------------------


def milliseconds(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:,.1f} ms"


def outcome_table(result: LoadResult, title: str = "Final status") -> Table:
    table = Table(title=title)
    table.add_column("status")
    table.add_column("failure_code")
    table.add_column("payments", justify="right")
    for (status, code), count in sorted(result.outcomes().items()):
        table.add_row(status, code or "-", f"{count:,}")
    for rejection, count in sorted(result.rejections().items()):
        table.add_row(f"[red]not accepted: {rejection}[/red]", "-", f"{count:,}")
    return table


def performance_table(result: LoadResult, title: str = "Throughput and latency") -> Table:
    api = result.api_latencies()
    e2e = result.end_to_end()
    table = Table(title=title)
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("payments sent / accepted (202)", f"{result.sent:,} / {len(result.accepted):,}")
    table.add_row("submission wall time", f"{result.submit_seconds:,.2f} s")
    table.add_row("first POST → last terminal", f"{result.complete_seconds:,.2f} s")
    table.add_row("accepted/s", f"{result.accepted_per_second():,.1f}")
    table.add_row("completed/s", f"{result.completed_per_second():,.1f}")
    for pct in (50, 95, 99):
        table.add_row(f"API latency p{pct}", milliseconds(percentile(api, pct)))
    for pct in (50, 99):
        table.add_row(f"end-to-end p{pct}", milliseconds(percentile(e2e, pct)))
    reviewed = result.end_to_end(reviewed=True)
    if reviewed:
        table.add_row("end-to-end p50, via human review", milliseconds(percentile(reviewed, 50)))
    if result.rate is not None:
        late = lateness_of(result.tracked)
        table.add_row("scheduled rate / sent at", f"{result.rate:,.1f}/s / {late.offered_per_second:,.1f}/s")
        table.add_row(f"sent late (> {late.threshold * 1000:g} ms after due)",
                      f"{late.late:,} of {late.scheduled:,} ({late.share:.1%})")
        table.add_row("lateness p99 / max", f"{milliseconds(late.p99_seconds)} / {milliseconds(late.max_seconds)}")
        table.add_row("sends held by the in-flight cap / a busy sender",
                      f"{result.waited_for_cap:,} / {result.waited_for_sender:,}")
    return table
