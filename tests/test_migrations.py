"""Schema migrations: a database made by release 0.1.0 upgrades keeping its
accounts, keys and usage; the migrations build exactly the schema the queries
use, on SQLite and PostgreSQL; ``privatai migrate`` as an operator runs it."""
from __future__ import annotations

import hashlib
import importlib
import os
import sqlite3
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import yaml
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from privatai.errors import AuthenticationFailed, PermissionDenied
from privatai.store.database import Store
from privatai.store.keys import generate_key, hash_key
from privatai.store.migrate import HEAD
from privatai.store.names import AdminError
from privatai.store.recorder import UsageRecorder
from privatai.store.records import Account, UsageRow
from privatai.store.schema import metadata
from tests.gateway import run_cli
from tests.services import PASSWORD_ENV, PostgreSQL, Target

ROOT = Path(__file__).resolve().parents[1]

# What release 0.1.0's store ran on a new file (its MIGRATIONS[0]), then
# PRAGMA user_version = 1. The first migration runs the same statements on
# SQLite; their SHA-256 (of the statements joined by newlines) is that
# release's, so neither the migration nor this test can drift from the files
# that exist.
RELEASE_0_1_DDL = importlib.import_module("privatai.store.migrations.versions.0001_initial").RELEASE_0_1_SQLITE
RELEASE_0_1_DDL_SHA256 = "7f7a76339d1df9e2413bc3aa3c66f7d949346f3eda1e0fad539c4b1e2759e5e1"


def test_the_first_migration_is_release_0_1_word_for_word() -> None:
    assert hashlib.sha256("\n".join(RELEASE_0_1_DDL).encode()).hexdigest() == RELEASE_0_1_DDL_SHA256


def release_0_1_file(path: Path) -> dict[str, str]:
    """A database as release 0.1.0 left it, with accounts, keys and usage; its keys by role."""
    keys = {role: generate_key() for role in ("active", "revoked", "suspended", "expiring")}
    db = sqlite3.connect(path)
    with db:
        for statement in RELEASE_0_1_DDL:
            db.execute(statement)
        db.execute("PRAGMA user_version = 1")
        db.executemany("INSERT INTO accounts VALUES (?, ?, ?, ?, ?)", [
            (1, "Acme GmbH", "pro", "active", "2025-01-02T03:04:05"),
            (2, "frozen", "enterprise", "suspended", "2025-01-03T00:00:00")])
        db.executemany("INSERT INTO api_keys VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", [
            (1, 1, "ci", keys["active"][:12], hash_key(keys["active"]), "2025-01-02T03:04:06",
             "2025-03-01T10:00:00", None, None),
            (2, 1, "", keys["revoked"][:12], hash_key(keys["revoked"]), "2025-01-02T03:04:07",
             "2025-02-01T09:00:00", "2025-02-02T00:00:00", None),
            (3, 2, "frozen ci", keys["suspended"][:12], hash_key(keys["suspended"]), "2025-01-03T00:00:01",
             None, None, None),
            (4, 1, "later", keys["expiring"][:12], hash_key(keys["expiring"]), "2025-01-04T00:00:00",
             None, None, "2099-12-31T00:00:00")])
        db.executemany("INSERT INTO usage_daily VALUES (?, ?, ?, ?, ?, ?)", [
            (1, "2025-02-28", "phi4-mini", 3, 300, 30),
            (1, "2025-03-01", "phi4-mini", 2, 200, 20),
            (1, "2025-03-01", "llama3.2", 1, 7, 8),
            (2, "2025-02-01", "phi4-mini", 5, 500, 50)])
    db.close()
    return keys


def _schema(path: Path) -> list[tuple[str, str, str]]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT type, name, sql FROM sqlite_master WHERE name != 'alembic_version'"
                          " AND name NOT LIKE 'sqlite_autoindex%' ORDER BY name").fetchall()


async def test_a_release_0_1_database_keeps_its_accounts_keys_and_usage(tmp_path: Path) -> None:
    path = tmp_path / "privatai.db"
    keys = release_0_1_file(path)

    store = await Store.open(str(path))
    try:
        assert store.migration is not None
        assert (store.migration.before, store.migration.after) == ("release 0.1.0", HEAD)
        assert await store.list_accounts() == [
            Account(1, "Acme GmbH", "pro", "active", "2025-01-02T03:04:05"),
            Account(2, "frozen", "enterprise", "suspended", "2025-01-03T00:00:00")]
        assert (await store.authenticate(keys["active"])).key_id == 1
        assert (await store.authenticate(keys["expiring"])).account_name == "Acme GmbH"
        with pytest.raises(AuthenticationFailed, match="revoked"):
            await store.authenticate(keys["revoked"])
        with pytest.raises(PermissionDenied, match="suspended"):
            await store.authenticate(keys["suspended"])
        assert [(k.id, k.label, k.status, k.last_used) for k in await store.list_keys()] == [
            (1, "ci", "active", "2025-03-01T10:00:00"), (2, "", "revoked", "2025-02-01T09:00:00"),
            (4, "later", "active", None), (3, "frozen ci", "active", None)]

        assert await store.usage_for_key(1, by_model=True) == {
            "tokens_used": 565, "prompt_tokens": 507, "completion_tokens": 58, "requests": 6,
            "last_used": "2025-03-01T10:00:00",
            "models": {"llama3.2": {"tokens_used": 15, "prompt_tokens": 7, "completion_tokens": 8, "requests": 1},
                       "phi4-mini": {"tokens_used": 550, "prompt_tokens": 500, "completion_tokens": 50,
                                     "requests": 5}}}
        assert await store.usage_report() == [
            UsageRow("Acme GmbH", None, None, None, 11, 1007, 108, "2025-03-01T10:00:00")]

        # And it goes on working: names stay unique whatever their case, ids
        # continue, new usage adds to the old.
        with pytest.raises(AdminError, match="already exists"):
            await store.create_account("ACME GMBH")
        assert (await store.create_key("frozen")).info.id == 5
        recorder = UsageRecorder(store)
        recorder.record(1, "llama3.2", 10, 10)
        await recorder.flush()
        assert (await store.usage_for_key(1))["requests"] == 7
    finally:
        await store.close()

    with sqlite3.connect(path) as db:
        # Release 0.1.0 refuses a user_version above its own: it will not open this file now.
        assert db.execute("PRAGMA user_version").fetchone()[0] == 2
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [(HEAD,)]
    # The upgraded file has the very schema of a new one.
    new = await Store.open(str(tmp_path / "new.db"))
    await new.close()
    assert _schema(path) == _schema(tmp_path / "new.db")

    store = await Store.open(str(path))
    assert store.migration is not None and not store.migration.changed
    await store.close()


def _for(dialect: str) -> Any:
    """Alembic's filter: leave out what the schema declares only for the other database."""
    def include(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
        condition = getattr(obj, "_ddl_if", None)
        return condition is None or condition.dialect in (None, dialect)
    return include


def test_head_is_the_newest_migration() -> None:
    from alembic.script import ScriptDirectory

    from privatai.store.migrate import alembic_config
    assert ScriptDirectory.from_config(alembic_config()).get_heads() == [HEAD]


async def test_migrations_build_the_schema_the_queries_use(target: Target) -> None:
    store = await target.open()
    try:
        async with store._db.read() as conn:
            def differences(sync: Any) -> list[Any]:
                context = MigrationContext.configure(
                    sync, opts={"compare_type": True, "include_object": _for(sync.dialect.name)})
                with warnings.catch_warnings():
                    # SQLite cannot reflect PostgreSQL's expression index; the filter skips it anyway.
                    warnings.filterwarnings("ignore", "autogenerate skipping metadata-specified expression")
                    return compare_metadata(context, metadata)
            diffs = await conn.run_sync(differences)
    finally:
        await store.close()
    if target.kind == "sqlite":
        # SQLite reports an INTEGER PRIMARY KEY (the rowid) as nullable; it never holds NULL.
        diffs = [d for d in diffs if not (isinstance(d, list) and d[0][0] == "modify_nullable"
                                          and d[0][3] == "id")]
    assert diffs == []


class CLI:
    """``privatai`` as an operator runs it, with a config file naming the database."""

    def __init__(self, tmp_path: Path, store: dict[str, Any]) -> None:
        self.config = tmp_path / "backends.yaml"
        self.config.write_text(yaml.safe_dump({
            "backends": [{"name": "local", "kind": "vllm", "url": "http://127.0.0.1:9", "models": ["m"]}],
            "store": store}))

    def __call__(self, *args: str, code: int = 0, env: dict[str, str] | None = None) -> str:
        result = subprocess.run([sys.executable, "-m", "privatai", *args, "--config", str(self.config)],
                                cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
        assert result.returncode == code, (result.stdout, result.stderr)
        assert "Traceback" not in result.stderr
        return result.stdout if code == 0 else result.stderr

    def in_process(self, *args: str) -> str:
        """The same command through the same entry point, run in this process
        (:func:`tests.gateway.run_cli`): no Python start-up, where what is
        checked is the command's answer rather than the process."""
        result = run_cli(*args, "--config", str(self.config))
        assert result.returncode == 0, (result.stdout, result.stderr)
        assert "Traceback" not in result.stderr
        return result.stdout


def test_migrate_command_upgrades_a_release_0_1_file(tmp_path: Path) -> None:
    release_0_1_file(tmp_path / "privatai.db")
    cli = CLI(tmp_path, {"path": "privatai.db"})
    assert cli("migrate") == f"Migrated the sqlite database to schema revision {HEAD} (from release 0.1.0).\n"
    assert cli("migrate") == (f"The sqlite database is at schema revision {HEAD}, this release's: "
                              "nothing to do.\n")
    assert "Acme GmbH" in cli("accounts", "list")


def test_the_cli_on_postgresql(tmp_path: Path, postgresql: PostgreSQL) -> None:
    database = postgresql.new_database()
    try:
        url = postgresql.url(database)
        cli = CLI(tmp_path, {"url": url, "password_env": PASSWORD_ENV})
        assert cli("migrate") == f"Migrated the postgresql database to schema revision {HEAD} (from an empty database).\n"
        assert "nothing to do" in cli.in_process("migrate")
        cli.in_process("accounts", "create", "acme")
        key = cli.in_process("keys", "create", "acme", "--label", "ci").strip()
        assert key[:12] in cli.in_process("keys", "list")
        assert "No usage recorded" in cli.in_process("usage")

        # The password comes only from the environment; errors are one line and never show it.
        env = {k: v for k, v in os.environ.items() if k != PASSWORD_ENV}
        missing = cli("accounts", "list", code=2, env=env)
        assert missing.strip().endswith(f"the environment variable {PASSWORD_ENV} (store.password_env) is not set")
        wrong = cli("accounts", "list", code=2, env={**env, PASSWORD_ENV: "not-the-password"})
        assert "password authentication failed" in wrong and len(wrong.strip().splitlines()) == 1
        assert "not-the-password" not in wrong and postgresql.password not in wrong

        leaked = CLI(tmp_path, {"url": url.replace("privatai@", f"privatai:{postgresql.password}@")})
        refused = leaked("accounts", "list", code=2)
        assert "store.url: must not contain the password" in refused and postgresql.password not in refused
    finally:
        postgresql.drop_database(database)
