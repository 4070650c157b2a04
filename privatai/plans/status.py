"""An account's status, the vocabulary the CLI, the billing code and the
request path share, and the 403 each refused status gets.

``active`` and ``past_due`` (a failed payment, within the grace period) are
served; ``inactive`` (no subscription), ``pending`` (sign-up not completed)
and ``suspended`` (stopped by the operator) are refused with a code that
says why and a message that says where to go.
"""
from __future__ import annotations

from typing import Literal, get_args

from privatai.errors import PermissionDenied

Status = Literal["active", "past_due", "inactive", "pending", "suspended"]
STATUSES: tuple[str, ...] = get_args(Status)
SERVED = frozenset({"active", "past_due"})

_REFUSALS = {
    "inactive": ("subscription_inactive", "This API key's account has no active subscription."),
    "pending": ("account_pending", "This API key's account is not activated yet."),
    "suspended": ("account_suspended", "The account of this API key is suspended."),
}


def dashboard_hint(dashboard: str | None) -> str:
    return f" See {dashboard}." if dashboard else " Contact support."


def refusal(status: str, dashboard: str | None) -> PermissionDenied | None:
    """The 403 for a status that is not served (an unknown word counts as
    suspended: fail closed), None for one that is."""
    if status in SERVED:
        return None
    code, message = _REFUSALS.get(status, _REFUSALS["suspended"])
    if status == "suspended":
        return PermissionDenied(message + " Contact support to reactivate it.", code=code)
    return PermissionDenied(message + dashboard_hint(dashboard), code=code)
