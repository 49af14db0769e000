"""The card vault's storage: sealed numbers, keyed fingerprints, and re-wrapping on rotation
(`rotate_encryption_key`, for `paystream keys rotate encryption`)."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import asyncpg

from paystream.contracts.api import Card
from paystream.contracts.bodies import Body
from paystream.contracts.ids import new_id
from paystream.gateway.audit import AuditRecord
from paystream.gateway.audit import append as append_audit
from paystream.gateway.store import gateway_pool
from paystream.gateway.vault.numbers import CardNumber
from paystream.platform.config import load_settings
from paystream.platform.crypto import FileKeyring, Keyring, Sealed, open_sealed, rewrap, seal

CARD_COLUMNS = "id, brand, last4, exp_month, exp_year, fingerprint, created_at"
# Tables whose rows carry (kek_version, wrapped_dek, nonce, ciphertext).
SEALED_TABLES = ("cards", "users")


def card_body(row: asyncpg.Record) -> Body:
    """The public card (`Card`): the fingerprint is the first 16 bytes of the number's blind index."""
    fingerprint = base64.urlsafe_b64encode(bytes(row["fingerprint"])[:16]).rstrip(b"=").decode()
    return Card.body(row, fingerprint=fingerprint)


def _context(card_id: str) -> str:
    return f"card:{card_id}"


class CardVault:
    """Cards sealed under the keyring's active KEK, each under its own data key."""

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring

    async def store(
        self, conn: asyncpg.Connection, *, tenant_id: str, owner_user_id: str | None, card: CardNumber,
        exp_month: int, exp_year: int,
    ) -> asyncpg.Record:
        card_id = new_id("card")
        sealed = seal(self.keyring, card.digits, _context(card_id))
        row = await conn.fetchrow(
            "INSERT INTO cards (id, tenant_id, owner_user_id, brand, last4, exp_month, exp_year, fingerprint, "
            "kek_version, wrapped_dek, nonce, ciphertext) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) "
            f"RETURNING {CARD_COLUMNS}",
            card_id, tenant_id, owner_user_id, card.brand, card.last4, exp_month, exp_year,
            self.keyring.blind_index(f"card:{tenant_id}", card.digits),
            sealed.kek_version, sealed.wrapped_dek, sealed.nonce, sealed.ciphertext,
        )
        assert row is not None
        return row

    async def reveal(self, conn: asyncpg.Connection, card_id: str) -> str:
        """The full number (for a processor call; no public route exposes it)."""
        row = await conn.fetchrow(
            "SELECT kek_version, wrapped_dek, nonce, ciphertext FROM cards WHERE id = $1", card_id
        )
        if row is None:
            raise KeyError(card_id)
        sealed = Sealed(row["kek_version"], bytes(row["wrapped_dek"]), bytes(row["nonce"]), bytes(row["ciphertext"]))
        return open_sealed(self.keyring, sealed, _context(card_id))

    async def rewrap_all(self, conn: asyncpg.Connection, *, batch: int = 500) -> int:
        """Re-wrap every data key (cards, users' personal data) not under the active KEK;
        returns how many were re-wrapped. Online: each batch is its own short transaction."""
        return sum([await self._rewrap_table(conn, table, batch) for table in SEALED_TABLES])

    async def _rewrap_table(self, conn: asyncpg.Connection, table: str, batch: int) -> int:
        done = 0
        while True:
            async with conn.transaction():
                rows = await conn.fetch(
                    f"SELECT id, kek_version, wrapped_dek FROM {table} "
                    "WHERE kek_version IS NOT NULL AND kek_version <> $1 LIMIT $2 FOR UPDATE SKIP LOCKED",
                    self.keyring.active, batch,
                )
                if not rows:
                    return done
                updates = [(r["id"], *rewrap(self.keyring, r["kek_version"], bytes(r["wrapped_dek"])))
                           for r in rows]
                await conn.executemany(
                    f"UPDATE {table} SET kek_version = $2, wrapped_dek = $3 WHERE id = $1", updates
                )
                done += len(rows)


async def rotate_encryption_key(home: Path) -> tuple[str, int]:
    """Add a KEK version to the keyring of ``home`` and re-wrap every data key under it.

    Running gateways pick the new version up at their next refresh; the re-wrap runs twice,
    the second time after that refresh, so a card sealed meanwhile under the old version is
    re-wrapped too. The old version stays in the keyring (nothing needs it any more; a
    later rotation may drop versions no row refers to). Returns (version, rows re-wrapped).
    """
    path = home / "keyring.json"
    if not path.exists():
        raise FileNotFoundError(f"no keyring at {path}")
    version = FileKeyring.add_version(path)
    settings = load_settings()
    vault = CardVault(FileKeyring.load(path))
    pool = await gateway_pool(home)
    try:
        async with pool.acquire() as conn:
            rewrapped = await vault.rewrap_all(conn)
            await asyncio.sleep(settings.signing_keys_refresh_seconds + 1)
            rewrapped += await vault.rewrap_all(conn)
            await append_audit(conn, AuditRecord(actor="cli", source="local", action="keys rotate encryption",
                                                 outcome=200, object_id=version))
    finally:
        await pool.close()
    return version, rewrapped
