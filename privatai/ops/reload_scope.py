"""What a reload (SIGHUP, `privatai reload`) can change, and what waits for a restart.

Backends, routing, plans, web-chat limits, the portal's texts and account
settings are read from the running configuration on every request, so a
reload changes them at once. The settings below are used once, when the
server starts: the socket, worker processes, the database, logging, routes
that exist or not (metrics, web chat, portal, accounts, billing), Redis.
A reload keeps their running values, so that the configuration the server
holds is the one it runs, and names the ones the file changed: an operator
who edits one of them and reloads learns that it needs a restart, instead of
reading "configuration reloaded" and seeing nothing change.
"""
from __future__ import annotations

from typing import Any

import msgspec

from privatai.config import Config

# Section -> its start-only fields (None: the whole section).
START_ONLY: dict[str, tuple[str, ...] | None] = {
    "server": ("workers", "max_body_bytes", "response_timeout", "grace_period", "cors_origins"),
    "store": None,
    "logging": ("level", "format", "third_party_level"),
    "metrics": None,
    "state": None,
    "billing": None,
    "portal": ("enabled",),
    "web_chat": ("enabled",),
    "accounts": ("enabled",),
}


def _plain(value: Any) -> Any:
    return msgspec.to_builtins(value)


def keep_start_only(running: Config, loaded: Config) -> list[str]:
    """Put the running values of start-only settings into ``loaded``; return
    the names (``section.field``) the file changed, sorted."""
    # The listening address too, but unnamed: `serve --host/--port` may have
    # set it, so the file's value says nothing about a change.
    loaded.server.host, loaded.server.port = running.server.host, running.server.port
    changed: list[str] = []
    for section, fields in START_ONLY.items():
        old, new = getattr(running, section), getattr(loaded, section)
        for name in fields or [field.name for field in msgspec.structs.fields(old)]:
            if _plain(getattr(old, name)) != _plain(getattr(new, name)):
                changed.append(f"{section}.{name}")
            setattr(new, name, getattr(old, name))
    return sorted(changed)
