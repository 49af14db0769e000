"""`paystream bench --floor`, without a stack: the pipeline's share of the floor, the report's
fields, the bench's own client pointed at the floor, the receiver's unsigned path (open only
while the floor runs), and --floor refused with --rate or --users in one line, exit 2.
The floor's processes against real servers are tests/e2e/test_bench_floor.py's."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import cast

import h11
import httpx
import orjson
import pytest

from paystream.tools.bench import BenchError, BenchOptions, check_bench_options
from paystream.tools.floor import PAY_PATH, FloorClient, floor_figures, floor_table, share_percent
from paystream.tools.load import EngineOptions, LoadEngine
from paystream.tools.load_results import LoadResult, PaymentSpec, Tracked
from paystream.tools.receiver import UNSIGNED_PATH, WEBHOOK_PATH, PaymentUpdate, WebhookReceiver


def _result(accepted: int, seconds: float, *, settled: int | None = None) -> LoadResult:
    tracked = []
    for index in range(accepted):
        t = Tracked(PaymentSpec(source="acc_a", destination="acc_b", amount=100))
        t.payment_id, t.sent_at, t.api_latency = f"pay_{index}", 0.0, 0.010
        if index < (accepted if settled is None else settled):
            t.status, t.terminal_at = "succeeded", 0.050
        tracked.append(t)
    return LoadResult(tracked=tracked, submit_seconds=seconds, first_sent=0.0, polls=0, reviews_decided=0)


def test_the_share_is_the_pipelines_rate_as_a_percentage_of_the_floors() -> None:
    assert share_percent(62.0, 196.0) == 31.6
    assert share_percent(196.0, 196.0) == 100.0
    assert share_percent(250.0, 200.0) == 125.0  # a share above 100 % is reported, not clipped


def test_a_floor_that_accepted_nothing_has_no_share() -> None:
    assert share_percent(62.0, 0.0) is None


def test_the_json_has_both_rates_the_share_and_the_floors_own_figures() -> None:
    figures = floor_figures(_result(400, 2.0), _result(100, 2.0))

    assert figures["floor_accepted_per_s"] == 200.0
    assert figures["pipeline_accepted_per_s"] == 50.0
    assert figures["share_percent"] == 25.0
    assert figures["floor"]["accepted"] == 400 and figures["floor"]["terminal"] == 400
    assert figures["floor"]["statuses"] == {"succeeded": 400}


def test_the_console_table_shows_the_share() -> None:
    from rich.console import Console

    console = Console(record=True, width=120)
    console.print(floor_table(_result(400, 2.0), _result(100, 2.0)))
    text = console.export_text()

    assert "pipeline's share of the floor" in text and "25.0 %" in text
    assert "200.0" in text and "50.0" in text


class FakeReceiver:
    def subscribe(self, _: object) -> None: ...
    def unsubscribe(self, _: object) -> None: ...


async def test_the_bench_client_sends_payments_to_the_floors_pay_and_fetches_no_token() -> None:
    paths: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.path)
        return httpx.Response(201, json={"id": f"pay_{len(paths)}", "status": "succeeded"})

    specs = [PaymentSpec(source="acc_a", destination="acc_b", amount=100) for _ in range(5)]
    async with FloorClient("http://floor.test", max_connections=4, transport=httpx.MockTransport(answer)) as client:
        engine = LoadEngine(client, cast(WebhookReceiver, FakeReceiver()),
                            EngineOptions(concurrency=2, accepted_status=201))
        result = await engine.run(specs)

    assert paths == [PAY_PATH] * 5
    assert len(result.accepted) == 5 and result.rejections() == {}


def _delivery(receiver: WebhookReceiver, path: str, body: bytes) -> int:
    request = h11.Request(method="POST", target=path, headers=[("host", "127.0.0.1"),
                                                               ("content-length", str(len(body)))])
    return receiver._handle(request, body)


def test_the_receiver_takes_unsigned_floor_events_only_while_opened() -> None:
    receiver = WebhookReceiver()
    heard: list[PaymentUpdate] = []
    receiver.subscribe(heard.append)
    body = orjson.dumps({"id": "pay_1", "type": "floor.paid", "data": {"id": "pay_1", "status": "succeeded"}})

    assert _delivery(receiver, UNSIGNED_PATH, body) == 404
    receiver._unsigned = True  # what open_unsigned sets (it also needs a started server for the URL)
    assert _delivery(receiver, UNSIGNED_PATH, body) == 204
    assert _delivery(receiver, WEBHOOK_PATH, body) == 400  # the signed path still wants a signature
    receiver.close_unsigned()
    assert _delivery(receiver, UNSIGNED_PATH, body) == 404

    assert [(u.payment_id, u.status) for u in heard] == [("pay_1", "succeeded")]
    assert heard[0].received_at <= time.perf_counter()


@pytest.mark.parametrize("options", [BenchOptions(floor=True, rate=10.0), BenchOptions(floor=True, users=5)])
def test_floor_with_an_open_loop_option_is_refused(options: BenchOptions) -> None:
    with pytest.raises(BenchError, match=r"--floor and --(rate|users) conflict"):
        check_bench_options(options)


def test_floor_keeps_the_closed_loop_defaults() -> None:
    options = check_bench_options(BenchOptions(floor=True))

    assert options.floor and options.payments == 10_000 and options.concurrency == 32


@pytest.mark.parametrize(("args", "says"), [
    (["--floor", "--rate", "10"], "--floor and --rate conflict"),
    (["--floor", "--rate", "10", "--users", "5"], "--floor and --rate conflict"),
    (["--floor", "--users", "5"], "--floor and --users conflict"),
])
def test_floor_with_rate_or_users_is_one_line_and_exit_2(args: list[str], says: str,
                                                         refused: Callable[[list[str]], str]) -> None:
    assert says in refused(["bench", *args])
