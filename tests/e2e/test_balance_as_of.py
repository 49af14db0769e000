"""`GET /v1/accounts/{id}?as_of=`: an account's balance as it stood at a past instant."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

from paystream.tools.client import PaystreamClient

from .stack import UpProcess


async def _settled(client: PaystreamClient, payment_id: str) -> None:
    deadline = time.monotonic() + 30
    while (await client.get_payment(payment_id))["status"] != "succeeded":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)


async def test_a_past_balance_sums_only_the_entries_up_to_that_instant(
    stack: UpProcess, client: PaystreamClient
) -> None:
    account = await client.create_account("USD")
    before_anything = datetime.now(UTC) - timedelta(seconds=1)
    await _settled(client, (await client.deposit(account["id"], 1_000))["id"])
    between = datetime.now(UTC)
    await asyncio.sleep(0.05)
    await _settled(client, (await client.deposit(account["id"], 500))["id"])

    async def posted(as_of: datetime | None) -> int:
        params = {"as_of": as_of.isoformat()} if as_of else None
        return int((await client.call("GET", f"/v1/accounts/{account['id']}", params=params))["balance"]["posted"])

    assert await posted(None) == 1_500
    assert await posted(between) == 1_000
    assert await posted(before_anything) == 0
    assert await posted(datetime.now(UTC)) == 1_500


async def test_an_unreadable_or_zoneless_as_of_is_a_422(stack: UpProcess, client: PaystreamClient) -> None:
    account = await client.create_account("USD")
    # Numbers (which a lax parser reads as seconds since 1970), a date alone, no zone, no
    # such day: each a 422, never a balance for some other instant.
    for bad in ("yesterday", "2026-11-21T12:00:00", "0.5", "1700000000", "2026-11-21",
                "2026-13-01T00:00:00Z", "2026-11-21T12:00:00+25:00"):
        response = await client.request("GET", f"/v1/accounts/{account['id']}", params={"as_of": bad})
        assert response.status_code == 422, (bad, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
