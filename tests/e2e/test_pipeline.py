"""A thousand-odd payments through the public HTTP API of a stack running as processes.

The mix is the demo's: ordinary transfers, transfers over the fraud amount limit, transfers
in the review band (half approved, half declined through /v1/reviews), transfers from
wallets without funds, and a burst from one wallet past the velocity limit. Afterwards
every payment must have ended in the status its scenario calls for, every wallet must hold
what the observed outcomes say, every terminal state must have arrived as a webhook with a
valid signature, and the money invariants must hold in the database.
"""

from __future__ import annotations

import random
from collections import Counter

from rich.console import Console

from paystream.tools.client import PaystreamClient
from paystream.tools.demo import SCENARIOS, DemoPlan, FraudLimits, run_scenarios, scenario_problem
from paystream.tools.invariants import check_invariants
from paystream.tools.load_runs import registered_receiver
from paystream.tools.receiver import PaymentUpdate

from .stack import UpProcess

TRANSFERS = 1_100
TERMINAL = {"succeeded", "failed", "declined"}


async def test_a_thousand_payments_end_right_with_signed_webhooks_and_invariants(
    stack: UpProcess, client: PaystreamClient
) -> None:
    assert stack.info is not None
    limits = FraudLimits.from_settings()
    plan = DemoPlan.for_payments(TRANSFERS, limits)
    assert plan.total >= 1_000
    webhooks: dict[str, list[PaymentUpdate]] = {}

    async with registered_receiver(client) as receiver:
        receiver.subscribe(lambda update: webhooks.setdefault(update.payment_id, []).append(update))
        run = await run_scenarios(
            client, receiver, plan, limits, concurrency=32, console=Console(quiet=True),
            rng=random.Random(7),
        )

    assert run.result is not None, "not every deposit succeeded"
    result = run.result
    # Every transfer was accepted and reached a terminal status.
    assert result.rejections() == Counter()
    assert len(result.accepted) == plan.total
    assert result.unsettled == []
    # Each scenario ended as it should: the rules fired, reviews were honoured.
    for scenario in SCENARIOS:
        tracked = [t for t in result.tracked if t.spec.scenario == scenario]
        assert tracked, scenario
        assert scenario_problem(scenario, tracked) is None, scenario
    assert run.reviewer.approved > 0 and run.reviewer.declined > 0
    # Every wallet holds exactly what the outcomes say.
    assert run.actual == run.expected
    # Every terminal state arrived by webhook, signed, and agreeing with the API.
    assert receiver.stats.invalid == 0
    assert receiver.stats.malformed == 0
    everything = [*run.funding.tracked, *result.tracked]
    for tracked in everything:
        assert tracked.payment_id is not None
        updates = webhooks.get(tracked.payment_id, [])
        terminal = [u for u in updates if u.status in TERMINAL]
        assert [u.status for u in terminal] == [tracked.status], tracked.payment_id
        assert terminal[0].failure_code == tracked.failure_code
        if tracked.reviewed:
            assert any(u.event_type == "payment.requires_review" for u in updates)
    # And the database agrees: the invariants of ARCHITECTURE.md §2.
    report = await check_invariants(stack.info.postgres_url)
    assert report.ok, str(report)
