"""A key revoked or an account suspended by another process is refused as soon
as this process's ChangeWatcher has seen the change counter move, not when
its authentication cache entry happens to expire."""
from __future__ import annotations

from pathlib import Path

import pytest

from privatai.errors import AuthenticationFailed, PermissionDenied
from privatai.store.changes import ChangeWatcher
from privatai.store.database import Store


async def test_a_change_elsewhere_clears_the_cache_at_the_next_poll(tmp_path: Path) -> None:
    path = str(tmp_path / "privatai.db")
    server = await Store.open(path, cache_ttl=3600)  # a cache that alone would never notice
    admin = await Store.open(path)  # the CLI, another worker or instance
    try:
        await admin.create_account("acme")
        key = (await admin.create_key("acme")).key
        other = (await admin.create_key("acme")).key
        watcher = ChangeWatcher(server.database, server.forget_authentications)
        await watcher.check()
        assert (await server.authenticate(key)).account_name == "acme"
        await server.authenticate(other)

        await admin.revoke_key(key[:12])
        assert (await server.authenticate(key)).account_name == "acme"  # cached: still honoured
        await watcher.check()
        with pytest.raises(AuthenticationFailed, match="revoked"):
            await server.authenticate(key)

        await server.authenticate(other)
        await admin.set_account_status("acme", "suspended")
        await watcher.check()
        with pytest.raises(PermissionDenied):
            await server.authenticate(other)

    finally:
        await server.close()
        await admin.close()


async def test_nothing_changed_keeps_the_cache(tmp_path: Path) -> None:
    path = str(tmp_path / "privatai.db")
    server = await Store.open(path, cache_ttl=3600)
    try:
        await server.create_account("acme")
        key = (await server.create_key("acme")).key
        cleared: list[bool] = []
        watcher = ChangeWatcher(server.database, lambda: cleared.append(True))
        await watcher.check()
        await server.authenticate(key)
        await watcher.check()
        await watcher.check()
        assert cleared == []
    finally:
        await server.close()
