"""The store's people, sessions, teams, erasure and audit log, on SQLite and
PostgreSQL: the same queries must mean the same on both."""
from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from privatai.errors import AuthenticationFailed
from privatai.store.account_usage import AccountUsage
from privatai.store.audit_log import AuditLog
from privatai.store.erasure import OwnsSharedAccount, delete_person, export_person
from privatai.store.names import AdminError
from privatai.store.people import People, token_digest
from privatai.store.recorder import UsageRecorder
from privatai.store.records import utc_now
from privatai.store.teams import SeatsTaken, Teams
from tests.services import Target


async def test_people_sessions_teams_and_erasure(target: Target) -> None:
    store = await target.open()
    try:
        db = store._db
        people, teams, audit, usage = People(db), Teams(db), AuditLog(db), AccountUsage(db)
        owner = await people.sign_up(" Owner@Example.DE ", "hash-1", "Acme", "team", "pending")
        assert owner is not None and owner.email == "owner@example.de" and not owner.confirmed
        assert await people.sign_up("owner@example.de", "hash-2", "Other", "team", "active") is None
        with pytest.raises(AdminError, match="already exists"):
            await people.sign_up("new@example.de", "hash-2", "ACME", "team", "active")
        assert await people.user_by_email("new@example.de") is None  # nothing half-made
        (account, role), = await teams.accounts_of(owner.id)
        assert (account.name, account.status, role) == ("Acme", "pending", "owner")

        # Links: one-time, the newest only.
        first = await people.issue_link(owner.id, "confirm", 60)
        second = await people.issue_link(owner.id, "confirm", 60)
        assert await people.redeem_link(first, "confirm") is None
        assert await people.redeem_link(second, "reset") is None
        assert await people.redeem_link(second, "confirm") == owner.id
        assert await people.redeem_link(second, "confirm") is None

        # Sessions: stored hashed, ended by a new password.
        token = await people.open_session(owner.id, 3600)
        session = await people.session(token, 600)
        assert session is not None and session.user.id == owner.id and not session.second_factor_pending
        async with db.read() as conn:
            stored = (await conn.exec_driver_sql("SELECT token_sha256 FROM sessions")).scalars().all()
        assert stored == [token_digest(token)]
        await people.set_password(owner.id, "hash-3")
        assert await people.session(token, 600) is None

        # TOTP steps are used once, in order.
        assert await people.use_totp_step(owner.id, 100)
        assert not await people.use_totp_step(owner.id, 100)
        assert not await people.use_totp_step(owner.id, 99)
        assert await people.use_totp_step(owner.id, 101)

        # Team: seats count people and open invitations.
        invite_token = await teams.invite(account.id, "Member@Example.de", "member", 3600, seats=2)
        with pytest.raises(SeatsTaken):
            await teams.invite(account.id, "third@example.de", "member", 3600, seats=2)
        with pytest.raises(AdminError, match="already a member"):
            await teams.invite(account.id, "owner@example.de", "admin", 3600, seats=None)
        member = await people.create_user("member@example.de", "hash-4", confirmed=True)
        invite = await teams.invitation(invite_token)
        assert invite is not None and invite.email == "member@example.de"
        await teams.accept(invite, member.id)
        assert await teams.invitation(invite_token) is None
        assert [(m.email, m.role) for m in await teams.members(account.id)] == [
            ("owner@example.de", "owner"), ("member@example.de", "member")]
        assert await teams.set_role(account.id, member.id, "admin")
        assert not await teams.set_role(account.id, owner.id, "member")  # the owner stays
        assert not await teams.remove_member(account.id, owner.id)
        assert await teams.membership(member.id, account.id + 1000) is None

        # Usage and export.
        await store.set_account_status("Acme", "active")
        new = await store.create_key("Acme", label="ci")
        recorder = UsageRecorder(store)
        recorder.record(new.info.id, "m", 10, 5)
        await recorder.flush()
        day = utc_now().date()
        assert [(r.day, r.key_label, r.requests) for r in await usage.daily(account.id, day - timedelta(days=1))] == [
            (day.isoformat(), "ci", 1)]
        assert (await usage.totals())[account.id].prompt_tokens == 10
        await audit.record("cli", "approve", f"account:{account.id}")
        data = await export_person(store, people, teams, audit, owner)
        assert data["accounts"][0]["keys"][0]["label"] == "ci"
        assert data["accounts"][0]["usage_daily"][0]["requests"] == 1
        assert data["audit_log"][0]["action"] == "approve"
        assert "hash" not in str(data["person"])

        # Erasure: the owner of a shared account must hand it over first.
        with pytest.raises(OwnsSharedAccount):
            await delete_person(store, people, teams, owner)
        assert await delete_person(store, people, teams, member) == []
        assert [a.name for a in await delete_person(store, people, teams, replace(owner))] == ["Acme"]
        with pytest.raises(AuthenticationFailed):
            await store.authenticate(new.key)
        assert await store.list_accounts() == []
        assert await people.user(owner.id) is None
        # Ids are not reused: the audit log names people by id.
        again = await people.create_user("again@example.de", "hash-5")
        assert again.id > member.id
    finally:
        await store.close()
