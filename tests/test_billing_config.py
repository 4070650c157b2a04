"""The billing section: refused mistakes name their key, secrets only from the
environment, and billing.mode none (the default) adds nothing to the gateway."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from privatai.config import parse_config
from privatai.errors import ConfigError
from privatai.ops.startup import StartupFailed
from tests.gateway import LocalGateway
from tests.scripted import ScriptedBackends

BACKENDS = [{"name": "b", "kind": "llamacpp", "url": "http://127.0.0.1:9", "models": ["m"]}]
STRIPE = {"mode": "stripe", "plans": {"pro": {"price": "price_123"}}}


def config_with(billing: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"backends": BACKENDS, "portal": {"public_url": "https://api.example.de"}, "billing": billing, **extra}


@pytest.mark.parametrize("data, path, reason", [
    ({"backends": BACKENDS, "billing": STRIPE}, "portal.public_url", "required with billing.mode stripe"),
    (config_with({"mode": "stripe"}), "billing.plans", "at least one plan"),
    (config_with({"mode": "stripe", "plans": {"gold": {"price": "price_1"}}}), "billing.plans.gold",
     "not a plan"),
    (config_with({"mode": "stripe", "plans": {"pro": {"price": "29"}}}), "billing.plans.pro.price",
     "Stripe price id"),
    (config_with({"mode": "stripe", "plans": {"pro": {"price": "price_1"}, "enterprise": {"price": "price_1"}}}),
     "billing.plans", "same price"),
    (config_with({**STRIPE, "secret_key": "sk_live_x"}), "billing.secret_key", "unknown field"),
    (config_with({**STRIPE, "mode": "paypal"}), "billing.mode", "Invalid enum value"),
    (config_with({**STRIPE, "grace_days": -1}), "billing.grace_days", ">= 0"),
])
def test_mistakes_name_their_key(data: dict[str, Any], path: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(data, "backends.yaml")
    assert info.value.path == path
    assert reason in info.value.reason


def test_the_default_is_operator_managed() -> None:
    config = parse_config({"backends": BACKENDS})
    assert config.billing.mode == "none"
    assert parse_config(config_with(STRIPE)).billing.plan_of_price("price_123") == "pro"


async def test_mode_none_has_no_webhook(tmp_path: Path, scripted: ScriptedBackends) -> None:
    backend = scripted.backend("e")
    async with LocalGateway(tmp_path, {"backends": [backend.entry("m")]}) as gateway:
        assert gateway.app is not None and gateway.app.ctx.state.billing is None
        async with httpx.AsyncClient() as http:
            response = await http.post(f"{gateway.url}/billing/webhook", content=b"{}")
        assert response.status_code == 404


async def test_a_missing_secret_stops_the_start_in_one_line(tmp_path: Path, scripted: ScriptedBackends,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STRIPE_SECRET_KEY", raising=False)
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", "whsec_x")
    backend = scripted.backend("e")
    gateway = LocalGateway(tmp_path, config_with(STRIPE, backends=[backend.entry("m")]))
    with pytest.raises(StartupFailed) as info:
        await gateway.start()
    assert str(info.value) == ("billing: the environment variable STRIPE_SECRET_KEY "
                               "(billing.secret_key_env) is not set")
