"""At-least-once delivery at its worst: every event published twice, and every consumer
replayed from the start of its stream. The inbox must make all of it harmless: no balance
moves twice, no payment changes its mind, no webhook is queued twice."""

from __future__ import annotations

import random

import httpx
import nats
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from paystream.contracts.topology import CONSUMERS, partitioned_consumers
from paystream.platform.config import load_settings
from paystream.tools.client import PaystreamClient, StackInfo
from paystream.tools.demo import SCENARIOS, DemoPlan, FraudLimits, run_scenarios, scenario_problem
from paystream.tools.invariants import check_invariants
from paystream.tools.load_runs import WEBHOOK_EVENTS, registered_receiver

from ..e2e.stack import running_stack
from .workload import balances

SERVICE_OF = {spec.durable: spec.service for spec in CONSUMERS}
# The durables on the bus: one per logical consumer and partition.
DURABLES = partitioned_consumers(load_settings().partitions)
GROUP_OF = {spec.durable: spec.inbox for spec in DURABLES}


async def _duplicates_skipped(info: StackInfo) -> dict[str, float]:
    """Per durable consumer: events its inbox recognised as already applied (from /metrics)."""
    counts = dict.fromkeys(SERVICE_OF, 0.0)
    async with httpx.AsyncClient(timeout=5) as http:
        for service in set(SERVICE_OF.values()):
            text = (await http.get(f"{info.operations_urls[service]}/metrics")).text
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if (sample.name == "paystream_events_consumed_total"
                            and sample.labels.get("outcome") == "duplicate"):
                        counts[sample.labels["consumer"]] += sample.value
    return counts


async def _row_counts(info: StackInfo) -> dict[str, int]:
    import asyncpg

    conn = await asyncpg.connect(info.postgres_url)
    try:
        return {
            "transfers": await conn.fetchval("SELECT count(*) FROM ledger.transfers"),
            "entries": await conn.fetchval("SELECT count(*) FROM ledger.entries"),
            "deliveries": await conn.fetchval("SELECT count(*) FROM notifications.deliveries"),
            "timeline": await conn.fetchval("SELECT count(*) FROM payments.payment_events"),
        }
    finally:
        await conn.close()


async def _consumers_caught_up(info: StackInfo) -> dict[str, int]:
    """Wait until every durable has nothing pending or unacked; returns how many each delivered."""
    import asyncio
    import time

    nc = await nats.connect(info.nats_url)
    try:
        js = nc.jetstream()
        deadline = time.monotonic() + 120
        while True:
            infos = [await js.consumer_info(spec.stream, spec.durable) for spec in DURABLES]
            if all(i.num_pending == 0 and i.num_ack_pending == 0 for i in infos):
                return {i.name: i.delivered.stream_seq for i in infos}
            assert time.monotonic() < deadline, [(i.name, i.num_pending, i.num_ack_pending) for i in infos]
            await asyncio.sleep(0.5)
    finally:
        await nc.close()


async def test_every_event_delivered_twice_moves_no_balance_twice() -> None:
    env = {"PAYSTREAM_CHAOS_DUPLICATE_DELIVERY": "true", "PAYSTREAM_SCREENING_DEADLINE_SECONDS": "30"}
    async with running_stack(env, prefix="paystream-chaos-dup-") as stack:
        assert stack.info is not None
        limits = FraudLimits.from_settings()
        plan = DemoPlan.for_payments(300, limits)
        async with PaystreamClient.for_stack(stack.info, max_connections=32) as client, \
                registered_receiver(client) as receiver:
            run = await run_scenarios(client, receiver, plan, limits, concurrency=16,
                                      console=Console(quiet=True), rng=random.Random(5))
        assert run.result is not None and run.result.unsettled == []
        for scenario in SCENARIOS:
            tracked = [t for t in run.result.tracked if t.spec.scenario == scenario]
            assert scenario_problem(scenario, tracked) is None, scenario
        assert run.actual == run.expected
        await _consumers_caught_up(stack.info)
        skipped = await _duplicates_skipped(stack.info)
        # The fault really happened: every consumer saw copies and its inbox dropped them.
        assert all(count > 0 for count in skipped.values()), skipped
        report = await check_invariants(stack.info.postgres_url)
        assert report.ok, str(report)


async def test_consumers_replayed_from_the_start_of_their_streams_apply_nothing_twice() -> None:
    async with running_stack(prefix="paystream-chaos-replay-") as stack:
        assert stack.info is not None
        limits = FraudLimits.from_settings()
        plan = DemoPlan.for_payments(200, limits)
        async with PaystreamClient.for_stack(stack.info, max_connections=32) as client, \
                registered_receiver(client) as receiver:
            run = await run_scenarios(client, receiver, plan, limits, concurrency=16,
                                      console=Console(quiet=True), rng=random.Random(6))
            assert run.result is not None and run.result.unsettled == []
            # An endpoint that would get a delivery for any event applied a second time.
            await client.create_webhook_endpoint("http://127.0.0.1:9/replayed", list(WEBHOOK_EVENTS))
            wallets = run.wallets.all()
            before = await balances(client, wallets)
            statuses = {t.payment_id: t.status for t in [*run.funding.tracked, *run.result.tracked]}
        assert before == run.expected
        delivered_first = await _consumers_caught_up(stack.info)
        rows_before = await _row_counts(stack.info)

        # Forget every consumer's position; `paystream up` recreates them from the first event.
        nc = await nats.connect(stack.info.nats_url)
        js = nc.jetstream()
        for spec in DURABLES:
            await js.delete_consumer(spec.stream, spec.durable)
        await nc.close()
        await stack.stop()
        info = await stack.start()

        delivered_again = await _consumers_caught_up(info)
        skipped = await _duplicates_skipped(info)
        for durable, last in delivered_first.items():
            # Replayed up to where it was (and the metrics say the inbox dropped them).
            assert delivered_again[durable] >= last, durable
            assert skipped[GROUP_OF[durable]] > 0, durable
        assert await _row_counts(info) == rows_before
        async with PaystreamClient.for_stack(info, max_connections=32) as client:
            assert await balances(client, wallets) == before
            for payment_id, status in statuses.items():
                assert (await client.get_payment(str(payment_id)))["status"] == status
        report = await check_invariants(info.postgres_url)
        assert report.ok, str(report)
