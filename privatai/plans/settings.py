"""The ``plans:`` section of backends.yaml (the product's own offer as its
default), the ``reserved_for`` of dedicated backends, and the checks of
plans that need the whole file (models and reservations against the backends).

Imported by :mod:`privatai.config`, so it imports nothing of PrivatAI's but
the error type and the shared value types.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Literal, Union

import msgspec

from privatai.config_types import PositiveInt, Text
from privatai.errors import ConfigError

if TYPE_CHECKING:
    from privatai.config import Config


_PLAN_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")


class PlanConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # The plan's identifier (accounts' --plan); lower case, it goes into URLs later.
    name: str
    price: Text                          # display price, as written: "29 €", "Individuell"
    title: Text | None = None            # shown on the pricing page; defaults to name
    price_note: Text = ""                # beside the price: "pro Monat"
    description: Text = ""
    features: list[Text] = []
    highlight: bool = False              # the plan the pricing page puts forward
    contact: bool = False                # "Kontakt aufnehmen" instead of "Registrieren"
    # What the plan means on the API (privatai.plans): the models its keys may
    # use ("public": every model a backend without reserved_for serves; the
    # models of backends reserved for the plan or the account come on top),
    # people per account (None: as agreed per contract), and optional limits.
    models: Union[Literal["public"], list[str]] = "public"
    seats: PositiveInt | None = None
    monthly_tokens: PositiveInt | None = None       # per account and UTC calendar month
    requests_per_minute: PositiveInt | None = None  # per key
    tokens_per_minute: PositiveInt | None = None    # per key


def default_plans() -> list[PlanConfig]:
    """The product's own offer (the seed pages): Pro and Enterprise. The seed
    names no price for Pro, so it is "on request" until the operator sets one."""
    return [
        PlanConfig(
            name="pro", title="Pro", price={"de": "Auf Anfrage", "en": "On request"},
            description={"de": "Die volle API für Entwickler und Teams.",
                         "en": "The full API for developers and teams."},
            features=[
                {"de": "Unbegrenzte API-Anfragen, nur durch die Serverkapazität begrenzt",
                 "en": "Unlimited API requests, limited only by server capacity"},
                {"de": "Streaming API: Token für Token", "en": "Streaming API: token by token"},
                {"de": "OpenAI-kompatibel: nur die Basis-URL austauschen",
                 "en": "OpenAI-compatible: change only the base URL"},
                {"de": "Gehostet in Deutschland", "en": "Hosted in Germany"},
                {"de": "Keine Logs: Ihre Prompts werden nicht gespeichert",
                 "en": "No logs: your prompts are never stored"},
            ],
            highlight=True, seats=1),
        PlanConfig(
            name="enterprise", title="Enterprise", price={"de": "Individuell", "en": "Custom"},
            description={"de": "Maßgeschneiderte Lösungen für Ihr Unternehmen.",
                         "en": "Tailored solutions for your company."},
            features=[
                {"de": "Alles aus Pro", "en": "Everything in Pro"},
                {"de": "Mehrere Plätze / Team-Zugang", "en": "Several seats / team access"},
                {"de": "Dedizierte Infrastruktur", "en": "Dedicated infrastructure"},
                {"de": "Individuelle Modell-Anpassung", "en": "Custom models"},
                {"de": "Prioritäts-Support", "en": "Priority support"},
            ],
            models="public", seats=None, contact=True),
    ]


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


def check_plans(config: Config) -> set[str]:
    """Plan names are unique identifiers, reservations name known plans, a
    plan's models are served to it somewhere. Returns the plans' names."""
    plan_names: set[str] = set()
    for i, plan in enumerate(config.plans):
        if not _PLAN_NAME.fullmatch(plan.name):
            raise ConfigError(config.source, f"plans[{i}].name",
                              "must be lower case letters, digits, '-' or '_' (it identifies the plan)")
        if plan.name in plan_names:
            raise ConfigError(config.source, f"plans[{i}].name", f"duplicate plan name {plan.name!r}")
        plan_names.add(plan.name)
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
        return plan_names  # the models are known only once the backends list them
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
    return plan_names
