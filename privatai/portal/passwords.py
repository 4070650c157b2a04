"""Passwords: Argon2id hashes (argon2-cffi's defaults, RFC 9106's second
recommendation), computed in a thread so a login does not stall the loop.

An unknown address is checked against a dummy hash all the same, so the
answer takes as long whether or not the address exists.
"""
from __future__ import annotations

import asyncio
from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

PASSWORD_MIN = 10
PASSWORD_MAX = 256

_hasher = PasswordHasher()


@cache
def _dummy() -> str:
    # Made on first use: hashing takes the better part of a second.
    return _hasher.hash("not a password of anybody")


async def hash_password(password: str) -> str:
    return await asyncio.to_thread(_hasher.hash, password)


async def verify_password(stored: str | None, password: str) -> bool:
    """True if ``password`` matches ``stored``; with None, checks a dummy and says False."""
    def verify() -> bool:
        try:
            return _hasher.verify(stored or _dummy(), password) and stored is not None
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
    return await asyncio.to_thread(verify)


def password_problem(password: str, email: str) -> str | None:
    """The catalog key of what is wrong with a new password, or None."""
    if len(password) < PASSWORD_MIN:
        return "password_short"
    if len(password) > PASSWORD_MAX:
        return "password_long"
    if password.strip().lower() == email.strip().lower():
        return "password_is_email"
    return None
