"""Who belongs to which account, in which role, and the invitations to join.

Roles: ``owner`` (one per account: the person who signed up), ``admin`` and
``member``. Seats count the people in an account and its open invitations,
so an owner cannot invite past the plan.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, func, insert, select, update

from privatai.store.accounts import _ACCOUNT
from privatai.store.connection import Database, Queries
from privatai.store.names import AdminError
from privatai.store.people import new_token, normalized_email, token_digest
from privatai.store.records import Account, utc_now
from privatai.store.schema import accounts, invites, memberships, users

MANAGERS = ("owner", "admin")


@dataclass(frozen=True, slots=True)
class Member:
    user_id: int
    email: str
    role: str
    since: str


@dataclass(frozen=True, slots=True)
class Invite:
    id: int
    account_id: int
    email: str
    role: str
    created: str
    expires: str


class SeatsTaken(AdminError):
    """The plan's seats are all taken (people and open invitations)."""


class Teams(Queries):
    def __init__(self, db: Database) -> None:
        super().__init__(db)

    async def accounts_of(self, user_id: int) -> list[tuple[Account, str]]:
        """The accounts a person belongs to, with the role, by name."""
        rows = await self._rows(_ACCOUNT.add_columns(memberships.c.role)
                                .join_from(accounts, memberships)
                                .where(memberships.c.user_id == user_id).order_by(accounts.c.name))
        return [(Account(*row[:5]), row[5]) for row in rows]

    async def membership(self, user_id: int, account_id: int) -> tuple[Account, str] | None:
        """The account and the person's role in it; None when not a member
        (whether the account exists or not: ids are not to be probed)."""
        rows = await self._rows(_ACCOUNT.add_columns(memberships.c.role)
                                .join_from(accounts, memberships)
                                .where(memberships.c.user_id == user_id, accounts.c.id == account_id))
        return (Account(*rows[0][:5]), rows[0][5]) if rows else None

    async def account_by_id(self, account_id: int) -> Account | None:
        rows = await self._rows(_ACCOUNT.where(accounts.c.id == account_id))
        return Account(*rows[0]) if rows else None

    async def members(self, account_id: int) -> list[Member]:
        rows = await self._rows(select(users.c.id, users.c.email, memberships.c.role, memberships.c.created)
                                .join_from(memberships, users).where(memberships.c.account_id == account_id)
                                .order_by(memberships.c.created, users.c.id))
        return [Member(*row) for row in rows]

    async def open_invites(self, account_id: int) -> list[Invite]:
        rows = await self._rows(select(invites.c.id, invites.c.account_id, invites.c.email, invites.c.role,
                                       invites.c.created, invites.c.expires)
                                .where(invites.c.account_id == account_id,
                                       invites.c.expires > utc_now().isoformat())
                                .order_by(invites.c.id))
        return [Invite(*row) for row in rows]

    async def invite(self, account_id: int, email: str, role: str, lifetime: float,
                     seats: int | None) -> str:
        """A new invitation's token (for the mailed link). SeatsTaken when the
        plan's seats are full; AdminError when the address is already in."""
        email = normalized_email(email)
        if role not in ("admin", "member"):
            raise AdminError("role must be admin or member")
        token = new_token()
        now = utc_now()
        async with self._db.write() as conn:
            await conn.execute(delete(invites).where(invites.c.expires <= now.isoformat()))
            member = await conn.execute(select(users.c.id).join_from(memberships, users).where(
                memberships.c.account_id == account_id, users.c.email == email))
            if member.first():
                raise AdminError("already a member")
            await conn.execute(delete(invites).where(invites.c.account_id == account_id, invites.c.email == email))
            if seats is not None:
                people = (await conn.execute(select(func.count()).select_from(memberships)
                                             .where(memberships.c.account_id == account_id))).scalar_one()
                pending = (await conn.execute(select(func.count()).select_from(invites)
                                              .where(invites.c.account_id == account_id))).scalar_one()
                if people + pending >= seats:
                    raise SeatsTaken(f"all {seats} seat(s) of the plan are taken")
            await conn.execute(insert(invites).values(
                account_id=account_id, email=email, role=role, token_sha256=token_digest(token),
                created=now.isoformat(), expires=(now + timedelta(seconds=lifetime)).isoformat()))
        return token

    async def invitation(self, token: str) -> Invite | None:
        rows = await self._rows(select(invites.c.id, invites.c.account_id, invites.c.email, invites.c.role,
                                       invites.c.created, invites.c.expires)
                                .where(invites.c.token_sha256 == token_digest(token),
                                       invites.c.expires > utc_now().isoformat()))
        return Invite(*rows[0]) if rows else None

    async def accept(self, invite: Invite, user_id: int) -> None:
        """Join the account of an invitation, which is used up."""
        async with self._db.write() as conn:
            gone = await conn.execute(delete(invites).where(invites.c.id == invite.id))
            if gone.rowcount != 1:
                raise AdminError("the invitation was withdrawn")
            exists = await conn.execute(select(memberships.c.role).where(
                memberships.c.account_id == invite.account_id, memberships.c.user_id == user_id))
            if exists.first() is None:
                await conn.execute(insert(memberships).values(account_id=invite.account_id, user_id=user_id,
                                                              role=invite.role, created=utc_now().isoformat()))

    async def cancel_invite(self, account_id: int, invite_id: int) -> bool:
        async with self._db.write() as conn:
            result = await conn.execute(delete(invites).where(invites.c.id == invite_id,
                                                              invites.c.account_id == account_id))
        return result.rowcount == 1

    async def set_role(self, account_id: int, user_id: int, role: str) -> bool:
        """Make a member an admin or a member; the owner stays the owner."""
        if role not in ("admin", "member"):
            raise AdminError("role must be admin or member")
        async with self._db.write() as conn:
            result = await conn.execute(update(memberships).where(
                memberships.c.account_id == account_id, memberships.c.user_id == user_id,
                memberships.c.role != "owner").values(role=role))
        return result.rowcount == 1

    async def remove_member(self, account_id: int, user_id: int) -> bool:
        """Take a person out of an account; never its owner."""
        async with self._db.write() as conn:
            result = await conn.execute(delete(memberships).where(
                memberships.c.account_id == account_id, memberships.c.user_id == user_id,
                memberships.c.role != "owner"))
        return result.rowcount == 1
