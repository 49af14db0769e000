"""Backups and point-in-time recovery on a real stack: `up` archives WAL and takes a scheduled base
backup, `paystream backup` takes one, `restore --to T` brings up the database as it was at T.

The restored copy's balances equal the live stack's `GET /v1/accounts/{id}?as_of=T`, and
`paystream check` and `ledger verify` pass on it. Bad input (a time outside the window, a
directory in use, a corrupted backup) is one line on stderr, exit 2, nothing restored.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from paystream.stack.backup import backup_dir, backup_place, catalogue
from paystream.stack.place import purge
from paystream.tools.client import PaystreamClient

from .stack import UpProcess, running_stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
async def stack() -> AsyncIterator[UpProcess]:
    # A schedule of an hour: the first base backup is due at once on a home without one.
    async with running_stack({"PAYSTREAM_BACKUP_EVERY": "1h"}, prefix="paystream-e2e-backups-") as up:
        yield up


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAYSTREAM_")}
    env.update({"COLUMNS": "240", "NO_COLOR": "1", "PYTHONUNBUFFERED": "1"})
    return env


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "paystream", *args], capture_output=True, text=True,
                          timeout=timeout, env=_env(), check=False)


@contextlib.asynccontextmanager
async def _restored(home: Path, to: datetime, into: Path) -> AsyncIterator[dict[str, object]]:
    """`paystream restore` running in the background until the copy is up; stopped and purged after."""
    out = into.with_name(into.name + ".out")
    with open(out, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "paystream", "restore", "--home", str(home), "--to", to.isoformat(),
             "--into", str(into)], stdout=log, stderr=subprocess.STDOUT, env=_env())
    try:
        deadline = time.monotonic() + 300
        while not (into / "restore.json").is_file():
            assert process.poll() is None, f"restore exited {process.returncode}:\n{out.read_text()}"
            assert time.monotonic() < deadline, f"restore not up in 300s:\n{out.read_text()}"
            await asyncio.sleep(0.2)
        yield json.loads((into / "restore.json").read_text())
    finally:
        clock = time.monotonic()
        if process.poll() is None:
            down = _cli("down", "--home", str(into))
            assert down.returncode == 0, down.stderr
        assert await asyncio.to_thread(process.wait, 120) == 0, out.read_text()
        purge(into)
        print(f"down and purge of the copy took {time.monotonic() - clock:.1f}s")


async def _settled(client: PaystreamClient, payment: dict[str, object]) -> str:
    deadline = time.monotonic() + 30
    while (status := (await client.get_payment(str(payment["id"])))["status"]) != "succeeded":
        assert time.monotonic() < deadline, f"payment {payment['id']} is {status}"
        await asyncio.sleep(0.05)
    return str(payment["id"])


async def test_the_schedule_takes_a_first_base_backup_at_once_and_verifies_it(stack: UpProcess) -> None:
    place = backup_place(stack.home)
    deadline = time.monotonic() + 180
    while not catalogue(place):
        assert time.monotonic() < deadline, "no scheduled base backup within 180s"
        await asyncio.sleep(0.5)
    first = catalogue(place)[0]
    assert first.verified and first.size > 0
    deadline = time.monotonic() + 30
    while not stack.said("scheduled base backup taken"):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.2)
    assert any(p.name.endswith("backup_manifest") for p in backup_dir(place, first).iterdir())
    assert (stack.home / "backups" / "wal").is_dir()  # `<home>/backups/wal`, also as root (a link)


async def test_a_restore_to_an_instant_between_two_payments_has_the_balances_of_that_instant(
    stack: UpProcess, tmp_path: Path
) -> None:
    assert stack.info is not None
    async with PaystreamClient.for_stack(stack.info) as client:
        payer, payee = await client.create_account("USD"), await client.create_account("USD")
        accounts = [payer["id"], payee["id"]]
        await _settled(client, await client.deposit(payer["id"], 50_000))
        for amount in (1_000, 2_000):
            await _settled(client, await client.pay(payer["id"], payee["id"], amount))
        # Signed checkpoints before the backup: the copy carries them, and verifies them with the key.
        signed = _cli("ledger", "verify", "--home", str(stack.home))
        assert signed.returncode == 0, signed.stdout
        clock = time.monotonic()
        backup = _cli("backup", "--home", str(stack.home))
        print(f"paystream backup took {time.monotonic() - clock:.1f}s: {backup.stdout.strip()}")
        assert backup.returncode == 0, backup.stderr
        assert re.search(r"base backup \d{8}T\d{6}Z: [\d.]+ MB in [\d.]+s, verified", backup.stdout), backup.stdout
        kept = await _settled(client, await client.pay(payer["id"], payee["id"], 3_000))
        between = datetime.now(UTC)
        await asyncio.sleep(0.05)
        lost = await _settled(client, await client.pay(payer["id"], payee["id"], 4_000))
        await _settled(client, await client.deposit(payee["id"], 500))

        async def posted(account: str, as_of: datetime | None = None) -> int:
            params = {"as_of": as_of.isoformat()} if as_of else None
            body = await client.call("GET", f"/v1/accounts/{account}", params=params)
            return int(body["balance"]["posted"])

        expected = {a: await posted(a, between) for a in accounts}
        assert expected == {payer["id"]: 44_000, payee["id"]: 6_000}
        assert expected != {a: await posted(a) for a in accounts}  # the restore has something to leave out

    listed = _cli("backup", "list", "--home", str(stack.home))
    assert listed.returncode == 0 and "restorable: 20" in listed.stdout, listed.stdout
    into = tmp_path / "restored"
    async with _restored(stack.home, between, into) as copy:
        url = str(copy["postgres_url"])
        assert copy["port"] != 5432
        conn = await asyncpg.connect(url)
        try:
            assert not await conn.fetchval("SELECT pg_is_in_recovery()")
            restored = {a: int(await conn.fetchval(
                "SELECT coalesce(sum(CASE direction WHEN 'credit' THEN amount ELSE -amount END), 0) "
                "FROM ledger.entries WHERE account_id = $1", a)) for a in accounts}
            payments = {r["id"] for r in await conn.fetch("SELECT id FROM payments.payments WHERE id = ANY($1)",
                                                          [kept, lost])}
        finally:
            await conn.close()
        assert restored == expected
        assert payments == {kept}
        clock = time.monotonic()
        check = _cli("check", "--database-url", url)
        assert check.returncode == 0, check.stdout
        verify = _cli("ledger", "verify", "--database-url", url, "--no-sign",
                      "--key", str(stack.home / "ledger-checkpoint-key.pem"))
        assert verify.returncode == 0, verify.stdout
        assert "no checkpoints yet" not in verify.stdout
        print(f"restore took {copy['seconds']}s; check and ledger verify {time.monotonic() - clock:.1f}s")
    assert not into.exists()  # purged, with its place outside DIR when run as root
    # The copy (promoted, on a timeline of its own) wrote nothing into the stack's archive.
    assert not list(backup_place(stack.home).wal.glob("*.history"))


def _refused(result: subprocess.CompletedProcess[str], says: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert says in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.stderr


async def test_a_time_outside_the_window_is_refused_and_names_the_window(stack: UpProcess, tmp_path: Path) -> None:
    place = backup_place(stack.home)
    deadline = time.monotonic() + 180
    while not catalogue(place):
        assert time.monotonic() < deadline, "no scheduled base backup within 180s"
        await asyncio.sleep(0.5)
        assert time.monotonic() < deadline
    oldest = catalogue(place)[0]
    into = tmp_path / "r"
    before = _refused(_cli("restore", "--home", str(stack.home), "--to", (oldest.ended - timedelta(minutes=1))
                           .isoformat(), "--into", str(into)), "is before the window you can restore to: ")
    after = _refused(_cli("restore", "--home", str(stack.home), "--to", (datetime.now(UTC) + timedelta(days=1))
                          .isoformat(), "--into", str(into)), "is after the window you can restore to: ")
    window = re.compile(r"restore to: (\S+) \.\. (\S+)")
    start, end = window.search(before).groups()  # type: ignore[union-attr]
    assert datetime.fromisoformat(start) == oldest.ended.replace(microsecond=oldest.ended.microsecond // 1000 * 1000)
    assert datetime.fromisoformat(end) > oldest.ended
    assert window.search(after) is not None
    assert not into.exists()


async def test_a_directory_in_use_is_refused(stack: UpProcess, tmp_path: Path) -> None:
    into = tmp_path / "busy"
    into.mkdir()
    (into / "notes.txt").write_text("mine")
    _refused(_cli("restore", "--home", str(stack.home), "--to", datetime.now(UTC).isoformat(), "--into", str(into)),
             "is not an empty directory")
    assert [p.name for p in into.iterdir()] == ["notes.txt"]


async def test_a_corrupted_backup_is_caught_by_pg_verifybackup_before_anything_is_restored(
    stack: UpProcess,
) -> None:
    taken = _cli("backup", "--home", str(stack.home))
    assert taken.returncode == 0, taken.stderr
    place = backup_place(stack.home)
    newest = catalogue(place)[-1]
    victim = max((p for p in (backup_dir(place, newest) / "base").rglob("*") if p.is_file()),
                 key=lambda p: p.stat().st_size)
    original = victim.read_bytes()
    middle = len(original) // 2
    victim.write_bytes(original[:middle] + bytes([original[middle] ^ 0xFF]) + original[middle + 1:])
    into = Path(tempfile.mkdtemp(prefix="paystream-e2e-restore-")) / "r"
    try:
        _refused(_cli("restore", "--home", str(stack.home), "--to", datetime.now(UTC).isoformat(),
                      "--into", str(into)), f"base backup {newest.name} is damaged (pg_verifybackup: ")
        assert not into.exists()
    finally:
        victim.write_bytes(original)
        into.parent.rmdir()
