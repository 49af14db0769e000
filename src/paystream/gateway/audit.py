"""The audit log: one append-only, hash-chained record per state-changing request.

A request appends its record with one INSERT (durable before the response is sent, and
without any lock, so the hot path never queues behind other requests). The chainer, a
gateway worker, then links the new records in order: under the ``audit_head`` row lock
it gives each the next ``chain_seq`` and ``hash = sha256(prev_hash || canonical record)``.
The database refuses any change to a chained record and any deletion, for everyone but
a superuser with triggers off — and `verify` (``paystream audit verify``) finds that too:
it recomputes every hash from the rows alone and names the first record that breaks the
chain, a gap in the sequence, or a head that does not match.

`Audit.audited` is the step of the request path that appends a state-changing request's
record, whatever its outcome (or leaves it to the idempotency step, which writes it in the
same transaction as the stored answer); `audit_record` says what the record holds.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson
from starlette.requests import Request
from starlette.responses import Response

from paystream.gateway.domain import Principal
from paystream.gateway.edge import object_id
from paystream.platform.errors import DomainError
from paystream.platform.observability import get_logger

log = get_logger(__name__)

GENESIS = bytes(32)
CHAIN_BATCH = 1_000
# A record still unchained after this long means the chainer is not running.
UNCHAINED_GRACE_SECONDS = 60

_FIELDS = ("id", "at", "tenant_id", "actor", "user_id", "source", "action", "object_id",
           "outcome", "correlation_id")


@dataclass(frozen=True, slots=True)
class AuditRecord:
    actor: str
    source: str
    action: str
    outcome: int
    tenant_id: str | None = None
    user_id: str | None = None
    object_id: str | None = None
    correlation_id: str | None = None


def record_hash(prev_hash: bytes, chain_seq: int, row: Any) -> bytes:
    """The chain link of one record: its content, its place, and the link before it."""
    content = {name: row[name] for name in _FIELDS}
    at: datetime = content["at"]
    content["at"] = at.isoformat()
    content["chain_seq"] = chain_seq
    return hashlib.sha256(prev_hash + orjson.dumps(content, option=orjson.OPT_SORT_KEYS)).digest()


def insert_statement(first: int = 1) -> str:
    """The INSERT of one record, its eight parameters numbered from ``$first`` (so that it can
    follow another statement's parameters in one round trip)."""
    marks = ", ".join(f"${first + k}" for k in range(8))
    return ("INSERT INTO audit_log (tenant_id, actor, user_id, source, action, object_id, outcome, "
            f"correlation_id) VALUES ({marks})")


def insert_values(record: AuditRecord) -> tuple[object, ...]:
    """The parameters of `insert_statement`, in its order."""
    return (record.tenant_id, record.actor[:128], record.user_id, record.source[:64],
            record.action[:200], record.object_id, record.outcome, record.correlation_id)


_INSERT = insert_statement()


async def append(conn: asyncpg.Connection, record: AuditRecord) -> None:
    await conn.execute(_INSERT, *insert_values(record))


async def chain_pending(conn: asyncpg.Connection, *, limit: int = CHAIN_BATCH) -> int:
    """Link the records appended since the last call; returns how many were linked."""
    async with conn.transaction():
        head = await conn.fetchrow("SELECT seq, hash FROM audit_head FOR UPDATE")
        rows = await conn.fetch(
            f"SELECT {', '.join(_FIELDS)} FROM audit_log WHERE hash IS NULL ORDER BY id LIMIT $1",
            limit,
        )
        if not rows:
            return 0
        seq, prev = int(head["seq"]), bytes(head["hash"])
        ids, seqs, prevs, hashes = [], [], [], []
        for row in rows:
            seq += 1
            digest = record_hash(prev, seq, row)
            ids.append(row["id"])
            seqs.append(seq)
            prevs.append(prev)
            hashes.append(digest)
            prev = digest
        await conn.execute(
            "UPDATE audit_log AS a SET chain_seq = c.seq, prev_hash = c.prev, hash = c.hash "
            "FROM unnest($1::bigint[], $2::bigint[], $3::bytea[], $4::bytea[]) AS c(id, seq, prev, hash) "
            "WHERE a.id = c.id",
            ids, seqs, prevs, hashes,
        )
        await conn.execute("UPDATE audit_head SET seq = $1, hash = $2", seq, prev)
    return len(rows)


async def run_chainer(pool: asyncpg.Pool, stopping: asyncio.Event, interval: float = 0.5) -> None:
    """Gateway worker: keep the chain up to date until told to stop (then once more)."""
    while True:
        try:
            async with pool.acquire() as conn:
                while await chain_pending(conn) == CHAIN_BATCH:
                    pass
        except Exception as exc:
            log.warning("audit_chain_failed", error=repr(exc))
        if stopping.is_set():
            return
        try:
            await asyncio.wait_for(stopping.wait(), timeout=interval)
        except TimeoutError:
            pass


@dataclass(frozen=True, slots=True)
class VerifyReport:
    records: int
    chained: int
    problems: list[str]
    stale_unchained: int

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_rows(rows: Sequence[Any], head: Any, *, stale_unchained: int = 0) -> VerifyReport:
    """Recompute the chain over ``rows`` (every record, ordered by chain_seq, unchained last)."""
    problems: list[str] = []
    prev, expected_seq = GENESIS, 0
    chained = 0
    for row in rows:
        if row["hash"] is None:
            continue
        chained += 1
        expected_seq += 1
        if row["chain_seq"] != expected_seq:
            problems.append(f"record {row['id']}: chain position {row['chain_seq']}, expected "
                            f"{expected_seq} (a record is missing before it)")
            break
        if bytes(row["prev_hash"]) != prev:
            problems.append(f"record {row['id']} (#{expected_seq}): does not link to the record before it")
            break
        if record_hash(prev, expected_seq, row) != bytes(row["hash"]):
            problems.append(f"record {row['id']} (#{expected_seq}): its content does not match its hash "
                            "(changed after it was written)")
            break
        prev = bytes(row["hash"])
    if not problems and (int(head["seq"]) != expected_seq or bytes(head["hash"]) != prev):
        problems.append(f"the chain head says {head['seq']} records, the log holds {expected_seq} "
                        "(records were removed from the end)")
    if stale_unchained:
        problems.append(f"{stale_unchained} records older than {UNCHAINED_GRACE_SECONDS}s are not "
                        "chained (is the gateway's chainer running?)")
    return VerifyReport(len(rows), chained, problems, stale_unchained)


async def verify(conn: asyncpg.Connection) -> VerifyReport:
    """Read the audit log (search_path = the gateway's schema) and check the whole chain."""
    rows = await conn.fetch(
        f"SELECT {', '.join(_FIELDS)}, chain_seq, prev_hash, hash FROM audit_log "
        "ORDER BY chain_seq NULLS LAST, id"
    )
    head = await conn.fetchrow("SELECT seq, hash FROM audit_head")
    stale = await conn.fetchval(
        "SELECT count(*) FROM audit_log WHERE hash IS NULL "
        "AND at < clock_timestamp() - make_interval(secs => $1)", UNCHAINED_GRACE_SECONDS,
    )
    return verify_rows(rows, head, stale_unchained=int(stale))


def audit_record(action: str, request: Request, status: int, response: Response | None) -> AuditRecord:
    """The record of a request that got ``status`` (and ``response``, when there is one)."""
    principal: Principal | None = getattr(request.state, "principal", None)
    return AuditRecord(
        actor=principal.client_id if principal else getattr(request.state, "actor", None) or "anonymous",
        user_id=principal.user_id if principal else None,
        tenant_id=principal.tenant_id if principal else None,
        source=request.client.host if request.client else "unknown",
        action=action,
        outcome=status,
        object_id=getattr(request.state, "object_id", None) or (
            object_id(bytes(response.body)) if response is not None and status < 300 else None
        ),
        correlation_id=response.headers.get("x-correlation-id") if response is not None else None,
    )


class Audit:
    """The audited step: a state-changing request, then its record."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def audited(
        self, action: str, request: Request, call: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        """Run a state-changing request and append its audit record, whatever the outcome."""
        status, response = 500, None
        try:
            response = await call(request)
            status = response.status_code
            return response
        except DomainError as exc:
            status = exc.status
            raise
        finally:
            await self._append(action, request, status, response)

    async def _append(self, action: str, request: Request, status: int, response: Response | None) -> None:
        if getattr(request.state, "audited", False):
            return  # appended with the idempotency record, in the same transaction
        record = audit_record(action, request, status, response)
        try:
            async with self.pool.acquire() as conn:
                await append(conn, record)
        except Exception as exc:  # the request happened; losing its record must be loud
            log.error("audit_append_failed", action=action, outcome=status, error=repr(exc))
