"""Faults in the middle of a run: the whole stack stopped and started again, and services
killed with SIGKILL. Nothing the API accepted may be lost, and no money may move twice."""

from __future__ import annotations

import asyncio
import os
import random
import signal

import psutil

from paystream.tools.client import PaystreamClient
from paystream.tools.invariants import check_invariants

from ..e2e.stack import UpProcess, running_stack
from .workload import Workload, balances, send_all, wait_terminal


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def _settle_and_check(stack: UpProcess, client: PaystreamClient, work: Workload) -> None:
    """Every transfer answered, every accepted one terminal, balances right, invariants hold."""
    assert stack.info is not None
    assert work.unanswered == []
    assert all(t.refused is None for t in work.transfers), "a valid transfer was refused"
    statuses = await wait_terminal(client, [str(t.payment_id) for t in work.accepted], timeout=120)
    # Small, funded transfers spread over many wallets: every one must succeed.
    assert set(statuses.values()) == {"succeeded"}
    assert await balances(client, work.wallets) == work.expected_balances(statuses)
    report = await check_invariants(stack.info.postgres_url)
    assert report.ok, str(report)


async def test_stopping_the_stack_mid_run_and_starting_it_again_loses_nothing_accepted() -> None:
    async with running_stack(prefix="paystream-chaos-restart-") as stack:
        assert stack.info is not None
        rng = random.Random(11)
        async with PaystreamClient.for_stack(stack.info, max_connections=32) as client:
            work = await Workload.funded(client, wallets=40)
            transfers = work.plan(600, rng)
            stop = asyncio.Event()
            sending = asyncio.create_task(
                send_all(client, transfers, concurrency=16, retry_for=600, stop=stop)
            )
            while len(work.accepted) < 150:
                assert not sending.done()
                await asyncio.sleep(0.05)
            # SIGTERM while requests are in flight: the stack drains and stops.
            stop.set()
            pids = stack.pids()
            code = await stack.stop()
            await sending
        assert code == 0
        # Drained and stopped: no process of the stack is left behind.
        assert [name for name, pid in pids.items() if _alive(pid)] == []
        accepted_before_restart = len(work.accepted)
        assert accepted_before_restart < len(transfers), "the stop came too late to test anything"

        info = await stack.start()
        async with PaystreamClient.for_stack(info, max_connections=32) as client:
            # Whatever got no answer is sent again with its key: accepted once, or now.
            await send_all(client, work.unanswered, concurrency=16, retry_for=60)
            await _settle_and_check(stack, client, work)
        assert len(work.accepted) == len(transfers)


async def test_services_killed_mid_run_are_restarted_and_nothing_is_lost() -> None:
    async with running_stack(prefix="paystream-chaos-kill-") as stack:
        assert stack.info is not None
        rng = random.Random(12)
        async with PaystreamClient.for_stack(stack.info, max_connections=32) as client:
            work = await Workload.funded(client, wallets=40)
            transfers = work.plan(500, rng)
            sending = asyncio.create_task(send_all(client, transfers, concurrency=16, retry_for=120))
            while len(work.accepted) < 100:
                assert not sending.done()
                await asyncio.sleep(0.05)
            for victim in ("ledger", "payments"):
                os.kill(stack.service_pid(victim), signal.SIGKILL)
                await asyncio.sleep(0.5)
            await sending
            for victim in ("ledger", "payments"):
                assert stack.said(f"{victim} exited with code"), victim
                assert stack.said(f"{victim} is back"), victim
            assert len(work.accepted) == len(transfers)
            await _settle_and_check(stack, client, work)
