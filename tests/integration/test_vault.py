"""The card vault on real PostgreSQL, as the gateway's role: sealed at rest, re-wrapped online."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from paystream.gateway.vault.numbers import parse_number
from paystream.gateway.vault.store import CardVault
from paystream.platform.crypto import FileKeyring

NUMBER = "4242424242424242"


@pytest.fixture
async def gateway(make_schema: Any) -> Any:
    return await make_schema("gateway")


async def _store(conn: Any, vault: CardVault, number: str = NUMBER, tenant: str = "t1") -> Any:
    return await vault.store(conn, tenant_id=tenant, owner_user_id=None, card=parse_number(number),
                             exp_month=12, exp_year=2030)


async def test_the_number_is_stored_only_sealed_and_can_be_revealed(gateway: Any, tmp_path: Path) -> None:
    vault = CardVault(FileKeyring.create(tmp_path / "keyring.json"))
    conn = await gateway.connect_as_role()
    try:
        row = await _store(conn, vault)
        revealed = await vault.reveal(conn, row["id"])
        everything = await conn.fetchval("SELECT string_agg(c::text, '|') FROM cards AS c")
    finally:
        await conn.close()
    assert revealed == NUMBER
    assert NUMBER not in everything and NUMBER[:12] not in everything
    assert (row["brand"], row["last4"]) == ("visa", "4242")


async def test_the_same_number_has_the_same_fingerprint_within_a_tenant_only(
    gateway: Any, tmp_path: Path
) -> None:
    vault = CardVault(FileKeyring.create(tmp_path / "keyring.json"))
    async with gateway.pool.acquire() as conn:
        first, again = await _store(conn, vault), await _store(conn, vault)
        other = await _store(conn, vault, "5555555555554444")
        elsewhere = await _store(conn, vault, tenant="t2")
    assert first["id"] != again["id"] and first["fingerprint"] == again["fingerprint"]
    assert other["fingerprint"] != first["fingerprint"]
    assert elsewhere["fingerprint"] != first["fingerprint"]


async def test_rotation_rewraps_every_data_key_and_the_numbers_still_open(gateway: Any, tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    vault = CardVault(FileKeyring.create(path))
    async with gateway.pool.acquire() as conn:
        ids = [(await _store(conn, vault))["id"] for _ in range(7)]
        before = await conn.fetch("SELECT id, wrapped_dek, ciphertext FROM cards ORDER BY id")
        version = FileKeyring.add_version(path)
        vault.keyring = FileKeyring.load(path)
        rewrapped = await vault.rewrap_all(conn, batch=3)
        after = await conn.fetch("SELECT id, kek_version, wrapped_dek, ciphertext FROM cards ORDER BY id")
        revealed = [await vault.reveal(conn, card_id) for card_id in ids]
    assert rewrapped == 7 and version == "v2"
    assert {r["kek_version"] for r in after} == {"v2"}
    # The data was not re-encrypted, only its keys re-wrapped.
    assert [r["ciphertext"] for r in after] == [r["ciphertext"] for r in before]
    assert all(a["wrapped_dek"] != b["wrapped_dek"] for a, b in zip(after, before, strict=True))
    assert revealed == [NUMBER] * 7
    assert (path.stat().st_mode & 0o777) == 0o600
