"""The audit log: what operators did (and owners erasing their accounts),
by whom, to which record, when. Ids and fixed action words only: never an
e-mail address, a name or any content."""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import insert, or_, select

from privatai.store.connection import Database, Queries
from privatai.store.records import utc_now
from privatai.store.schema import audit_log

ACTIONS = ("approve", "suspend", "activate", "delete_account", "delete_person", "grant_admin",
           "revoke_admin")


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    created: str
    actor: str   # "user:12" or "cli"
    action: str
    target: str  # "account:7", "user:12"


class AuditLog(Queries):
    def __init__(self, db: Database) -> None:
        super().__init__(db)

    async def record(self, actor: str, action: str, target: str) -> None:
        assert action in ACTIONS, action
        async with self._db.write() as conn:
            await conn.execute(insert(audit_log).values(created=utc_now().isoformat(), actor=actor,
                                                        action=action, target=target))

    async def recent(self, limit: int = 100) -> list[AuditEntry]:
        rows = await self._rows(select(audit_log).order_by(audit_log.c.id.desc()).limit(limit))
        return [AuditEntry(*row) for row in rows]

    async def about(self, targets: list[tuple[str, str]]) -> list[AuditEntry]:
        """The entries naming these records since they were created (a person's
        export): (target, created) pairs, since an account's id can be reused
        after a deletion."""
        if not targets:
            return []
        rows = await self._rows(select(audit_log).where(or_(*(
            (audit_log.c.target == target) & (audit_log.c.created >= created) for target, created in targets)))
            .order_by(audit_log.c.id))
        return [AuditEntry(*row) for row in rows]
