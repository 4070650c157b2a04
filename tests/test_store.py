"""Store: schema, migrations, accounts, keys and the authentication matrix,
on SQLite and on PostgreSQL (the ``target`` fixture, tests/services.py)."""
from __future__ import annotations

import asyncio
import multiprocessing
import sqlite3
import stat
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import AsyncIterator

import pytest
import sqlalchemy
import sqlalchemy.exc
import sqlalchemy.event

from privatai.errors import AuthenticationFailed, PermissionDenied
from privatai.store.database import Store
from privatai.store.keys import generate_key
from privatai.store.migrate import HEAD
from privatai.store.names import AdminError
from privatai.store.records import Principal
from privatai.store.schema import metadata
from tests.services import Target


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "privatai.db")


@pytest.fixture
async def store(target: Target) -> AsyncIterator[Store]:
    store = await target.open()
    yield store
    await store.close()


# ---------------------------------------------------------------------- schema


async def test_a_new_sqlite_file_is_owner_only_in_wal_mode(db_path: str) -> None:
    store = await Store.open(db_path)
    try:
        assert await store.schema_revision() == HEAD
        async with store._db.read() as conn:
            for pragma, value in (("journal_mode", "wal"), ("foreign_keys", 1), ("synchronous", 1),  # NORMAL
                                  ("busy_timeout", 5000)):
                assert (await conn.exec_driver_sql(f"PRAGMA {pragma}")).scalar() == value, pragma
    finally:
        await store.close()
    with sqlite3.connect(db_path) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    # The schema's tables, Alembic's, and SQLite's counter behind AUTOINCREMENT (users).
    assert tables == {*metadata.tables, "alembic_version", "sqlite_sequence"}
    assert stat.S_IMODE(Path(db_path).stat().st_mode) == 0o600


async def test_migrations_run_once_and_reopen_keeps_data(target: Target) -> None:
    store = await target.open()
    assert store.migration is not None and (store.migration.before, store.migration.after) == (None, HEAD)
    await store.create_account("acme")
    created = await store.create_key("acme", label="ci")
    await store.close()

    for _ in range(2):
        store = await target.open()
        assert store.migration is not None and not store.migration.changed
        assert await store.schema_revision() == HEAD
        assert [a.name for a in await store.list_accounts()] == ["acme"]
        assert (await store.authenticate(created.key)).account_name == "acme"
        await store.close()


async def test_concurrent_first_opens_migrate_once(target: Target) -> None:
    stores = await asyncio.gather(*(target.open() for _ in range(4)))
    try:
        assert [await s.schema_revision() for s in stores] == [HEAD] * 4
        assert sum(s.migration is not None and s.migration.changed for s in stores) == 1
        await stores[0].create_account("acme")
        assert [a.name for a in await stores[3].list_accounts()] == ["acme"]
    finally:
        for s in stores:
            await s.close()


def _open_new_files(paths: list[str], barrier: threading.Barrier) -> list[str]:
    """Open each path once, in step with the other processes; the errors seen."""
    async def open_close(path: str) -> None:
        store = await Store.open(path)
        await store.close()

    errors = []
    for path in paths:
        barrier.wait()
        try:
            asyncio.run(open_close(path))
        except Exception as exc:  # noqa: BLE001 - reported to the test
            errors.append(f"{type(exc).__name__}: {exc}")
    return errors


def test_processes_opening_a_new_file_at_once_never_fail(tmp_path: Path) -> None:
    # The first opens of a new file race to switch it to WAL; SQLite answers
    # one of them "database is locked" at once, without waiting, to avoid a
    # deadlock. Four processes opening 100 new files in step hit it reliably.
    processes, rounds = 4, 100
    paths = [str(tmp_path / f"{n}.db") for n in range(rounds)]
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, context.Pool(processes) as pool:
        barrier = manager.Barrier(processes)
        results = pool.starmap(_open_new_files, [(paths, barrier)] * processes)
    assert [error for errors in results for error in errors] == []
    for path in paths:
        with sqlite3.connect(path) as db:
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [(HEAD,)]


async def test_a_newer_schema_is_refused_clearly(target: Target) -> None:
    store = await target.open()
    async with store._db.write() as conn:
        await conn.exec_driver_sql("UPDATE alembic_version SET version_num = '9999'")
    await store.close()
    with pytest.raises(AdminError, match="schema revision 9999 is newer than this PrivatAI supports"):
        await target.open()


async def test_a_sqlite_version_from_the_future_is_refused_clearly(db_path: str) -> None:
    with sqlite3.connect(db_path) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(AdminError, match="newer than this PrivatAI"):
        await Store.open(db_path)


# ---------------------------------------------------------------------- accounts and keys


async def test_account_admin(store: Store) -> None:
    account = await store.create_account("acme", plan="enterprise")
    assert (account.name, account.plan, account.status) == ("acme", "enterprise", "active")
    with pytest.raises(AdminError, match="already exists"):
        await store.create_account("ACME")
    with pytest.raises(AdminError, match="no account named 'nope'"):
        await store.get_account("nope")
    with pytest.raises(AdminError, match="no account"):
        await store.set_account_status("nope", "suspended")
    assert (await store.set_account_status("acme", "suspended")).status == "suspended"
    assert (await store.set_account_status("acme", "active")).status == "active"


async def test_every_status_of_the_shared_vocabulary_is_stored_and_decides_authentication(store: Store) -> None:
    await store.create_account("acme")
    key = (await store.create_key("acme")).key
    store.dashboard = "https://api.example.de/dashboard"
    refused = {"inactive": "subscription_inactive", "pending": "account_pending", "suspended": "account_suspended"}
    for status in ("active", "past_due", "inactive", "pending", "suspended"):
        assert (await store.set_account_status("acme", status)).status == status  # type: ignore[arg-type]
        if status in refused:
            with pytest.raises(PermissionDenied) as denied:
                await store.authenticate(key)
            assert denied.value.code == refused[status]
            assert ("https://api.example.de/dashboard" in denied.value.message) == (status != "suspended")
        else:
            assert (await store.authenticate(key)).account_name == "acme"
    with pytest.raises(AdminError, match="unknown status 'frozen'"):
        await store.set_account_status("acme", "frozen")  # type: ignore[arg-type]
    # The database refuses a word outside the vocabulary too (the CHECK constraint of migration 0003).
    with pytest.raises(sqlalchemy.exc.IntegrityError):
        async with store._db.write() as conn:
            await conn.execute(sqlalchemy.text("UPDATE accounts SET status = 'frozen'"))


async def test_names_labels_and_plans_are_checked_where_they_enter(store: Store) -> None:
    for name, reason in (("n" * 65, "at most 64 characters"), ("a\tb", r"U\+0009"), ("\u200bacme", r"U\+200B"),
                         ("", "must not be empty")):
        with pytest.raises(AdminError, match=reason):
            await store.create_account(name)
    with pytest.raises(AdminError, match="plan must not contain"):
        await store.create_account("acme", plan="pro\x1b")
    assert (await store.create_account("  Café Ünal  ")).name == "Café Ünal"
    for label, reason in (("l" * 101, "at most 100"), ("a\x1b[2J", r"U\+001B"), ("a\u2028b", r"U\+2028")):
        with pytest.raises(AdminError, match=reason):
            await store.create_key("Café Ünal", label=label)
    assert (await store.create_key("Café Ünal", label="l" * 100)).info.label == "l" * 100
    assert await store.list_accounts() == [await store.get_account("Café Ünal")]


async def test_keys_several_per_account_and_lookup(store: Store) -> None:
    await store.create_account("acme")
    await store.create_account("other")
    first = await store.create_key("acme", label="alice")
    second = await store.create_key("acme", label="bob")
    await store.create_key("other")
    assert first.key != second.key
    assert [k.label for k in await store.list_keys("acme")] == ["alice", "bob"]
    assert len(await store.list_keys()) == 3
    assert (await store.find_key(str(first.info.id))).id == first.info.id
    assert (await store.find_key(first.info.prefix)).id == first.info.id
    assert (await store.find_key(first.info.prefix + "…")).id == first.info.id
    assert (await store.find_key(first.key)).id == first.info.id
    with pytest.raises(AdminError, match="no such key"):
        await store.find_key(generate_key())
    with pytest.raises(AdminError, match="neither a key id nor a key prefix"):
        await store.find_key("acme")
    with pytest.raises(AdminError, match="no key with id"):
        await store.find_key("999")
    with pytest.raises(AdminError, match="no account"):
        await store.create_key("nope")
    with pytest.raises(AdminError, match="not in the future"):
        await store.create_key("acme", expires_at=datetime(2000, 1, 1, tzinfo=timezone.utc))


async def test_ambiguous_prefix_is_refused(store: Store) -> None:
    await store.create_account("acme")
    by_first_char: dict[str, int] = {}
    # 63 keys guarantee two share the first character after "privat_".
    while True:
        created = await store.create_key("acme")
        char = created.info.prefix[7]
        if char in by_first_char:
            break
        by_first_char[char] = created.info.id
    with pytest.raises(AdminError, match="matches several keys"):
        await store.find_key("privat_" + char)
    assert (await store.find_key(created.info.prefix)).id == created.info.id


async def test_revoke(store: Store) -> None:
    await store.create_account("acme")
    created = await store.create_key("acme")
    revoked = await store.revoke_key(created.info.prefix)
    assert revoked.status == "revoked" and revoked.revoked_at is not None
    with pytest.raises(AdminError, match="already revoked"):
        await store.revoke_key(str(created.info.id))


# ---------------------------------------------------------------------- authentication


async def test_auth_matrix(store: Store) -> None:
    await store.create_account("acme", plan="pro")
    await store.create_account("frozen")
    good = await store.create_key("acme")
    revoked = await store.create_key("acme")
    await store.revoke_key(revoked.info.prefix)
    suspended = await store.create_key("frozen")
    await store.set_account_status("frozen", "suspended")

    principal = await store.authenticate(good.key)
    assert principal == Principal(good.info.id, good.info.prefix, good.info.account_id, "acme", "pro")

    for bad in (None, "", "privat_short", "sk-" + "a" * 48, good.key + "x", good.key[:-1],
                generate_key(), revoked.key):
        with pytest.raises(AuthenticationFailed) as failed:
            await store.authenticate(bad)
        assert failed.value.status == 401
        assert failed.value.code == "invalid_api_key"
        assert good.key[7:] not in failed.value.message

    with pytest.raises(PermissionDenied, match="suspended") as denied:
        await store.authenticate(suspended.key)
    assert denied.value.status == 403

    await store.set_account_status("frozen", "active")
    assert (await store.authenticate(suspended.key)).account_name == "frozen"


async def test_expiry_applies_even_to_a_cached_key(target: Target) -> None:
    store = await target.open(cache_ttl=60)
    try:
        await store.create_account("acme")
        # Stored to the second, so this expires 1 to 2 s from now.
        created = await store.create_key(
            "acme", expires_at=datetime.now(timezone.utc) + timedelta(seconds=2))
        assert created.info.status == "active"
        await store.authenticate(created.key)
        await asyncio.sleep(2.1)  # past the expiry; the cache entry is still live
        with pytest.raises(AuthenticationFailed, match="expired"):
            await store.authenticate(created.key)
        assert (await store.find_key(created.key)).status == "expired"
    finally:
        await store.close()


async def test_revocation_by_another_process_applies_within_ttl(target: Target) -> None:
    server = await target.open(cache_ttl=1.0)
    admin = await target.open()  # a second connection, as the CLI would have
    try:
        await admin.create_account("acme")
        created = await admin.create_key("acme")
        await server.authenticate(created.key)
        await admin.revoke_key(created.info.prefix)
        # Within the TTL the cached principal still serves: no database on the hot path.
        await server.authenticate(created.key)
        await asyncio.sleep(1.1)
        with pytest.raises(AuthenticationFailed, match="revoked"):
            await server.authenticate(created.key)
    finally:
        await admin.close()
        await server.close()


async def test_unknown_keys_are_cached_apart_and_bounded(target: Target) -> None:
    store = await target.open(cache_size=3)
    try:
        await store.create_account("acme")
        created = await store.create_key("acme")
        await store.authenticate(created.key)
        for _ in range(20):
            with pytest.raises(AuthenticationFailed):
                await store.authenticate(generate_key())
        assert len(store._auth.unknown._entries) == 3
        # The flood did not evict the real key.
        assert len(store._auth.known._entries) == 1
    finally:
        await store.close()


async def test_requests_missing_the_cache_together_share_one_lookup(target: Target) -> None:
    # Every request of a busy key misses at once when its entry expires; one
    # query must answer them all, and a request that leaves must not cancel
    # the lookup the others wait for.
    store = await target.open(cache_ttl=60)
    queries: list[str] = []

    def count(conn: object, cursor: object, statement: str, *args: object) -> None:
        if "api_keys" in statement:
            queries.append(statement)

    try:
        await store.create_account("acme")
        created = await store.create_key("acme")
        sqlalchemy.event.listen(store._db.engine.sync_engine, "before_cursor_execute", count)
        leaving = asyncio.ensure_future(store.authenticate(created.key))
        waiting = [asyncio.ensure_future(store.authenticate(created.key)) for _ in range(16)]
        await asyncio.sleep(0)
        leaving.cancel()
        principals = await asyncio.gather(*waiting)
        assert {p.account_name for p in principals} == {"acme"}
        assert len(queries) == 1
        unknown = generate_key()
        refused = await asyncio.gather(*(store.authenticate(unknown) for _ in range(4)), return_exceptions=True)
        assert all(isinstance(outcome, AuthenticationFailed) for outcome in refused)
        assert len(queries) == 2  # an unknown key, looked up once for all its requests
    finally:
        sqlalchemy.event.remove(store._db.engine.sync_engine, "before_cursor_execute", count)
        await store.close()
