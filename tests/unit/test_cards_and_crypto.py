"""Card rules and envelope encryption, without I/O."""

from __future__ import annotations

import base64
import secrets

import pytest
from cryptography.exceptions import InvalidTag

from paystream.gateway.vault.numbers import CardRejected, brand_of, check_cvc, check_expiry, luhn_valid, parse_number
from paystream.platform.crypto import FileKeyring, open_sealed, rewrap, seal


@pytest.mark.parametrize(("number", "brand"), [
    ("4242424242424242", "visa"), ("4000 0566 5566 5556", "visa"), ("5555555555554444", "mastercard"),
    ("2223003122003222", "mastercard"), ("378282246310005", "amex"), ("6011111111111117", "discover"),
    ("3566002020360505", "jcb"), ("30569309025904", "diners"),
])
def test_test_card_numbers_parse_with_their_brand(number: str, brand: str) -> None:
    card = parse_number(number)
    assert card.brand == brand
    assert card.last4 == number[-4:]


@pytest.mark.parametrize("number", ["4242424242424241", "1234", "4242-4242-4242-424x", "42424242424242424242",
                                    "٤٢٤٢٤٢٤٢٤٢٤٢٤٢٤٢", ""])
def test_invalid_numbers_are_rejected_naming_the_number(number: str) -> None:
    with pytest.raises(CardRejected) as raised:
        parse_number(number)
    assert raised.value.field == "number"


def test_luhn() -> None:
    assert luhn_valid("79927398713")
    assert not luhn_valid("79927398710")


def test_the_cvc_length_follows_the_brand() -> None:
    check_cvc(parse_number("378282246310005"), "1234")
    check_cvc(parse_number("4242424242424242"), "123")
    for card, cvc in [("378282246310005", "123"), ("4242424242424242", "1234"), ("4242424242424242", "12a")]:
        with pytest.raises(CardRejected):
            check_cvc(parse_number(card), cvc)


def test_expiry_must_be_this_month_or_later_and_not_absurd() -> None:
    check_expiry(11, 2026, today_year=2026, today_month=11)
    with pytest.raises(CardRejected):
        check_expiry(10, 2026, today_year=2026, today_month=11)
    with pytest.raises(CardRejected):
        check_expiry(13, 2027, today_year=2026, today_month=11)
    with pytest.raises(CardRejected):
        check_expiry(1, 2050, today_year=2026, today_month=11)


def test_unknown_prefixes_are_unknown_brands() -> None:
    assert brand_of("9999999999999995")[0] == "unknown"


def _keyring() -> FileKeyring:
    b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
    return FileKeyring({"active": "v1", "keks": {"v1": b64(secrets.token_bytes(32))},
                        "index_key": b64(secrets.token_bytes(32))})


def test_sealed_data_opens_only_in_its_own_context() -> None:
    keyring = _keyring()
    sealed = seal(keyring, "4242424242424242", "card:card_1")
    assert b"4242" not in sealed.ciphertext + sealed.wrapped_dek
    assert open_sealed(keyring, sealed, "card:card_1") == "4242424242424242"
    with pytest.raises(InvalidTag):
        open_sealed(keyring, sealed, "card:card_2")  # moved to another record


def test_a_rewrapped_data_key_opens_the_same_data_under_the_new_kek() -> None:
    keyring = _keyring()
    sealed = seal(keyring, "secret", "ctx")
    document = {"active": "v2", "keks": {"v1": base64.b64encode(keyring._keks["v1"]).decode(),
                                         "v2": base64.b64encode(secrets.token_bytes(32)).decode()},
                "index_key": base64.b64encode(keyring._index_key).decode()}
    rotated = FileKeyring(document)
    version, wrapped = rewrap(rotated, sealed.kek_version, sealed.wrapped_dek)
    assert version == "v2"
    moved = type(sealed)(version, wrapped, sealed.nonce, sealed.ciphertext)
    assert open_sealed(rotated, moved, "ctx") == "secret"


def test_blind_indexes_are_stable_keyed_and_purpose_bound() -> None:
    keyring = _keyring()
    assert keyring.blind_index("card:t1", "4242") == keyring.blind_index("card:t1", "4242")
    assert keyring.blind_index("card:t1", "4242") != keyring.blind_index("card:t2", "4242")
    assert keyring.blind_index("card:t1", "4242") != _keyring().blind_index("card:t1", "4242")


def test_a_keyring_with_a_short_kek_is_refused() -> None:
    with pytest.raises(ValueError, match="256-bit"):
        FileKeyring({"active": "v1", "keks": {"v1": base64.b64encode(b"short").decode()},
                     "index_key": base64.b64encode(b"x" * 32).decode()})
