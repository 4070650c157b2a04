"""Versioned schema migrations (Alembic), run when the store opens and by
``privatai migrate``.

Every process that opens the store brings the database to this release's
revision, so several starting at once (workers, instances, the CLI beside a
server) must not migrate twice: the check and the upgrade run in one write
transaction that holds the database's lock (SQLite's ``BEGIN IMMEDIATE``,
PostgreSQL's advisory lock), and the revision is checked again under it.

A SQLite file made by release 0.1.0 has no Alembic revision but ``PRAGMA
user_version = 1`` and the tables of revision 0001: it is stamped 0001 and
upgraded from there. Migrated files get ``user_version = 2``, so release
0.1.0, which refuses a version above its own, does not open a schema it does
not know.

To change the schema, edit :mod:`privatai.store.schema`, add the next file to
``migrations/versions`` whose ``upgrade()`` makes the same change, and set
:data:`HEAD` to its revision; ``tests/test_migrations.py`` fails until the
three agree, on both databases.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection as SyncConnection
from sqlalchemy import inspect, text

from privatai.store.connection import Database
from privatai.store.names import AdminError

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).with_name("migrations")
# The revision this release's queries are written for: the newest file in
# migrations/versions (tests/test_migrations.py checks that they agree).
# Known without Alembic, which is imported only when there is work to do:
# every CLI command opens the store, and Alembic takes a second to import.
HEAD = "0005_billing"
RELEASE_0_1_VERSION = 1  # PRAGMA user_version of a SQLite file made by release 0.1.0
MANAGED_VERSION = 2      # PRAGMA user_version once Alembic manages the file
_ADVISORY_LOCK = 0x70726976_6169  # any constant: "privai"


@dataclass(frozen=True, slots=True)
class Migration:
    """What :func:`migrate` found and left: Alembic revisions; ``before`` is None
    for an empty database and ``"release 0.1.0"`` for a SQLite file made by it."""

    before: str | None
    after: str

    @property
    def changed(self) -> bool:
        return self.before != self.after


def alembic_config(connection: SyncConnection | None = None) -> Config:
    """Alembic's configuration for PrivatAI's migrations, running on ``connection``."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def _current(connection: SyncConnection) -> str | None:
    if not inspect(connection).has_table("alembic_version"):
        return None
    return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()


async def current_revision(db: Database) -> str | None:
    async with db.read() as conn:
        return await conn.run_sync(_current)


async def migrate(db: Database) -> Migration:
    """Bring the database to :data:`HEAD`; AdminError if it is newer than this release."""
    before = await current_revision(db)
    if before == HEAD:
        return Migration(before, HEAD)
    async with db.write() as conn:
        if db.kind == "postgresql":
            await conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_ADVISORY_LOCK})")
        return await conn.run_sync(_upgrade)


def _upgrade(connection: SyncConnection) -> Migration:
    from alembic import command
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    before = _current(connection)
    if before is not None:
        try:
            ScriptDirectory.from_config(alembic_config()).get_revision(before)
        except CommandError:
            raise AdminError(f"database schema revision {before} is newer than this PrivatAI "
                             f"supports ({HEAD}); upgrade PrivatAI") from None
    sqlite = connection.dialect.name == "sqlite"
    if sqlite:
        version = connection.exec_driver_sql("PRAGMA user_version").scalar() or 0
        if version > MANAGED_VERSION:
            raise AdminError(f"database schema version {version} is newer than this PrivatAI "
                             f"supports ({MANAGED_VERSION}); upgrade PrivatAI")
        if before is None and version == RELEASE_0_1_VERSION:
            command.stamp(alembic_config(connection), "0001")
            before = "release 0.1.0"
    command.upgrade(alembic_config(connection), HEAD)
    if sqlite:
        connection.exec_driver_sql(f"PRAGMA user_version = {MANAGED_VERSION}")
    return Migration(before, HEAD)
