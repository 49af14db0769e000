"""Ids: a type prefix and a ULID body that sorts by creation time."""

from __future__ import annotations

from unittest import mock

import pytest
from hypothesis import given
from hypothesis import strategies as st

from paystream.contracts import ids
from paystream.contracts.ids import PREFIXES, has_prefix, new_id

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
MAX_MS = 2**48 - 1


def _id_at(prefix: str, ms: int, rand: bytes) -> str:
    """An id minted as if the clock read ``ms`` and the random source gave ``rand``."""
    with (
        mock.patch.object(ids.time, "time_ns", return_value=ms * 1_000_000),
        mock.patch.object(ids.os, "urandom", return_value=rand),
    ):
        return new_id(prefix)


def _decode_ms(body: str) -> int:
    value = 0
    for char in body[:10]:
        value = value * 32 + ALPHABET.index(char)
    return value


@pytest.mark.parametrize("prefix", sorted(PREFIXES))
def test_new_id_starts_with_its_prefix_and_an_underscore(prefix: str) -> None:
    assert new_id(prefix).startswith(prefix + "_")


def test_new_id_body_is_26_crockford_base32_characters() -> None:
    body = new_id("pay").removeprefix("pay_")
    assert len(body) == 26
    assert set(body) <= set(ALPHABET)


def test_new_id_refuses_an_unknown_prefix() -> None:
    with pytest.raises(ValueError, match="unknown id prefix"):
        new_id("xyz")


def test_new_ids_are_distinct() -> None:
    minted = {new_id("evt") for _ in range(1000)}
    assert len(minted) == 1000


def test_id_body_starts_with_the_creation_millisecond() -> None:
    minted = _id_at("pay", 1_732_000_000_123, bytes(10))
    assert _decode_ms(minted.removeprefix("pay_")) == 1_732_000_000_123


@given(
    ms=st.tuples(st.integers(0, MAX_MS), st.integers(0, MAX_MS)).filter(lambda p: p[0] != p[1]),
    rand=st.tuples(st.binary(min_size=10, max_size=10), st.binary(min_size=10, max_size=10)),
)
def test_ids_sort_by_creation_millisecond_whatever_the_random_part(
    ms: tuple[int, int], rand: tuple[bytes, bytes]
) -> None:
    first = _id_at("pay", ms[0], rand[0])
    second = _id_at("pay", ms[1], rand[1])
    assert (first < second) == (ms[0] < ms[1])


def test_has_prefix_accepts_a_new_id_of_that_type() -> None:
    assert has_prefix(new_id("acc"), "acc")


def test_has_prefix_refuses_an_id_of_another_type() -> None:
    assert not has_prefix(new_id("pay"), "acc")


def test_has_prefix_refuses_a_prefix_that_only_starts_the_same() -> None:
    assert not has_prefix(new_id("card"), "car")


@pytest.mark.parametrize(
    "value",
    [
        "acc_" + "0" * 25,  # too short
        "acc_" + "0" * 27,  # too long
        "acc_" + "0" * 25 + "I",  # I is not in Crockford base32
        "acc_" + "0" * 25 + "U",
        "acc_" + "0" * 25 + "a",  # lower case
        "acc-" + "0" * 26,  # wrong separator
        "acc" + "0" * 27,
        "",
    ],
)
def test_has_prefix_refuses_malformed_ids(value: str) -> None:
    assert not has_prefix(value, "acc")


def test_ids_minted_past_several_draws_are_distinct_and_well_formed() -> None:
    minted = [new_id("trf") for _ in range(5 * ids._DRAW + 7)]
    assert len(set(minted)) == len(minted)
    assert all(has_prefix(value, "trf") for value in minted)


def test_ids_of_one_run_sort_by_their_millisecond() -> None:
    minted = []
    for _ in range(3 * ids._DRAW):
        minted.append(new_id("evt"))
    stamps = [_decode_ms(value.removeprefix("evt_")) for value in minted]
    assert stamps == sorted(stamps)


def test_random_digits_are_spread_over_the_whole_alphabet() -> None:
    digits = "".join(value[-16:] for value in (new_id("pay") for _ in range(2000)))
    counts = {char: digits.count(char) for char in ALPHABET}
    expected = len(digits) / 32
    assert all(0.8 * expected < n < 1.2 * expected for n in counts.values())


def test_ids_from_threads_side_by_side_are_distinct() -> None:
    from concurrent.futures import ThreadPoolExecutor

    def mint(_: int) -> list[str]:
        return [new_id("evt") for _ in range(2 * ids._DRAW)]

    with ThreadPoolExecutor(4) as pool:
        minted = [value for batch in pool.map(mint, range(8)) for value in batch]
    assert len(set(minted)) == len(minted)


def test_a_forked_child_does_not_mint_the_ids_its_parent_drew_ahead() -> None:
    import os

    new_id("evt")  # the parent now holds random parts drawn ahead
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        os.close(read)
        os.write(write, "\n".join(new_id("evt")[-16:] for _ in range(100)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = set(pipe.read().split("\n"))
    os.waitpid(pid, 0)
    parent = {new_id("evt")[-16:] for _ in range(100)}
    assert len(child) == 100
    assert not child & parent
