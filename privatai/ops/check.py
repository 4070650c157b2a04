"""`privatai check`: start, probe and list the models of every configured backend,
and check that the database path can be written.
Spill files of usage not yet written (:mod:`privatai.store.spill`) are a
warning line, not a failure.

It prints one row per model and backend, then a line for the store. A failure
shows the error's class and status only (:func:`privatai.ops.logs.describe_error`):
upstream error text can echo a prompt, and this output ends up in terminals,
CI logs and tickets.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from privatai.adapters import create_adapter
from privatai.config import BackendConfig, Config
from privatai.ops.logs import describe_error
from privatai.ops.preflight import store_problem
from privatai.store.connection import Database, Queries, reason
from privatai.store.names import quoted
from privatai.store.schema import accounts
from privatai.store.spill import SpillDir

OK = "ok"
# Ollama lists "llama3.2:latest" for a model pulled and requested as "llama3.2".
_IMPLICIT_TAG = ":latest"


@dataclass(frozen=True, slots=True)
class Row:
    model: str
    backend: str
    kind: str
    status: str
    latency_ms: float | None
    # Who may reach the backend: "shared", or its reserved_for (dedicated infrastructure).
    pool: str = "shared"


def _served(upstream: str, listed: set[str]) -> bool:
    return upstream in listed or upstream + _IMPLICIT_TAG in listed


async def check_backend(config: BackendConfig) -> list[Row]:
    """Rows for one backend: its configured models, then any it lists for discovery."""
    configured = config.model_map()
    latency: float | None = None
    listed: list[str] = []
    error: str | None = None
    try:
        adapter = create_adapter(config)
    except Exception as exc:  # noqa: BLE001 - a missing extra or module is a result, not a crash
        error = describe_error(exc)
    else:
        try:
            await adapter.start()
            started = time.perf_counter()
            await asyncio.wait_for(adapter.probe(), timeout=config.connect_timeout)
            latency = (time.perf_counter() - started) * 1000
            listed = await asyncio.wait_for(adapter.list_models(), timeout=config.connect_timeout)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a row
            error = describe_error(exc)
        finally:
            with contextlib.suppress(Exception):
                await adapter.close()

    pool = config.reserved_for.describe() if config.reserved_for is not None else "shared"

    def row(model: str, status: str) -> Row:
        return Row(model, config.name, config.kind, status, latency, pool)

    if error is not None:
        return [row(model, f"error: {error}") for model in configured] or [row("(discovery)", f"error: {error}")]
    available = set(listed)
    rows = [row(public, OK if _served(upstream, available) else "error: model not listed by backend")
            for public, upstream in configured.items()]
    if config.discover_models:
        known = set(configured.values())
        rows += [row(name, OK) for name in listed if name not in known]
    return rows or [row("(discovery)", "error: backend lists no models")]


async def check_all(config: Config) -> list[Row]:
    # Concurrently: a row of unreachable backends costs one connect_timeout, not one each.
    results = await asyncio.gather(*(check_backend(backend) for backend in config.backends))
    return [row for rows in results for row in rows]


def format_table(rows: list[Row]) -> str:
    header = ("MODEL", "BACKEND", "KIND", "STATUS", "LATENCY", "POOL")
    cells = [header] + [(r.model, r.backend, r.kind, r.status,
                         f"{r.latency_ms:.1f} ms" if r.latency_ms is not None else "-", r.pool) for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
                     for line in cells)


async def plan_problems(config: Config) -> list[str]:
    """Accounts whose plan the configuration does not offer: their keys get 403
    ``plan_unknown`` (refused, not served unlimited), so the operator hears of it here."""
    offered = {plan.name for plan in config.plans}
    store = config.store
    password = os.environ.get(store.password_env) if store.url and store.password_env else None
    # Read only: unlike opening the Store, this neither migrates nor writes.
    db = await Database.connect(store.location, password=password)
    try:
        rows = await Queries(db)._rows(select(accounts.c.name, accounts.c.plan).order_by(accounts.c.name))
    finally:
        await db.close()
    return [f"account {quoted(name)} is on plan {quoted(plan)}, which plans: does not offer "
            "(its keys get 403 plan_unknown)" for name, plan in rows if plan not in offered]


def run_check(config: Config) -> int:
    """Print the table, the store's line and the plans' line; 0 when all are ok, 1 otherwise."""
    rows = asyncio.run(check_all(config))
    # A PostgreSQL store has no file to check here; it is opened at start.
    problem = store_problem(config.store.path) if config.store.url is None else None
    print(format_table(rows), flush=True)
    print(f"\nStore {config.store.location}: {f'error: {problem}' if problem else OK}", flush=True)
    plans: list[str] = []
    if problem is None and (config.store.url is not None or Path(config.store.path).exists()):
        try:
            plans = asyncio.run(plan_problems(config))
        except (SQLAlchemyError, OSError) as exc:
            plans = [f"cannot read the accounts: {reason(exc)}"]
    print(f"Plans {', '.join(p.name for p in config.plans)}: "
          + ("; ".join(f"error: {p}" for p in plans) if plans else OK), flush=True)
    spill = SpillDir.from_config(config.store)
    waiting = spill.waiting() if spill is not None else []
    if spill is not None and waiting:
        # Not an error: the next start writes them (or a running one is). Only
        # a file that stays here means usage not yet billed.
        print(f"Held usage {spill.directory}: warning: {len(waiting)} spill file(s) of usage not yet "
              "written to the database (a start writes them while it is reachable)", flush=True)
    return 0 if problem is None and not plans and all(r.status == OK for r in rows) else 1
