from __future__ import annotations

from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import pytest

from privatai.adapters.base import Adapter
from privatai.core import routing
from privatai.core.routing import Router
from tests.adapter_helpers import API_KEY, API_KEY_ENV, backend_config, started_adapter
from tests.fakes import FAKES, FakeBackend
from tests.gateway import Gateway, embedded_backend
from tests.services import postgresql, redis_server, target  # noqa: F401 - fixtures for the store and state tests
from tests.scripted import ScriptedBackends

KINDS = ["ollama", "llamacpp", "vllm", "openai"]


@pytest.fixture(scope="session")
def embedded_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """One gateway on the real embedded model, shared by the tests that only read."""
    workdir: Path = tmp_path_factory.mktemp("embedded-gateway")
    config = {"default_model": "smollm2-135m", "backends": [embedded_backend()]}
    with Gateway(workdir, config) as gateway:
        yield gateway


@pytest.fixture(scope="session")
def api_key(embedded_gateway: Gateway) -> str:
    """A valid key for the shared gateway."""
    return embedded_gateway.create_key()


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch) -> ScriptedBackends:
    """Scripted backends in process (tests/scripted.py): routers and apps made
    during the test get a ScriptedAdapter for every backend named through
    ``scripted.backend(name)``, and their real adapter for any other."""
    backends = ScriptedBackends(routing.create_adapter)
    monkeypatch.setattr(routing, "create_adapter", backends.create_adapter)
    return backends


@pytest.fixture
async def routers() -> AsyncIterator[list[Router]]:
    """Routers a test started, closed at its end."""
    made: list[Router] = []
    yield made
    for router in made:
        await router.close()


@pytest.fixture(params=KINDS)
async def pair(request: pytest.FixtureRequest,
               monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[FakeBackend, Adapter]]:
    """Each backend kind's fake on a real socket, and a started adapter for it."""
    kind = request.param
    monkeypatch.setenv(API_KEY_ENV, API_KEY)
    fake = FAKES[kind](api_key=API_KEY) if kind == "openai" else FAKES[kind]()
    await fake.start()
    adapter = await started_adapter(backend_config(fake))
    yield fake, adapter
    await adapter.close()
    await fake.stop()


# Debian's chromium, driven by Playwright (its own browser downloads fail
# here); the flags keep it off the network this machine does not have.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium for the web chat tests."""
    if not Path(CHROMIUM).exists():
        pytest.skip("needs Debian's chromium")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()
