"""A reload applies what the server reads per request and names what waits
for a restart, keeping its running value (privatai.ops.reload_scope).

Before, a reload that changed e.g. ``logging.level`` or ``web_chat.enabled``
logged "configuration reloaded" and nothing happened; the running
configuration then claimed settings the server did not run with.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, AsyncIterator

import httpx
import pytest
import yaml

from tests.billing_helpers import billed_gateway
from tests.gateway import LocalGateway
from tests.scripted import ScriptedBackend, ScriptedBackends

MODEL = "smollm2-135m"
WARNING = "but applied only at the next restart: "


@pytest.fixture
def backend(scripted: ScriptedBackends) -> ScriptedBackend:
    return scripted.backend("embedded")


@pytest.fixture
async def gateway(tmp_path: Path, backend: ScriptedBackend) -> AsyncIterator[LocalGateway]:
    config = {"default_model": MODEL, "backends": [backend.entry(MODEL)], "portal": {"enabled": False},
              "logging": {"level": "INFO"}}
    async with LocalGateway(tmp_path, config) as gw:
        yield gw


def rewrite(gateway: LocalGateway, change: Any) -> None:
    config = yaml.safe_load(gateway.config_path.read_text())
    change(config)
    gateway.config_path.write_text(yaml.safe_dump(config))


async def models(gateway: LocalGateway, key: str) -> list[str]:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
        response = await http.get("/api/v1/models", headers={"Authorization": f"Bearer {key}"})
    return [model["id"] for model in response.json()["data"]]


async def test_restart_only_changes_are_named_and_kept_live_ones_applied(
        gateway: LocalGateway, backend: ScriptedBackend, caplog: pytest.LogCaptureFixture) -> None:
    key = await gateway.key()
    assert gateway.app is not None
    state = gateway.app.ctx.state

    def change(config: dict[str, Any]) -> None:
        config["backends"] = [backend.entry(MODEL, "second-model")]  # live
        config["routing"] = {"max_attempts": 1}                      # live
        config["logging"] = {"level": "DEBUG"}                       # at start
        config["store"]["flush_interval"] = 7.5                      # at start
        config["web_chat"] = {"enabled": False}                      # at start (its routes)
        config["server"]["workers"] = 2                              # at start

    rewrite(gateway, change)
    with caplog.at_level(logging.INFO, logger="privatai.state"):
        assert await state.reload()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"changed in {gateway.config_path} {WARNING}"
                        "logging.level, server.workers, store.flush_interval, web_chat.enabled"]

    assert await models(gateway, key) == [MODEL, "second-model"]
    assert state.config.routing.max_attempts == 1
    # What runs is what the running configuration says.
    assert (state.config.logging.level, state.config.store.flush_interval, state.config.web_chat.enabled,
            state.config.server.workers) == ("INFO", 1.0, True, 1)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
        assert (await http.get("/webchat")).status_code == 200


async def test_a_reload_of_live_settings_only_warns_of_nothing(
        gateway: LocalGateway, backend: ScriptedBackend, caplog: pytest.LogCaptureFixture) -> None:
    assert gateway.app is not None
    rewrite(gateway, lambda config: config.update(web_chat={"requests_per_minute": 3}))
    with caplog.at_level(logging.INFO, logger="privatai.state"):
        assert await gateway.app.ctx.state.reload()
    assert [r.levelno for r in caplog.records] == [logging.INFO]
    assert gateway.app.ctx.state.config.web_chat.requests_per_minute == 3


async def test_a_valid_file_that_clashes_with_the_kept_billing_is_refused_whole(
        tmp_path: Path, backend: ScriptedBackend, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    async with billed_gateway(tmp_path, backend, monkeypatch) as (gateway, _fake):
        assert gateway.app is not None
        state = gateway.app.ctx.state

        def drop_tokens_plan(config: dict[str, Any]) -> None:
            # Valid on its own: the plan and its price both go. But billing
            # waits for a restart, and the running one still sells it.
            config["plans"] = [plan for plan in config["plans"] if plan["name"] != "tokens"]
            del config["billing"]["plans"]["tokens"]
            config["routing"] = {"max_attempts": 1}

        rewrite(gateway, drop_tokens_plan)
        with caplog.at_level(logging.INFO, logger="privatai.state"):
            assert not await state.reload()
        assert [r.getMessage() for r in caplog.records] == [
            f"reload refused, keeping the running configuration: {gateway.config_path}: billing.plans.tokens: "
            "'tokens' is not a plan in 'plans', with the running values of what applies only at the next "
            "restart (billing.plans)"]
        assert [plan.name for plan in state.config.plans] == ["pro", "tokens", "enterprise"]
        assert state.config.routing.max_attempts != 1
