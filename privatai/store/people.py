"""People who sign up on the website: users, their sessions and mailed links.

A person is an e-mail address (lower case) and an Argon2id hash made by the
caller (:mod:`privatai.portal.passwords`): this module never sees a password.
Session and link tokens are random; only their SHA-256 is stored, so a copy
of the database opens no session and confirms nothing.
"""
from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, insert, select, update

from privatai.store.connection import Database, Queries
from privatai.store.names import NAME_MAX, AdminError, checked, quoted
from privatai.store.records import utc_now
from privatai.store.schema import accounts, audit_log, invites, memberships, sessions, user_tokens, users

EMAIL_MAX = 254
EMAIL = re.compile(r"[^@\s<>\"'(),;:\\\[\]]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                   r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+")
# How often a session's last_seen is written: reading a page is not worth a write each time.
TOUCH_EVERY = timedelta(seconds=60)


class EmailInvalid(AdminError):
    """Not an address we can send to."""


def normalized_email(value: str) -> str:
    """The stored form of an address, or EmailInvalid."""
    email = value.strip().lower()
    if not email or len(email) > EMAIL_MAX or not email.isascii() or not EMAIL.fullmatch(email):
        raise EmailInvalid("not an e-mail address")
    return email


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    """A random token for a cookie or a link (256 bits)."""
    return secrets.token_urlsafe(32)


def _stamp(moment: datetime) -> str:
    return moment.isoformat()


@dataclass(frozen=True, slots=True)
class User:
    id: int
    email: str
    password_hash: str
    created: str
    confirmed_at: str | None
    totp_secret: str | None
    totp_last_step: int | None
    is_admin: bool

    @property
    def confirmed(self) -> bool:
        return self.confirmed_at is not None


@dataclass(frozen=True, slots=True)
class Session:
    user: User
    second_factor_pending: bool


_USER = select(users.c.id, users.c.email, users.c.password_hash, users.c.created, users.c.confirmed_at,
               users.c.totp_secret, users.c.totp_last_step, users.c.is_admin)


class People(Queries):
    """Users, sessions and links; built on the store's database."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)

    # ------------------------------------------------------------------ users

    async def user(self, user_id: int) -> User | None:
        rows = await self._rows(_USER.where(users.c.id == user_id))
        return _user(rows[0]) if rows else None

    async def user_by_email(self, email: str) -> User | None:
        try:
            email = normalized_email(email)
        except EmailInvalid:
            return None
        rows = await self._rows(_USER.where(users.c.email == email))
        return _user(rows[0]) if rows else None

    async def sign_up(self, email: str, password_hash: str, account_name: str, plan: str,
                      status: str) -> User | None:
        """A new person, owner of a new account, in one transaction; None when
        the address is taken (the caller must not tell the visitor so).
        AdminError when the account name breaks the rules or is taken."""
        email = normalized_email(email)
        account_name = checked(account_name, "account name", NAME_MAX)
        now = _stamp(utc_now())
        async with self._db.write() as conn:
            if (await conn.execute(select(users.c.id).where(users.c.email == email))).first():
                return None
            taken = await conn.execute(select(accounts.c.id)
                                       .where(func.lower(accounts.c.name) == func.lower(account_name)))
            if taken.first():
                raise AdminError(f"account {quoted(account_name)} already exists")
            user_id = (await conn.execute(insert(users).values(email=email, password_hash=password_hash,
                                                               created=now).returning(users.c.id))).scalar_one()
            account_id = (await conn.execute(insert(accounts).values(
                name=account_name, plan=plan, status=status, created=now).returning(accounts.c.id))).scalar_one()
            await conn.execute(insert(memberships).values(account_id=account_id, user_id=user_id, role="owner",
                                                          created=now))
        return await self.user(user_id)

    async def create_user(self, email: str, password_hash: str, *, confirmed: bool = False) -> User:
        """A person without an account (the operator's first admin, an invited member)."""
        email = normalized_email(email)
        now = _stamp(utc_now())
        async with self._db.write() as conn:
            if (await conn.execute(select(users.c.id).where(users.c.email == email))).first():
                raise AdminError(f"{quoted(email)} is already registered")
            user_id = (await conn.execute(insert(users).values(
                email=email, password_hash=password_hash, created=now,
                confirmed_at=now if confirmed else None).returning(users.c.id))).scalar_one()
        user = await self.user(user_id)
        assert user is not None
        return user

    async def _update_user(self, user_id: int, **values: object) -> None:
        async with self._db.write() as conn:
            await conn.execute(update(users).where(users.c.id == user_id).values(**values))

    async def confirm(self, user_id: int) -> None:
        await self._update_user(user_id, confirmed_at=_stamp(utc_now()))

    async def set_password(self, user_id: int, password_hash: str) -> None:
        """A new password ends every session of the person."""
        async with self._db.write() as conn:
            await conn.execute(update(users).where(users.c.id == user_id).values(password_hash=password_hash))
            await conn.execute(delete(sessions).where(sessions.c.user_id == user_id))

    async def set_totp(self, user_id: int, secret: str | None) -> None:
        await self._update_user(user_id, totp_secret=secret, totp_last_step=None)

    async def use_totp_step(self, user_id: int, step: int) -> bool:
        """Claim a TOTP time step: False if it (or a later one) was used, so a
        code seen over a shoulder cannot be replayed."""
        async with self._db.write() as conn:
            result = await conn.execute(
                update(users).where(users.c.id == user_id,
                                    (users.c.totp_last_step.is_(None)) | (users.c.totp_last_step < step))
                .values(totp_last_step=step))
        return result.rowcount == 1

    async def set_admin(self, user_id: int, admin: bool) -> None:
        await self._update_user(user_id, is_admin=1 if admin else 0)

    async def admins(self) -> list[User]:
        return [_user(row) for row in await self._rows(_USER.where(users.c.is_admin == 1).order_by(users.c.id))]

    async def delete_user(self, user_id: int) -> None:
        """Erase a person: sessions, links, memberships, the row itself, and
        invitations waiting for the address."""
        async with self._db.write() as conn:
            email = (await conn.execute(select(users.c.email).where(users.c.id == user_id))).scalar()
            await conn.execute(delete(sessions).where(sessions.c.user_id == user_id))
            await conn.execute(delete(user_tokens).where(user_tokens.c.user_id == user_id))
            await conn.execute(delete(memberships).where(memberships.c.user_id == user_id))
            if email is not None:
                await conn.execute(delete(invites).where(invites.c.email == email))
            await conn.execute(delete(users).where(users.c.id == user_id))

    async def prune(self, unconfirmed_days: int, audit_days: int) -> list[User]:
        """Forget what has run out: expired sessions and links, audit rows older
        than ``audit_days``. Returns the people who never confirmed their address
        within ``unconfirmed_days``, for the caller to erase with their accounts."""
        now = utc_now()
        async with self._db.write() as conn:
            await conn.execute(delete(sessions).where(sessions.c.expires <= _stamp(now)))
            await conn.execute(delete(user_tokens).where(user_tokens.c.expires <= _stamp(now)))
            await conn.execute(delete(audit_log).where(
                audit_log.c.created < _stamp(now - timedelta(days=audit_days))))
        rows = await self._rows(_USER.where(users.c.confirmed_at.is_(None), users.c.created < _stamp(
            now - timedelta(days=unconfirmed_days))))
        return [_user(row) for row in rows]

    # ------------------------------------------------------------------ links

    async def issue_link(self, user_id: int, purpose: str, lifetime: float) -> str:
        """A one-time token for a mailed link; earlier ones of the purpose stop working."""
        token = new_token()
        expires = _stamp(utc_now() + timedelta(seconds=lifetime))
        async with self._db.write() as conn:
            await conn.execute(delete(user_tokens).where(user_tokens.c.user_id == user_id,
                                                         user_tokens.c.purpose == purpose))
            await conn.execute(insert(user_tokens).values(token_sha256=token_digest(token), user_id=user_id,
                                                          purpose=purpose, expires=expires))
        return token

    async def redeem_link(self, token: str, purpose: str) -> int | None:
        """The person a link was for, once; None if unknown, used or expired."""
        digest = token_digest(token)
        async with self._db.write() as conn:
            row = (await conn.execute(select(user_tokens.c.user_id, user_tokens.c.expires)
                                      .where(user_tokens.c.token_sha256 == digest,
                                             user_tokens.c.purpose == purpose))).first()
            if row is None:
                return None
            await conn.execute(delete(user_tokens).where(user_tokens.c.token_sha256 == digest))
        return int(row[0]) if row[1] > _stamp(utc_now()) else None

    async def link_valid(self, token: str, purpose: str) -> bool:
        rows = await self._rows(select(user_tokens.c.expires).where(
            user_tokens.c.token_sha256 == token_digest(token), user_tokens.c.purpose == purpose))
        return bool(rows) and rows[0][0] > _stamp(utc_now())

    # ------------------------------------------------------------------ sessions

    async def open_session(self, user_id: int, lifetime: float, *, second_factor_pending: bool = False) -> str:
        """A new session (the cookie's token is returned, its hash stored)."""
        token = new_token()
        now = utc_now()
        async with self._db.write() as conn:
            await conn.execute(insert(sessions).values(
                token_sha256=token_digest(token), user_id=user_id, created=_stamp(now),
                expires=_stamp(now + timedelta(seconds=lifetime)), last_seen=_stamp(now),
                second_factor_pending=1 if second_factor_pending else 0))
        return token

    async def session(self, token: str, idle: float) -> Session | None:
        """The live session of a cookie, or None (unknown, expired, idle too long)."""
        digest = token_digest(token)
        rows = await self._rows(select(sessions.c.user_id, sessions.c.expires, sessions.c.last_seen,
                                       sessions.c.second_factor_pending)
                                .where(sessions.c.token_sha256 == digest))
        if not rows:
            return None
        user_id, expires, last_seen, pending = rows[0]
        now = utc_now()
        if expires <= _stamp(now) or last_seen <= _stamp(now - timedelta(seconds=idle)):
            await self.close_session(token)
            return None
        user = await self.user(user_id)
        if user is None:
            return None
        if last_seen <= _stamp(now - TOUCH_EVERY):
            async with self._db.write() as conn:
                await conn.execute(update(sessions).where(sessions.c.token_sha256 == digest)
                                   .values(last_seen=_stamp(now)))
        return Session(user, bool(pending))

    async def close_session(self, token: str) -> None:
        async with self._db.write() as conn:
            await conn.execute(delete(sessions).where(sessions.c.token_sha256 == token_digest(token)))

    async def sessions_of(self, user_id: int) -> list[tuple[str, str, str]]:
        """(created, expires, last seen) of a person's sessions, for the export."""
        rows = await self._rows(select(sessions.c.created, sessions.c.expires, sessions.c.last_seen)
                                .where(sessions.c.user_id == user_id).order_by(sessions.c.created))
        return [tuple(row) for row in rows]  # type: ignore[misc]


def _user(row: object) -> User:
    values = tuple(row)  # type: ignore[call-overload]
    return User(*values[:7], is_admin=bool(values[7]))
