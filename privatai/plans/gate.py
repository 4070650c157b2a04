"""What a plan means on the request path: one check per request, cheap.

:class:`PlanGate` answers three questions for an authenticated key (its
account's status was checked by authentication, privatai.plans.status):
which models it may see and use, and whether this request fits its plan's
per-key rates and its account's monthly quota. A plan without limits costs
a dictionary lookup and a scan of the model's backends, nothing more: the
prompt is counted only when a quota or a token rate needs the estimate.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import date
from typing import TYPE_CHECKING, Any, Callable, Coroutine, TypeVar

from privatai.config import Config, PlanConfig
from privatai.core import tokens
from privatai.core.events import Usage
from privatai.core.protocol import ChatRequest
from privatai.errors import ModelNotFound, PermissionDenied
from privatai.limits.keyrate import KeyLimits, KeyRates, LocalKeyRates, RateView
from privatai.limits.shared import detached
from privatai.plans.quota import Hold, LoadMonth, QuotaLedger, Quotas
from privatai.plans.status import dashboard_hint

T = TypeVar("T")

if TYPE_CHECKING:
    from privatai.core.routing import Router, Tenant
    from privatai.store.database import Store
    from privatai.store.recorder import UsageRecorder
    from privatai.store.records import Principal


def dashboard_url(config: Config) -> str | None:
    """Where an account's owner acts on a refusal: the portal's dashboard, when its address is known."""
    public_url = config.portal.public_url
    return f"{public_url.rstrip('/')}/dashboard" if public_url else None


def month_loader(store: Store, recorder: UsageRecorder) -> LoadMonth:
    """A month's tokens of an account as ``/usage`` reports them (the recorder flushed first)."""
    async def load(account_id: int, start: date) -> int:
        await recorder.flush()
        return int((await store.usage_for_account(account_id, since=start))["tokens_used"])
    return load


def tenant(principal: Principal) -> Tenant:
    """What routing needs to know of a key: its plan and account (for reserved backends)."""
    return (principal.plan, principal.account_name)


@dataclass(slots=True)
class Admission:
    """What one admitted request took; :meth:`PlanGate.settle` gives it back once."""

    principal: Principal
    limits: KeyLimits
    reserved: int = 0
    hold: Hold | None = None
    headers: dict[str, str] = field(default_factory=dict)
    settled: bool = False


class PlanGate:
    def __init__(self, config: Config, load_month: LoadMonth, rates: KeyRates | None = None,
                 quotas: Quotas | None = None) -> None:
        self.rates: KeyRates = rates or LocalKeyRates()
        # In-memory buckets and ledgers never suspend to give back, so a
        # cancelled request cannot stop them half-way: they skip the task a
        # shared store's calls run in.
        self._shared = not isinstance(self.rates, LocalKeyRates)
        self.quota: Quotas = quotas or QuotaLedger(load_month)
        self._shared_quota = not isinstance(self.quota, QuotaLedger)
        self.reconfigure(config)

    def reconfigure(self, config: Config) -> None:
        """Take the plans of a (re)loaded configuration; counters and ledgers stay."""
        self._plans = {plan.name: plan for plan in config.plans}
        self._limits = {plan.name: KeyLimits(plan.requests_per_minute, plan.tokens_per_minute)
                        for plan in config.plans}
        self.dashboard = dashboard_url(config)

    def plan(self, principal: Principal) -> PlanConfig:
        """The key's plan, or 403 ``plan_unknown``: an account whose plan the
        configuration no longer offers is refused rather than served unlimited."""
        plan = self._plans.get(principal.plan)
        if plan is None:
            raise PermissionDenied(f"This API key's account is on the plan '{principal.plan}', which this "
                                   f"server does not offer.{dashboard_hint(self.dashboard)}", code="plan_unknown")
        return plan

    # ------------------------------------------------------------------ models

    def _allowed(self, plan: PlanConfig, model: str, router: Router, who: Tenant) -> bool | None:
        """True: may use; False: served, but not in the plan; None: not served to this key at all."""
        serving = router.candidates(model, who)
        if not serving:
            return None
        if plan.models == "public" or model in plan.models:
            return True
        # A backend reserved for the key's plan or account serves it: its own model.
        return any(backend.reserved is not None for backend in serving)

    def check_model(self, principal: Principal, model: str, router: Router) -> None:
        allowed = self._allowed(self.plan(principal), model, router, tenant(principal))
        if allowed is None:
            # Models of backends reserved for others do not exist for this key.
            raise ModelNotFound(f"The model '{model}' does not exist or is not served here.", param="model")
        if not allowed:
            raise PermissionDenied(f"The model '{model}' is not included in this API key's plan "
                                   f"'{principal.plan}'.{dashboard_hint(self.dashboard)}",
                                   param="model", code="plan_model_not_allowed")

    def visible_models(self, principal: Principal, router: Router) -> list[str]:
        """What ``GET /models`` lists for this key: only what it may use."""
        plan, who = self.plan(principal), tenant(principal)
        return [model for model in router.models() if self._allowed(plan, model, router, who)]

    # ------------------------------------------------------------------ admission

    async def admit(self, principal: Principal, model: str, router: Router,
                    chat: ChatRequest | None) -> Admission:
        """Check the model, then take the request's share of the key's rates and
        the account's quota: 403 or 429 when it does not fit, and then nothing is taken."""
        self.check_model(principal, model, router)
        plan = self._plans[principal.plan]
        limits = self._limits[principal.plan]
        admission = Admission(principal, limits)
        if not limits and plan.monthly_tokens is None:
            return admission
        admission.reserved = await _estimate(chat) if chat is not None else 0
        if limits:
            admission.headers = (await self._acquire(principal.key_id, limits, admission.reserved)).headers()
        if plan.monthly_tokens is not None:
            try:
                admission.hold = await self._reserve(principal.account_id, plan.monthly_tokens,
                                                     admission.reserved)
            except BaseException:
                if limits:
                    await self._finish(self.rates.cancel(principal.key_id, limits, admission.reserved),
                                       self._shared)
                raise
        return admission

    async def _reserve(self, account_id: int, quota: int, tokens: int) -> Hold:
        return await _taken(self.quota.reserve(account_id, quota, tokens, self.dashboard), self._shared_quota,
                            lambda hold: self.quota.settle(account_id, hold, tokens, 0))

    async def _acquire(self, key_id: int, limits: KeyLimits, tokens: int) -> RateView:
        return await _taken(self.rates.acquire(key_id, limits, tokens), self._shared,
                            lambda _view: self.rates.cancel(key_id, limits, tokens))

    async def _finish(self, call: Coroutine[Any, Any, None], shared: bool) -> None:
        """Run a give-back to its end even when the request is being cancelled
        (settle runs in a ``finally``, often just as the client disconnects)."""
        if not shared:
            await call
        else:
            await asyncio.shield(detached(call))

    async def settle(self, admission: Admission, usage: Usage | None) -> None:
        """The request ended: its real usage (None: it used nothing) replaces the reservation."""
        if admission.settled:
            return
        admission.settled = True
        used = usage.prompt_tokens + usage.completion_tokens if usage is not None else 0
        principal = admission.principal
        if admission.hold is not None:
            await self._finish(self.quota.settle(principal.account_id, admission.hold, admission.reserved, used),
                               self._shared_quota)
        if admission.limits:
            await self._finish(self.rates.settle(principal.key_id, admission.limits, admission.reserved, used),
                               self._shared)



async def _estimate(chat: ChatRequest) -> int:
    """Prompt tokens as metering counts them, plus the output limit the request sets."""
    fixed, texts = tokens.prompt_texts(chat)
    return fixed + sum(await tokens.count_many(texts)) + (chat.max_output_tokens or 0)


async def _taken(call: Coroutine[Any, Any, T], shared: bool, undo: Callable[[T], Coroutine[Any, Any, None]]) -> T:
    """What ``call`` takes from a limit. In a shared store the decision may
    still be under way when the client leaves: it is let finish, and what it
    took is given back by ``undo`` (in-memory limits never suspend)."""
    if not shared:
        return await call
    asking = asyncio.ensure_future(call)
    try:
        return await asyncio.shield(asking)
    except asyncio.CancelledError:
        def give_back(done: asyncio.Future[T]) -> None:
            if not done.cancelled() and done.exception() is None:
                detached(undo(done.result()))
        asking.add_done_callback(give_back)
        raise
