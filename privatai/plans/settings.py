"""The configuration types of dedicated backends, and the checks of ``plans:``
that need the whole file (models and reservations against the backends).

Imported by :mod:`privatai.config`, so it imports nothing of PrivatAI's but
the error type.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from privatai.errors import ConfigError

if TYPE_CHECKING:
    from privatai.config import Config


class ReservedFor(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A backend's ``reserved_for``: the plans and accounts whose keys alone reach it."""

    plans: list[str] = []
    # Account names as `privatai accounts create` made them (compared whatever their case).
    accounts: list[str] = []
    # When every reserved backend of a model is full or failing, may its
    # accounts go on to the shared backends? Off: dedicated means dedicated.
    spill_over: bool = False

    def admits(self, plan: str, account: str) -> bool:
        return plan in self.plans or account.casefold() in {a.casefold() for a in self.accounts}

    def describe(self) -> str:
        """One line for `privatai check` and the metrics label."""
        parts = [f"plan {p}" for p in self.plans] + [f"account {a}" for a in self.accounts]
        return ", ".join(parts) + (" (spill-over)" if self.spill_over else "")


def check_plans(config: Config) -> None:
    """Reservations name known plans; a plan's models are served to it somewhere."""
    plan_names = {plan.name for plan in config.plans}
    for i, backend in enumerate(config.backends):
        reserved = backend.reserved_for
        if reserved is None:
            continue
        where = f"backends[{i}].reserved_for"
        if not reserved.plans and not reserved.accounts:
            raise ConfigError(config.source, where, "name at least one plan or account (or remove it)")
        for j, plan in enumerate(reserved.plans):
            if plan not in plan_names:
                raise ConfigError(config.source, f"{where}.plans[{j}]", f"no plan named {plan!r} in plans")
    if any(b.discover_models for b in config.backends):
        return  # the models are known only once the backends list them
    for i, plan in enumerate(config.plans):
        if plan.models == "public":
            continue
        reachable = {name for b in config.backends
                     if b.reserved_for is None or plan.name in b.reserved_for.plans
                     or b.reserved_for.accounts for name in b.model_map()}
        for j, model in enumerate(plan.models):
            if model not in reachable:
                raise ConfigError(config.source, f"plans[{i}].models[{j}]",
                                  f"{model!r} is not served by any backend this plan's keys may reach")
