"""Which tenant, currency and owner an account has: asked of the ledger once, then remembered.

Those three never change once an account exists, so caching them (in memory and in
the ``account_directory`` table) is always correct. A miss asks the ledger over
internal HTTP, through a guard (timeout, bulkhead, circuit breaker).
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
import orjson

from paystream.payments.domain import DirectoryEntry
from paystream.payments.store import PaymentsStore
from paystream.platform.errors import TransientError
from paystream.platform.http import Caller
from paystream.platform.internal import InternalClient
from paystream.platform.resilience import Guard

_CACHE_LIMIT = 200_000


class AccountDirectory:
    def __init__(
        self, pool: asyncpg.Pool, store: PaymentsStore, ledger: InternalClient, guard: Guard
    ) -> None:
        self._pool = pool
        self._store = store
        self._ledger = ledger
        self._guard = guard
        self._cache: dict[str, DirectoryEntry] = {}

    def _remember(self, entry: DirectoryEntry) -> None:
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[entry.account_id] = entry

    async def lookup(self, caller: Caller, account_ids: Sequence[str]) -> dict[str, DirectoryEntry]:
        """Entries for the accounts that exist in the caller's tenant (others are left out)."""
        found = {i: self._cache[i] for i in account_ids if i in self._cache}
        missing = [i for i in account_ids if i not in found]
        if missing:
            async with self._pool.acquire() as conn:
                stored = await self._store.directory_get(conn, missing)
            for entry in stored.values():
                self._remember(entry)
            found.update(stored)
            missing = [i for i in missing if i not in stored]
        for account_id in missing:
            answer = await self._ask_ledger(caller, account_id)
            if answer is not None:
                async with self._pool.acquire() as conn:
                    await self._store.directory_put(conn, answer)
                self._remember(answer)
                found[account_id] = answer
        return {i: e for i, e in found.items() if e.tenant_id == caller.tenant_id}

    async def _ask_ledger(self, caller: Caller, account_id: str) -> DirectoryEntry | None:
        # Ask as the tenant, not the user: a user may pay into accounts they do not own.
        tenant_caller = Caller(
            tenant_id=caller.tenant_id,
            client_id=caller.client_id,
            user_id=None,
            scopes=frozenset({"accounts:read"}),
            correlation_id=caller.correlation_id,
            idempotency_key=None,
        )

        async def call() -> tuple[int, bytes]:
            response = await self._ledger.request(
                "GET", f"/internal/accounts/{account_id}", tenant_caller
            )
            if response.status_code >= 500:
                raise TransientError(f"ledger answered {response.status_code}")
            return response.status_code, response.content

        status, body = await self._guard.call(call)
        if status == 404:
            return None
        if status != 200:
            raise TransientError(f"ledger answered {status} for an account lookup")
        data = orjson.loads(body)
        return DirectoryEntry(
            account_id=data["id"],
            tenant_id=caller.tenant_id,
            currency=data["currency"],
            owner_user_id=data.get("owner_user_id"),
        )
