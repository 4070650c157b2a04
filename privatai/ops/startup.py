"""Opening the parts the server cannot run without, before it accepts connections.

The store, the tokenizer and every backend's adapter are opened in Sanic's
``before_server_start``. A failure there stops the start with
:class:`StartupFailed`, which names the part and a content-free reason in one
line; whatever was opened before it is closed again, because an open aiosqlite
connection's thread would keep the process alive after the error (the start
used to hang instead of exiting).

What is required: the store, the tokenizer, and each adapter's ``start()``.
Remote adapters only build their HTTP clients there and never connect, so an
unreachable remote backend is not a start-up failure: health probes mark it
down. An embedded model that does not load is one.
"""
from __future__ import annotations

import asyncio

from privatai.core import tokens
from privatai.core.routing import BackendStartFailed
from privatai.errors import PrivatAIError
from privatai.limits.instances import key_rates, quotas
from privatai.limits.keyrate_sqlite import SqliteKeyRates
from privatai.limits.quota_sqlite import SqliteQuotas
from privatai.ops.logs import describe_error
from privatai.plans.gate import PlanGate, month_loader
from privatai.state import AppState
from privatai.store.database import Store
from privatai.store.recorder import UsageRecorder
from privatai.store.spill import SpillDir


class StartupFailed(Exception):
    """A required part could not be opened: ``part`` and a one-line ``reason``."""

    def __init__(self, part: str, reason: str) -> None:
        super().__init__(f"{part}: {reason}")
        self.part = part
        self.reason = reason


def _reason(exc: BaseException) -> str:
    # Our own errors carry fixed texts ("Model file not found: <path>"); at
    # start-up no request exists whose content they could echo. Any other
    # exception is shown by class only, as everywhere.
    return exc.message if isinstance(exc, PrivatAIError) else describe_error(exc)


async def open_parts(state: AppState) -> None:
    """Open store, tokenizer and backends, or close what opened and raise StartupFailed."""
    config = state.config
    try:
        try:
            state.store = await Store.from_config(config.store, grace=config.state.store_grace_seconds)
        except Exception as exc:
            raise StartupFailed(f"store {config.store.location}", _reason(exc)) from exc
        state.recorder = UsageRecorder.from_config(state.store, config.store, max_rows=config.state.held_usage_rows,
                                                   spill=SpillDir.from_config(config.store))
        # Usage an earlier stop could not write (the database was down): written
        # before serving, or held and retried like any batch in doubt.
        await state.recorder.replay_spilled()
        state.recorder.start()
        load_month = month_loader(state.store, state.recorder)
        state.plans = PlanGate(config, load_month, key_rates(state.redis, state.runtime),
                               quotas(state.redis, state.runtime, load_month))
        state.store.dashboard = state.plans.dashboard
        if state.redis is not None:
            # Not required: while Redis is down the API serves on (per-instance limits).
            await state.redis.start(on_message=state.store.forget_authentications)
        if config.billing.mode == "stripe":
            # Imported only here: stripe-python takes a tenth of a second to import.
            from privatai.billing.service import Billing
            from privatai.billing.stripe_api import BillingNotConfigured
            try:
                state.billing = Billing.from_config(config, state.store)
            except BillingNotConfigured as exc:
                raise StartupFailed("billing", str(exc)) from exc
            state.billing.start()
        try:
            # Now rather than on the first request that needs it.
            await asyncio.to_thread(tokens.encoding)
        except Exception as exc:
            raise StartupFailed("tokenizer", _reason(exc)) from exc
        try:
            await state.router.start()
        except BackendStartFailed as exc:
            cause = exc.__cause__ or exc
            raise StartupFailed(f"backend {exc.backend!r}", _reason(cause)) from exc
    except BaseException:
        await close_parts(state)
        raise


async def close_parts(state: AppState) -> None:
    """Close backends and billing, then flush usage and close the store (which may never have opened)."""
    try:
        await state.router.close()
        if state.redis is not None:
            await state.redis.close()
        if state.billing is not None:
            await state.billing.close()
    finally:
        try:
            if state.recorder is not None:
                await state.recorder.stop()
        finally:
            if state.store is not None:
                await state.store.close()
            if state.plans is not None and isinstance(state.plans.rates, SqliteKeyRates):
                state.plans.rates.close()
            if state.plans is not None and isinstance(state.plans.quota, SqliteQuotas):
                state.plans.quota.close()
