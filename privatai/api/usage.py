"""GET /usage: the calling key's token usage, as the product documents it."""
from __future__ import annotations

from datetime import date

from sanic import Request
from sanic.response import HTTPResponse, json

from privatai.errors import InvalidRequest
from privatai.state import AppState

_TRUE = ("1", "true", "yes")


def _day(request: Request, name: str) -> date | None:
    value = request.args.get(name)
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise InvalidRequest(f"'{name}' must be a date like 2025-12-31.", param=name) from None


async def usage(request: Request) -> HTTPResponse:
    """``?since=&until=`` (UTC days, inclusive), ``by_model=true`` for a per-model
    breakdown, ``scope=account`` for the totals of every key of the account."""
    state: AppState = request.app.ctx.state
    principal = request.ctx.principal
    since, until = _day(request, "since"), _day(request, "until")
    if since and until and since > until:
        raise InvalidRequest("'since' is after 'until'.", param="since")
    by_model = request.args.get("by_model", "").lower() in _TRUE
    scope = request.args.get("scope", "key")
    if scope not in ("key", "account"):
        raise InvalidRequest("'scope' must be 'key' or 'account'.", param="scope")
    # Usage recorded before this request may still be in memory: write it first.
    await state.recorder.flush()
    if scope == "account":
        body = await state.store.usage_for_account(principal.account_id, since, until, by_model)
    else:
        body = await state.store.usage_for_key(principal.key_id, since, until, by_model)
    return json(body)
