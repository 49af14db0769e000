"""`paystream ledger verify`: the ledger's history checked from the database alone.

Reads every transfer, entry and account of a ledger schema in one read-only snapshot
(as the cluster's superuser, an operator's view) and recomputes, without trusting any
derived column:

* the hash chain: seq runs 1..n without gaps, each prev_hash is the previous entry's
  hash (32 zero bytes for seq 1), each hash recomputes from the entry's content, and
  ``chain_head`` names the last entry. Every entry must be chained: migration 002
  chained the rows that predate it, so an entry without a seq was written around the
  store and is reported as broken;
* every transfer's legs sum to zero per currency, with at least two legs;
* every account's running totals equal the sums of its entries;
* no account is below its lower limit (zero when it forbids overdraft);
* holds agree with the transfers that made and closed them, and open holds add up to
  every account's pending totals;
* every signed checkpoint (`paystream.ledger.checkpoints`) matches the chain, and, given
  the key, carries a valid signature of it.

Given the checkpoint key, and only when every check passed, it then signs the
checkpoints that are due (every 1000 entries and the head): the one write it makes.

The checks are pure functions over rows; each names the first thing it found broken,
since after a tamper the first break is where to look. The whole ledger is held in
memory, which is fine for the sizes this runs on; a streaming fold is the next step.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import asyncpg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from paystream.ledger import checkpoints as cp
from paystream.ledger.chain import GENESIS, EntryFields, entry_hash
from paystream.ledger.domain import AccountState
from paystream.platform.checks import Check, CheckReport
from paystream.platform.home import database_url


@dataclass(frozen=True, slots=True)
class ChainedEntry:
    """An entry as stored: its content and its (possibly missing) place in the chain."""

    fields: EntryFields
    seq: int | None
    prev_hash: bytes | None
    hash: bytes | None
    chain: int = 0


@dataclass(frozen=True, slots=True)
class Head:
    seq: int
    hash: bytes
    chain: int = 0


@dataclass(frozen=True, slots=True)
class Checkpoint:
    seq: int
    hash: bytes
    key_id: str
    signature: bytes
    chain: int = 0


@dataclass
class VerifyReport(CheckReport):
    """The checks' outcomes, shown like `paystream check` shows the invariants."""

    title: ClassVar[str] = "Ledger verification"


# --------------------------------------------------------------------------- pure checks


def check_chain(entries: Sequence[ChainedEntry], heads: Sequence[Head] | Head | None) -> Check:
    """Every hash chain recomputes end to end; the detail names the first broken entry.

    Each chain runs from genesis by its own seq, and each chain's head names its last entry.
    """
    name = "hash chain intact"
    if heads is None or isinstance(heads, Head):
        heads = [] if heads is None else [heads]
    unchained = sorted((e for e in entries if e.seq is None), key=lambda e: e.fields.id)
    if unchained:
        return Check(name, False, f"entry {unchained[0].fields.id} is not chained "
                                  f"({len(unchained)} entries without a seq)")
    chains: dict[int, list[ChainedEntry]] = defaultdict(list)
    for entry in entries:
        chains[entry.chain].append(entry)
    by_chain = {h.chain: h for h in heads}
    if not by_chain:
        return Check(name, False, "chain_head is missing")
    total = 0
    for chain in sorted(set(chains) | set(by_chain)):
        prev, expected_seq = GENESIS, 1
        where = "" if chain == 0 else f"chain {chain}, "
        for entry in sorted(chains.get(chain, []), key=lambda e: e.seq or 0):
            problem = _link_problem(entry, prev, expected_seq)
            if problem:
                return Check(name, False, f"entry {entry.fields.id} ({where}seq {entry.seq}): {problem}")
            prev, expected_seq = entry_hash(prev, expected_seq, entry.fields), expected_seq + 1
        last_seq = expected_seq - 1
        head = by_chain.get(chain)
        if head is None:
            return Check(name, False, f"chain {chain} has entries but no chain_head")
        if head.seq != last_seq or head.hash != prev:
            return Check(name, False, f"chain_head ({where}seq {head.seq}) does not match the last "
                                      f"entry (seq {last_seq}): entries after it were removed or it was moved")
        total += last_seq
    used = sum(1 for c in chains if chains[c])
    return Check(name, True, f"{total} entries chained in {used} of {len(by_chain)} chains")


def _link_problem(entry: ChainedEntry, prev: bytes, expected_seq: int) -> str | None:
    """Why ``entry`` is not the valid link number ``expected_seq`` after ``prev``, if it is not."""
    if entry.seq != expected_seq:
        return f"expected seq {expected_seq}: entries are missing before it"
    if entry.prev_hash != prev:
        return "prev_hash does not link to the previous entry"
    if entry.hash != entry_hash(prev, expected_seq, entry.fields):
        return "hash does not match its content (the entry was changed)"
    return None


def check_transfers(
    transfer_ids: Sequence[str], entries: Iterable[ChainedEntry], unposted: Collection[str] = ()
) -> Check:
    """Each transfer has at least two legs, summing to zero in each currency.

    ``unposted`` transfers (holds, and the voids and expiries that close them) move only
    pending totals and must have no entries at all.
    """
    legs: dict[str, int] = defaultdict(int)
    sums: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for entry in entries:
        f = entry.fields
        legs[f.transfer_id] += 1
        sums[f.transfer_id][f.currency] += f.amount if f.direction == "debit" else -f.amount
    bad = [
        t for t in sorted(transfer_ids)
        if (legs[t] != 0 if t in unposted else legs[t] < 2)
        or any(total != 0 for total in sums[t].values())
    ]
    if bad:
        first = bad[0]
        totals = ", ".join(f"{c} {n:+d}" for c, n in sorted(sums[first].items())) or "no legs"
        return Check("transfers sum to zero", False,
                     f"{len(bad)} transfers do not balance; first {first}: {legs[first]} legs, {totals}")
    return Check("transfers sum to zero", True, f"{len(transfer_ids)} transfers, each balanced")


def check_balances(accounts: Sequence[AccountState], entries: Iterable[ChainedEntry]) -> Check:
    """Each account's posted totals equal the sums of its entries."""
    debits: dict[str, int] = defaultdict(int)
    credits: dict[str, int] = defaultdict(int)
    for entry in entries:
        side = debits if entry.fields.direction == "debit" else credits
        side[entry.fields.account_id] += entry.fields.amount
    bad = [
        a for a in sorted(accounts, key=lambda a: a.id)
        if a.debits_posted != debits[a.id] or a.credits_posted != credits[a.id]
    ]
    if bad:
        a = bad[0]
        return Check("balances equal their entries", False,
                     f"{len(bad)} accounts differ; first {a.id}: totals debit {a.debits_posted} / "
                     f"credit {a.credits_posted}, entries debit {debits[a.id]} / credit {credits[a.id]}")
    return Check("balances equal their entries", True, f"{len(accounts)} accounts match their entries")


def check_overdraft(accounts: Sequence[AccountState]) -> Check:
    """No account shows an available balance below its floor (0 when it forbids overdraft)."""
    bad = [
        a for a in sorted(accounts, key=lambda a: a.id)
        if a.floor is not None and a.available < a.floor
    ]
    if bad:
        return Check("no forbidden overdraft", False,
                     f"{len(bad)} accounts overdrawn; first {bad[0].id}: available "
                     f"{bad[0].available}, lower limit {bad[0].floor}")
    return Check("no forbidden overdraft", True, "none below its lower limit")


@dataclass(frozen=True, slots=True)
class TransferRow:
    id: str
    phase: str
    pending_id: str | None
    amount: int


@dataclass(frozen=True, slots=True)
class HoldRow:
    transfer_id: str
    debit_account_id: str
    credit_account_id: str
    amount: int
    status: str
    closed_by: str | None


_CLOSED_AS = {"post_pending": "posted", "void_pending": "voided", "expire_pending": "expired"}


def check_holds(
    holds: Sequence[HoldRow], transfers: Sequence[TransferRow], accounts: Sequence[AccountState]
) -> Check:
    """Holds agree with the transfers that made and closed them, and with pending totals.

    Each pending transfer has a hold; a hold's status is what the transfer that closed it
    did (pending when none did), and a post never moves more than was held. Each account's
    pending totals equal the sums of the open holds on it.
    """
    name = "holds consistent"
    by_id = {h.transfer_id: h for h in holds}
    closers = {t.pending_id: t for t in transfers if t.pending_id is not None}
    for t in sorted(transfers, key=lambda t: t.id):
        if t.phase == "pending" and t.id not in by_id:
            return Check(name, False, f"pending transfer {t.id} has no hold")
    for hold in sorted(holds, key=lambda h: h.transfer_id):
        closer = closers.get(hold.transfer_id)
        expected = "pending" if closer is None else _CLOSED_AS[closer.phase]
        if hold.status != expected or hold.closed_by != (closer.id if closer else None):
            return Check(name, False, f"hold {hold.transfer_id} says {hold.status}, its transfers "
                                      f"say {expected}")
        if closer is not None and closer.phase == "post_pending" and closer.amount > hold.amount:
            return Check(name, False, f"hold {hold.transfer_id} posted {closer.amount}, "
                                      f"more than its {hold.amount}")
    debits: dict[str, int] = defaultdict(int)
    credits: dict[str, int] = defaultdict(int)
    for hold in holds:
        if hold.status == "pending":
            debits[hold.debit_account_id] += hold.amount
            credits[hold.credit_account_id] += hold.amount
    for a in sorted(accounts, key=lambda a: a.id):
        if a.debits_pending != debits[a.id] or a.credits_pending != credits[a.id]:
            return Check(name, False, f"account {a.id}: pending debit {a.debits_pending} / credit "
                                      f"{a.credits_pending}, open holds debit {debits[a.id]} / "
                                      f"credit {credits[a.id]}")
    still_open = sum(1 for h in holds if h.status == "pending")
    return Check(name, True, f"{len(holds)} holds, {still_open} open, pending totals match")


def check_checkpoints(
    checkpoints: Sequence[Checkpoint], entries: Sequence[ChainedEntry], public: Ed25519PublicKey | None
) -> Check:
    """Each checkpoint names a hash the chain still has at its seq, signed by ``public`` when given.

    A chain rewritten and rehashed from some entry on passes `check_chain`, but not this.
    """
    name = "checkpoints match the chain"
    hashes = {(e.chain, e.seq): e.hash for e in entries if e.seq is not None}
    for point in sorted(checkpoints, key=lambda c: (c.chain, c.seq)):
        where = "" if point.chain == 0 else f" of chain {point.chain}"
        if hashes.get((point.chain, point.seq)) != point.hash:
            return Check(name, False, f"checkpoint at seq {point.seq}{where} does not match the chain: "
                                      "history up to it was rewritten")
        if public is not None and point.key_id != cp.key_id(public):
            return Check(name, False, f"checkpoint at seq {point.seq} was signed by another key "
                                      f"({point.key_id})")
        if public is not None and not cp.signature_ok(public, point.seq, point.hash, point.signature):
            return Check(name, False, f"checkpoint at seq {point.seq} has an invalid signature")
    if not checkpoints:
        return Check(name, True, "no checkpoints yet")
    signatures = "signatures valid" if public is not None else "signatures not checked (no key)"
    return Check(name, True, f"{len(checkpoints)} checkpoints, last at seq "
                             f"{max(c.seq for c in checkpoints)}, {signatures}")


def verify_rows(
    transfers: Sequence[TransferRow],
    entries: Sequence[ChainedEntry],
    accounts: Sequence[AccountState],
    head: Sequence[Head] | Head | None,
    checkpoints: Sequence[Checkpoint] = (),
    public: Ed25519PublicKey | None = None,
    holds: Sequence[HoldRow] = (),
) -> VerifyReport:
    """Every check over one snapshot of the ledger's rows."""
    unposted = {t.id for t in transfers if t.phase not in ("posted", "post_pending")}
    return VerifyReport([
        check_chain(entries, head),
        check_transfers([t.id for t in transfers], entries, unposted),
        check_balances(accounts, entries),
        check_overdraft(accounts),
        check_holds(holds, transfers, accounts),
        check_checkpoints(checkpoints, entries, public),
    ])


# --------------------------------------------------------------------------- reading


def _entry(row: asyncpg.Record) -> ChainedEntry:
    return ChainedEntry(
        fields=EntryFields(
            id=row["id"], transfer_id=row["transfer_id"], account_id=row["account_id"],
            direction=row["direction"], amount=row["amount"], currency=row["currency"],
            created_at=row["created_at"],
        ),
        seq=row["seq"],
        prev_hash=None if row["prev_hash"] is None else bytes(row["prev_hash"]),
        hash=None if row["hash"] is None else bytes(row["hash"]),
        chain=row["chain"],
    )


def _account(row: asyncpg.Record) -> AccountState:
    return AccountState(
        id=row["id"], tenant_id=row["tenant_id"], currency=row["currency"],
        normal_balance=row["normal_balance"], allow_overdraft=row["allow_overdraft"],
        debits_posted=row["debits_posted"], credits_posted=row["credits_posted"],
        debits_pending=row["debits_pending"], credits_pending=row["credits_pending"],
        lower_limit=row["lower_limit"],
    )


async def verify_connection(
    conn: asyncpg.Connection,
    schema: str = "ledger",
    *,
    key: Ed25519PrivateKey | None = None,
    sign: bool = False,
    every: int = cp.EVERY,
) -> VerifyReport:
    """Verify ``schema`` through ``conn``, from one read-only snapshot.

    ``key`` checks the checkpoints' signatures; with ``sign`` too, a clean ledger gets the
    checkpoints that are due (each ``every`` entries, and the head).
    """
    q = _quoted(schema)
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        transfers = [TransferRow(*r.values()) for r in await conn.fetch(
            f"SELECT id, phase, pending_id, amount FROM {q}.transfers"
        )]
        holds = [HoldRow(*r.values()) for r in await conn.fetch(
            "SELECT transfer_id, debit_account_id, credit_account_id, amount, status, closed_by "
            f"FROM {q}.holds"
        )]
        entries = [_entry(r) for r in await conn.fetch(
            "SELECT id, transfer_id, account_id, direction, amount, currency, created_at, "
            f"seq, prev_hash, hash, chain FROM {q}.entries"
        )]
        accounts = [_account(r) for r in await conn.fetch(
            "SELECT id, tenant_id, currency, normal_balance, allow_overdraft, lower_limit, "
            f"debits_posted, credits_posted, debits_pending, credits_pending FROM {q}.account_totals"
        )]
        heads = [Head(r["seq"], bytes(r["hash"]), r["chain"])
                 for r in await conn.fetch(f"SELECT chain, seq, hash FROM {q}.chain_head")]
        points = [
            Checkpoint(r["seq"], bytes(r["hash"]), r["key_id"], bytes(r["signature"]), r["chain"])
            for r in await conn.fetch(f"SELECT chain, seq, hash, key_id, signature FROM {q}.checkpoints")
        ]
    report = verify_rows(transfers, entries, accounts, heads, points,
                         key.public_key() if key else None, holds)
    if key is not None and sign:
        report.checks.append(
            await _sign_due(conn, schema, key, entries, points, every) if report.ok
            else Check("checkpoints signed", True, "none: a ledger that fails verification is never signed")
        )
    return report


def _quoted(schema: str) -> str:
    return '"' + schema.replace('"', '""') + '"'


async def _sign_due(
    conn: asyncpg.Connection,
    schema: str,
    key: Ed25519PrivateKey,
    entries: Sequence[ChainedEntry],
    points: Sequence[Checkpoint],
    every: int,
) -> Check:
    """Sign the checkpoints due over the verified snapshot (later entries wait for the next run)."""
    name = "checkpoints signed"
    hashes = {(e.chain, e.seq): e.hash for e in entries if e.seq is not None and e.hash is not None}
    due: list[tuple[int, int]] = []
    for chain in sorted({c for c, _ in hashes}):
        last = max(seq for c, seq in hashes if c == chain)
        signed = {p.seq for p in points if p.chain == chain}
        due += [(chain, seq) for seq in cp.due(last, signed, every)]
    if not due:
        return Check(name, True, "none due")
    kid = cp.key_id(key.public_key())
    await conn.execute(
        f"INSERT INTO {_quoted(schema)}.checkpoints (chain, seq, hash, key_id, signature) "
        "SELECT * FROM unnest($1::smallint[], $2::bigint[], $3::bytea[], $4::text[], $5::bytea[]) "
        "ON CONFLICT DO NOTHING",
        [c for c, _ in due], [s for _, s in due], [hashes[d] for d in due], [kid] * len(due),
        [cp.sign(key, s, hashes[(c, s)]) for c, s in due],
    )
    last_chain, last_seq = due[-1]
    where = "" if last_chain == 0 else f" of chain {last_chain}"
    return Check(name, True, f"{len(due)} new, last at seq {last_seq}{where} ({kid})")


async def verify_database(
    database_url: str,
    schema: str = "ledger",
    *,
    key: Ed25519PrivateKey | None = None,
    sign: bool = False,
) -> VerifyReport:
    """Verify the ledger schema of the database at ``database_url`` (a superuser URL)."""
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        return await verify_connection(conn, schema, key=key, sign=sign)
    finally:
        await conn.close()


def database_url_of(home: Path) -> str:
    """The superuser URL that `paystream up` wrote to ``home/stack.json`` (nothing else is read)."""
    return database_url(home)
