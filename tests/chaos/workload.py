"""A client-side workload for the chaos tests: funded wallets, transfers, and bookkeeping.

Every transfer is sent with its own Idempotency-Key and remembered until the API has
answered 202. A request that got no answer (or a 5xx) is retried with the SAME key, as a
careful client would, so nothing the stack may have accepted is forgotten: after the
faults, every transfer is either accepted exactly once or refused with a 4xx.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import httpx

from paystream.tools.client import PaystreamClient

TERMINAL = frozenset({"succeeded", "failed", "declined"})
DEPOSIT = 90_000


@dataclass
class Transfer:
    source: str
    destination: str
    amount: int
    key: str = field(default_factory=lambda: uuid.uuid4().hex)
    payment_id: str | None = None
    refused: int | None = None  # a 4xx status: the API said no, and nothing was created

    def body(self) -> dict[str, object]:
        return {"source_account_id": self.source, "destination_account_id": self.destination,
                "amount": self.amount, "currency": "USD"}


@dataclass
class Workload:
    """Wallets, their deposits, and the transfers sent between them."""

    wallets: list[str]
    deposits: dict[str, str]  # payment id -> wallet
    transfers: list[Transfer] = field(default_factory=list)

    @classmethod
    async def funded(cls, client: PaystreamClient, wallets: int) -> Workload:
        ids = [str((await client.create_account("USD"))["id"]) for _ in range(wallets)]
        deposits = {str((await client.deposit(w, DEPOSIT))["id"]): w for w in ids}
        statuses = await wait_terminal(client, list(deposits), timeout=60)
        assert set(statuses.values()) == {"succeeded"}, Counter(statuses.values())
        return cls(ids, deposits)

    def plan(self, count: int, rng: random.Random) -> list[Transfer]:
        planned = []
        for _ in range(count):
            source, destination = rng.sample(self.wallets, 2)
            planned.append(Transfer(source, destination, rng.randint(100, 1_000)))
        self.transfers.extend(planned)
        return planned

    @property
    def accepted(self) -> list[Transfer]:
        return [t for t in self.transfers if t.payment_id is not None]

    @property
    def unanswered(self) -> list[Transfer]:
        return [t for t in self.transfers if t.payment_id is None and t.refused is None]

    def expected_balances(self, statuses: dict[str, str]) -> dict[str, int]:
        balances = dict.fromkeys(self.wallets, 0)
        for payment_id, wallet in self.deposits.items():
            if statuses.get(payment_id, "succeeded") == "succeeded":
                balances[wallet] += DEPOSIT
        for transfer in self.accepted:
            if statuses[str(transfer.payment_id)] == "succeeded":
                balances[transfer.source] -= transfer.amount
                balances[transfer.destination] += transfer.amount
        return balances


async def send(client: PaystreamClient, transfer: Transfer) -> bool:
    """One attempt; True when the API has answered (202 or a 4xx), False to try again later."""
    try:
        response = await client.request("POST", "/v1/payments", json_body=transfer.body(),
                                        idempotency_key=transfer.key)
    except httpx.HTTPError:
        return False
    if response.status_code == 202:
        transfer.payment_id = str(response.json()["id"])
        return True
    if 400 <= response.status_code < 500 and response.status_code not in (408, 409, 429):
        transfer.refused = response.status_code
        return True
    return False


async def send_all(
    client: PaystreamClient, transfers: list[Transfer], *, concurrency: int, retry_for: float,
    stop: asyncio.Event | None = None,
) -> None:
    """Send every transfer; retry an unanswered one with its key for up to ``retry_for`` s.

    With ``stop`` set, workers give up (leaving transfers unanswered) instead of retrying.
    """
    queue = list(reversed(transfers))

    async def worker() -> None:
        while queue:
            transfer = queue.pop()
            deadline = time.monotonic() + retry_for
            while not await send(client, transfer):
                if (stop is not None and stop.is_set()) or time.monotonic() > deadline:
                    return
                await asyncio.sleep(0.25)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def wait_terminal(client: PaystreamClient, payment_ids: list[str], *, timeout: float) -> dict[str, str]:
    """Poll until every payment is terminal; returns id -> status (fails at the deadline)."""
    statuses: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    pending = list(payment_ids)
    slots = asyncio.Semaphore(16)

    async def look(payment_id: str) -> None:
        async with slots:
            try:
                statuses[payment_id] = str((await client.get_payment(payment_id))["status"])
            except httpx.HTTPError:
                pass

    while pending:
        await asyncio.gather(*(look(p) for p in pending))
        pending = [p for p in pending if statuses.get(p) not in TERMINAL]
        if not pending:
            break
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{len(pending)} payments not terminal after {timeout:.0f}s, e.g. {pending[:3]}: "
                f"{Counter(statuses.get(p, 'unknown') for p in pending)}"
            )
        await asyncio.sleep(0.5)
    return statuses


async def balances(client: PaystreamClient, wallets: list[str]) -> dict[str, int]:
    return {w: int((await client.get_account(w))["balance"]["posted"]) for w in wallets}
