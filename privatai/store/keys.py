"""API keys: generation, hashing, display prefix and the format check.

A key is ``privat_`` + 40 base62 characters (about 238 bits) from the OS
CSPRNG. Only its SHA-256 is stored: a fast hash is enough because the key is
random, not a password, and it lets authentication be one indexed lookup.
"""
from __future__ import annotations

import hashlib
import re
import secrets
import string

KEY_PREFIX = "privat_"
BODY_LENGTH = 40
# What lists and logs may show: ``privat_`` and the first five random characters.
DISPLAY_LENGTH = 12

_ALPHABET = string.digits + string.ascii_uppercase + string.ascii_lowercase
_FORMAT = re.compile(rf"{KEY_PREFIX}[0-9A-Za-z]{{{BODY_LENGTH}}}")
_BEARER = re.compile(r"Bearer[ \t]+(\S+)[ \t]*", re.IGNORECASE)


def generate_key() -> str:
    """A new random API key, to be shown once and never stored."""
    return KEY_PREFIX + "".join(secrets.choice(_ALPHABET) for _ in range(BODY_LENGTH))


def hash_key(key: str) -> str:
    """The SHA-256 hex digest stored and looked up in place of the key."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def display_prefix(key: str) -> str:
    """The first characters of a key, enough for a person to recognise it."""
    return key[:DISPLAY_LENGTH]


def is_well_formed(key: str) -> bool:
    """True if ``key`` has the shape of a key we issue (it may still be unknown)."""
    return _FORMAT.fullmatch(key) is not None


def key_from_authorization(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if not header:
        return None
    match = _BEARER.fullmatch(header.strip())
    return match.group(1) if match else None
