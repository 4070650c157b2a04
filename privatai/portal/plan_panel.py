"""The dashboard's plan section, open to billing: what else it shows.

The dashboard shows an account's plan and status itself; a billing module
(Stripe) adds its buttons by registering a panel::

    from privatai.portal.plan_panel import PlanView, register_plan_panel

    def stripe_buttons(view: PlanView) -> Markup | None:
        if not view.can_manage:
            return None
        return Markup('<form method="post" action="...">'
                      f'<input type="hidden" name="csrf" value="{view.csrf}">...</form>')

    register_plan_panel(stripe_buttons)

A panel gets the account, the person's role, the plan's configuration, the
page's language and the CSRF token its forms must carry, and returns markup
(escape whatever it puts in) or None. Panels run in the order registered.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from markupsafe import Markup

from privatai.config import PlanConfig
from privatai.config_types import Language
from privatai.state import AppState
from privatai.store.records import Account


@dataclass(frozen=True, slots=True)
class PlanView:
    account: Account
    role: str                 # owner | admin | member
    plan: PlanConfig | None   # None: the account's plan is no longer configured
    lang: Language
    csrf: str                 # the value for a form's hidden "csrf" field
    state: AppState

    @property
    def can_manage(self) -> bool:
        return self.role in ("owner", "admin")


Panel = Callable[[PlanView], Markup | None]
_panels: list[Panel] = []


def register_plan_panel(panel: Panel) -> None:
    if panel not in _panels:
        _panels.append(panel)


def plan_panels(view: PlanView) -> list[Markup]:
    """The extra markup of every registered panel for this account."""
    return [markup for panel in _panels if (markup := panel(view)) is not None]
