"""The API client slows down to the rate limit instead of failing (a 429 is sent again after
its Retry-After; other errors are not retried), and the tools that drive the API report a
failure in one line. The server side is an httpx mock transport that answers as the gateway
does (its 429s are tested against the real stack in tests/e2e/test_rate_limits.py)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from paystream.cli import app
from paystream.stack.ports import free_port
from paystream.tools.client import ApiError, PaystreamClient


class Gateway:
    """Answers /oauth/token, and POST /v1/accounts with the statuses it is given, in turn."""

    def __init__(self, *statuses: int, retry_after: str = "0") -> None:
        self.statuses = list(statuses)
        self.retry_after = retry_after
        self.account_posts = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/oauth/token":
            return httpx.Response(200, json={"access_token": "t", "expires_in": 3600})
        self.account_posts += 1
        status = self.statuses.pop(0)
        if status == 429:
            return httpx.Response(429, headers={"Retry-After": self.retry_after},
                                  json={"code": "rate_limited", "detail": "the write rate limit is exhausted"})
        if status == 201:
            return httpx.Response(201, json={"id": "acc_1", "currency": "USD"})
        return httpx.Response(status, json={"code": "validation_failed", "detail": "bad"})


def _client(gateway: Gateway) -> PaystreamClient:
    return PaystreamClient("http://gateway.test", "cli_x", "secret", transport=httpx.MockTransport(gateway))


async def test_a_rate_limited_request_is_sent_again_after_retry_after() -> None:
    gateway = Gateway(429, 429, 201)
    async with _client(gateway) as client:
        account = await client.create_account("USD")
    assert account["id"] == "acc_1"
    assert gateway.account_posts == 3


async def test_an_unreadable_retry_after_still_retries() -> None:
    gateway = Gateway(429, 201, retry_after="soon")
    async with _client(gateway) as client:
        assert (await client.create_account("USD"))["id"] == "acc_1"
    assert gateway.account_posts == 2


@pytest.mark.parametrize("status", [400, 409, 422, 500, 503])
async def test_other_errors_are_not_retried(status: int) -> None:
    gateway = Gateway(status, 201)
    async with _client(gateway) as client:
        with pytest.raises(ApiError) as raised:
            await client.create_account("USD")
    assert raised.value.status == status
    assert gateway.account_posts == 1


@pytest.mark.parametrize("command", [["demo", "--payments", "100"], ["bench", "--payments", "10"]])
def test_the_api_tools_report_an_unreachable_gateway_in_one_line(tmp_path: Path, command: list[str]) -> None:
    """`paystream demo` and `bench` against a stack whose gateway is gone: a message and exit
    1, not a traceback."""
    (tmp_path / "stack.json").write_text(json.dumps({
        "gateway_url": f"http://127.0.0.1:{free_port()}", "postgres_url": "postgresql://x@127.0.0.1:1/x",
        "nats_url": "nats://127.0.0.1:1", "redis_url": "redis://127.0.0.1:1", "operations_urls": {},
    }))
    (tmp_path / "admin-client.json").write_text(json.dumps({"client_id": "cli_x", "client_secret": "s"}))

    result = CliRunner().invoke(app, [*command, "--home", str(tmp_path)])

    assert result.exit_code == 1
    assert "failed:" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output


@pytest.mark.parametrize("command", [
    ["check"], ["demo", "--payments", "100"], ["bench", "--payments", "10"], ["audit", "verify"],
    ["keys", "rotate"], ["clients", "create", "--name", "x", "--scope", "payments:read"],
    ["ledger", "verify", "--no-sign"], ["faults"], ["fraud", "export-labels"], ["gameday", "kill"],
])
def test_every_command_that_needs_a_stack_says_there_is_none_in_one_line(tmp_path: Path, command: list[str]) -> None:
    """A home with no running stack: one line naming the home, exit 2, no traceback."""
    result = CliRunner().invoke(app, [*command, "--home", str(tmp_path)])

    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert str(tmp_path) in " ".join(result.output.split()) or "stack" in lines[0], lines


def test_an_invalid_client_is_refused_in_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["clients", "create", "--name", "x", "--home", str(tmp_path)])

    assert result.exit_code == 2
    assert [line for line in result.output.splitlines() if line.strip()] == [
        "invalid client: scopes: List should have at least 1 item after validation, not 0"]
