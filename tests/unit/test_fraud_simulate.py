"""The traffic simulator: deterministic per seed, labelled, and its patterns have their shapes."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from paystream.fraud.simulate import PATTERNS, read, simulate, write


def test_the_same_seed_writes_byte_identical_files(tmp_path: Path) -> None:
    for name in ("a", "b"):
        write(simulate(seed=11, days=6, users=60), tmp_path / name, seed=11, days=6, users=60)
    assert (tmp_path / "a" / "payments.csv").read_bytes() == (tmp_path / "b" / "payments.csv").read_bytes()
    assert (tmp_path / "a" / "meta.json").read_bytes() == (tmp_path / "b" / "meta.json").read_bytes()


def test_another_seed_gives_other_traffic() -> None:
    assert simulate(seed=1, days=4, users=40) != simulate(seed=2, days=4, users=40)


def test_what_is_written_reads_back_the_same(tmp_path: Path) -> None:
    payments = simulate(seed=5, days=4, users=40)
    write(payments, tmp_path, seed=5, days=4, users=40)
    assert read(tmp_path) == payments


def test_payments_are_in_time_order_and_every_pattern_is_labelled_fraud() -> None:
    payments = simulate(seed=3, days=20, users=200)
    assert [p.at_ms for p in payments] == sorted(p.at_ms for p in payments)
    patterns = Counter(p.pattern for p in payments)
    assert set(patterns) == {"honest", *PATTERNS}
    assert all(p.label == (p.pattern != "honest") for p in payments)
    assert 0.002 < sum(p.label for p in payments) / len(payments) < 0.05


def test_no_payer_ever_spends_more_than_it_holds() -> None:
    balances: Counter[str] = Counter()
    for p in simulate(seed=4, days=10, users=80):
        if p.source is not None:
            balances[p.source] -= p.amount
            assert balances[p.source] >= 0, p
        balances[p.destination] += p.amount


def test_card_testing_is_many_small_payments_from_one_account() -> None:
    runs: dict[str, list[int]] = {}
    for p in simulate(seed=6, days=20, users=200):
        if p.pattern == "card_testing" and p.kind == "transfer":
            assert p.source is not None
            runs.setdefault(p.source, []).append(p.amount)
    assert runs
    assert all(len(amounts) >= 10 and max(amounts) <= 300 for amounts in runs.values())
