from __future__ import annotations

import hashlib
import string

import pytest

from privatai.store.keys import (
    display_prefix,
    generate_key,
    hash_key,
    is_well_formed,
    key_from_authorization,
)


def test_generated_keys_have_the_documented_shape() -> None:
    keys = {generate_key() for _ in range(1000)}
    assert len(keys) == 1000
    for key in keys:
        assert key.startswith("privat_")
        assert len(key) == len("privat_") + 40
        assert set(key[7:]) <= set(string.ascii_letters + string.digits)
        assert is_well_formed(key)
    # All 62 characters turn up: the body really is base62.
    assert set("".join(k[7:] for k in keys)) == set(string.ascii_letters + string.digits)


def test_hash_is_sha256_hex() -> None:
    assert hash_key("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    key = generate_key()
    assert hash_key(key) == hashlib.sha256(key.encode()).hexdigest()


def test_display_prefix_is_twelve_characters() -> None:
    key = generate_key()
    assert display_prefix(key) == key[:12]
    assert display_prefix(key).startswith("privat_")


@pytest.mark.parametrize("key", [
    "",
    "privat_",
    "privat_" + "a" * 39,
    "privat_" + "a" * 41,
    "sk-" + "a" * 40,
    "Privat_" + "a" * 40,
    "privat_" + "a" * 39 + "-",
    "privat_" + "a" * 39 + "\u0663",  # an Arabic-Indic digit: not base62
    "privat_" + "a" * 40 + "\n",
    " privat_" + "a" * 40,
])
def test_malformed_keys_are_rejected(key: str) -> None:
    assert not is_well_formed(key)


@pytest.mark.parametrize("header, expected", [
    ("Bearer privat_x", "privat_x"),
    ("bearer   privat_x  ", "privat_x"),
    ("BEARER\tprivat_x", "privat_x"),
    ("Basic privat_x", None),
    ("Bearer", None),
    ("Bearer a b", None),
    ("", None),
    (None, None),
])
def test_bearer_header(header: str | None, expected: str | None) -> None:
    assert key_from_authorization(header) == expected
