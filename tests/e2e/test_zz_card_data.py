"""Cards through the public API, then a scan of everything the stack keeps — every text
and JSON column of every schema, the JetStream store on disk, and every log — for a full
card number (a Luhn-valid run of 13-19 digits) outside the vault's ciphertext.

Named to run last among the end-to-end tests, so the scan covers what they all left.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import asyncpg

from paystream.gateway.vault.numbers import luhn_valid
from paystream.tools.client import PaystreamClient

from .stack import UpProcess

TEST_NUMBERS = ["4242 4242 4242 4242", "5555-5555-5555-4444", "378282246310005", "6011111111111117"]
# Digit runs, allowing the single spaces or dashes people type between groups, that stand
# alone (not inside a hex digest or an id, where digits are only part of a longer token).
_RUN = re.compile(rb"(?<![0-9A-Za-z])(?:[0-9][ -]?){12,18}[0-9](?![0-9A-Za-z])")


def _pans(data: bytes) -> list[str]:
    found = []
    for match in _RUN.finditer(data):
        digits = re.sub(rb"[ -]", b"", match.group()).decode()
        if 13 <= len(digits) <= 19 and luhn_valid(digits):
            found.append(digits)
    return found


async def _database_blobs(postgres_url: str) -> dict[str, bytes]:
    """Every text/JSON column, and every bytea column holding UTF-8 JSON, by table."""
    conn = await asyncpg.connect(postgres_url)
    try:
        columns = await conn.fetch(
            "SELECT table_schema, table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema NOT IN ('pg_catalog', 'information_schema') "
            "AND data_type IN ('text', 'character varying', 'json', 'jsonb', 'bytea', 'ARRAY')"
        )
        blobs: dict[str, bytes] = {}
        for c in columns:
            if (c["table_schema"], c["table_name"]) == ("gateway", "cards") and c["column_name"] in (
                    "ciphertext", "wrapped_dek", "nonce", "fingerprint"):
                continue  # the vault's own sealed columns
            name = f'"{c["table_schema"]}"."{c["table_name"]}"."{c["column_name"]}"'
            values = await conn.fetch(
                f'SELECT "{c["column_name"]}" AS v FROM "{c["table_schema"]}"."{c["table_name"]}"'
            )
            chunks: list[bytes] = []
            for row in values:
                value = row["v"]
                if value is None:
                    continue
                if isinstance(value, bytes):
                    try:
                        text = value.decode()
                    except UnicodeDecodeError:
                        continue  # hashes, keys, ciphertext: not text
                    chunks.append(text.encode())
                else:
                    chunks.append(str(value).encode())
            blobs[name] = b"\n".join(chunks)
        return blobs
    finally:
        await conn.close()


async def test_no_full_card_number_is_kept_outside_the_vault(stack: UpProcess, client: PaystreamClient) -> None:
    assert stack.info is not None
    created = []
    for number in TEST_NUMBERS:
        response = await client.request("POST", "/v1/cards", json_body={
            "number": number, "exp_month": 12, "exp_year": 2031,
            "cvc": "1234" if number.startswith("37") else "123"})
        assert response.status_code == 201, response.text
        card = response.json()
        assert set(card) == {"id", "brand", "last4", "exp_month", "exp_year", "fingerprint", "created_at"}
        assert card["last4"] == number[-4:]
        created.append(card)
    again = (await client.request("POST", "/v1/cards", json_body={
        "number": TEST_NUMBERS[0].replace(" ", ""), "exp_month": 1, "exp_year": 2032, "cvc": "999"})).json()
    assert again["fingerprint"] == created[0]["fingerprint"] and again["id"] != created[0]["id"]
    refused = await client.request("POST", "/v1/cards", idempotency_key=uuid.uuid4().hex, json_body={
        "number": "4000000000000002", "exp_month": 12, "exp_year": 2031, "cvc": "12"})
    assert refused.status_code == 422
    assert b"4000000000000002" not in refused.content

    found: dict[str, list[str]] = {}
    for name, blob in (await _database_blobs(stack.info.postgres_url)).items():
        if pans := _pans(blob):
            found[name] = pans
    for path in sorted(Path(stack.home).rglob("*")):
        # JetStream keeps the messages in .blk files (meta.inf is the stream's configuration);
        # a service's rotated logs are <name>.log.1, .2 …
        rotated_log = path.suffix[1:].isdigit() and path.stem.endswith(".log")
        if path.is_file() and (path.suffix in (".blk", ".log", ".out") or rotated_log):
            if pans := _pans(path.read_bytes()):
                found[str(path.relative_to(stack.home))] = pans
    assert found == {}
    # The control: the scan does see a number where one is written out.
    assert _pans(b'{"number": "4242 4242 4242 4242"}') == ["4242424242424242"]
    assert list(Path(stack.home).rglob("*.blk")), "found no JetStream message blocks to scan"
