"""/metrics, /healthz and /readyz on the gateway's HTTP API.

The app runs in this process on a real port with a scripted backend named
"embedded" (what the metrics count is the handler's and the router's doing,
not the model's); /healthz and /readyz are also checked on the shared gateway
process on the real embedded model.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from privatai.api.metrics import is_loopback
from privatai.core.events import TextDelta
from tests.gateway import Gateway, LocalGateway, eventually, free_port
from tests.scripted import ScriptedBackend, ScriptedBackends

MODEL = "smollm2-135m"
CHAT = "/v1/chat/completions"
# Sent in prompts, a model id and a path: it must never show up in the metrics.
CANARY = "canary-q7x3-zebra-fjord"
TOKEN = "metrics-test-token-3f9a"
TOKEN_ENV = "PRIVATAI_METRICS_TOKEN"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def scrape(gateway: LocalGateway, token: str | None = None) -> str:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(f"{gateway.url}/metrics", headers=headers)
    assert response.status_code == 200, response.text
    return response.text


async def ready_state(url: str) -> httpx.Response:
    """/readyz once the first probe round is done (it says "starting" before)."""
    async with httpx.AsyncClient(timeout=5) as http:
        async def probed() -> httpx.Response | None:
            response = await http.get(f"{url}/readyz")
            return response if response.json()["status"] != "starting" else None

        return await eventually(probed, 20, "the first probe round")


@pytest.fixture
def embedded(scripted: ScriptedBackends, monkeypatch: pytest.MonkeyPatch) -> ScriptedBackend:
    """The backend "embedded", scripted; no metrics token unless a test sets one."""
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    return scripted.backend("embedded")


@pytest.fixture
async def start_gateway(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    started: list[LocalGateway] = []

    async def start(config: dict[str, object]) -> LocalGateway:
        gateway = await LocalGateway(tmp_path / f"gw{len(started)}", config).start()
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        await gateway.stop()


def server_log(caplog: pytest.LogCaptureFixture) -> str:
    """What the server side logged, with the access lines' fields (in this
    process the test's own client logs too)."""
    return "\n".join(f"{record.getMessage()} {getattr(record, 'fields', '')}" for record in caplog.records
                     if record.name.split(".")[0] in ("privatai", "sanic"))


async def test_metrics_count_exactly_what_was_sent(start_gateway: Callable[..., Any], embedded: ScriptedBackend,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    gateway = await start_gateway({"default_model": MODEL, "backends": [embedded.entry(MODEL)]})
    client = openai.AsyncOpenAI(base_url=gateway.base_url, api_key=await gateway.key(), max_retries=0, timeout=30)
    before = parse(await scrape(gateway))
    prompt = [{"role": "user", "content": f"Say hello to {CANARY}."}]
    for n in range(3):
        embedded.reply(*(TextDelta(f"w{i} ") for i in range(4 + n)), usage=(11 + n, 4 + n))

    usages = []
    for _ in range(2):
        chunks = [c async for c in await client.chat.completions.create(
            model=MODEL, messages=prompt, max_tokens=6, stream=True, stream_options={"include_usage": True})]
        assert chunks[-1].usage is not None
        usages.append(chunks[-1].usage)
    usages.append((await client.chat.completions.create(model=MODEL, messages=prompt, max_tokens=6)).usage)
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(model=f"no-such-model-{CANARY}", messages=prompt, max_tokens=6)
    # Longer than n_ctx: the backend rejects it before the first token, so a
    # streamed request still gets a plain 400, and must still be counted.
    embedded.fail(400, "the request exceeds the available context size", error_type="exceed_context_size_error")
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(model=MODEL, stream=True, max_tokens=6,
                                             messages=[{"role": "user", "content": f"{CANARY} " * 3000}])
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve(CANARY)

    ok = dict(route=CHAT, status="200", model=MODEL, backend="embedded")

    # A stream's access line (and its metrics) is written once the backend
    # has let go of the request, a moment after the client saw [DONE].
    async def all_counted() -> bool:
        counted = parse(await scrape(gateway))
        return value(counted, "privatai_requests_total", **ok) - value(before, "privatai_requests_total", **ok) >= 3

    await eventually(all_counted, 20, "three answered requests counted")
    text = await scrape(gateway)
    after = parse(text)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("privatai_requests_total", **ok) == 3
    assert delta("privatai_requests_total", route=CHAT, status="404", model="", backend="") == 1
    assert delta("privatai_requests_total", route=CHAT, status="400", model=MODEL, backend="embedded") == 1
    assert delta("privatai_requests_total", route="/v1/models/<model_id:path>", status="404",
                 model="", backend="") == 1
    assert delta("privatai_tokens_total", model=MODEL, direction="in") == sum(u.prompt_tokens for u in usages)
    assert delta("privatai_tokens_total", model=MODEL, direction="out") == sum(u.completion_tokens for u in usages)
    assert sum(u.completion_tokens for u in usages) == 4 + 5 + 6
    assert delta("privatai_time_to_first_token_seconds_count", model=MODEL, backend="embedded") == 2
    assert delta("privatai_request_duration_seconds_count", route=CHAT, model=MODEL) == 4  # 3 answered + the 400
    assert delta("privatai_request_duration_seconds_count", route=CHAT, model="") == 1
    # Idle again: nothing in flight, nothing queued, the backend healthy.
    assert value(after, "privatai_streams_in_flight") == 0
    assert value(after, "privatai_queue_depth") == 0
    assert value(after, "privatai_backend_in_flight", backend="embedded") == 0
    assert value(after, "privatai_backend_up", backend="embedded") == 1
    assert CANARY not in text
    # Positive control: the access lines are there, with their fields.
    assert "'route': '/v1/models/<model_id:path>', 'status': 404" in server_log(caplog)
    assert CANARY not in server_log(caplog)


async def test_token_required_when_configured(start_gateway: Callable[..., Any], embedded: ScriptedBackend,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    gateway = await start_gateway({"default_model": MODEL, "backends": [embedded.entry(MODEL)]})
    async with httpx.AsyncClient(timeout=10) as http:
        for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": f"Basic {TOKEN}"},
                        {"Authorization": f"Bearer {TOKEN}x"}):
            response = await http.get(f"{gateway.url}/metrics", headers=headers)
            assert response.status_code == 401, headers
            assert response.json()["error"]["type"] == "authentication_error"
            assert response.headers["www-authenticate"] == "Bearer"
        response = await http.get(f"{gateway.url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        samples = parse(response.text)
        assert value(samples, "privatai_requests_total", route="/metrics", status="401", model="", backend="") == 4
        # Not part of the API: no /v1 twin, even for a valid API key.
        key = {"Authorization": f"Bearer {await gateway.key()}"}
        assert (await http.get(f"{gateway.url}/v1/metrics", headers=key)).status_code == 404


async def test_without_token_only_local_unproxied_peers(start_gateway: Callable[..., Any],
                                                        embedded: ScriptedBackend,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # An empty variable counts as unset (and overrides one in the test environment).
    monkeypatch.setenv(TOKEN_ENV, "")
    gateway = await start_gateway({"default_model": MODEL, "backends": [embedded.entry(MODEL)]})
    assert "privatai_backend_up" in await scrape(gateway)
    async with httpx.AsyncClient(timeout=10) as http:
        for header in ("X-Forwarded-For", "X-Real-IP", "Forwarded"):
            # What a reverse proxy on the same host adds: the client is not local.
            response = await http.get(f"{gateway.url}/metrics", headers={header: "203.0.113.9"})
            assert response.status_code == 403, header
            assert response.json()["error"]["type"] == "permission_error"


def test_loopback_addresses() -> None:
    for address in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "::ffff:127.0.0.1"):
        assert is_loopback(address), address
    for address in ("10.0.0.1", "192.168.1.5", "::ffff:10.0.0.1", "2001:db8::1", "", "localhost", "/run/x.sock"):
        assert not is_loopback(address), address


async def test_metrics_disabled_is_404(start_gateway: Callable[..., Any], embedded: ScriptedBackend,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    gateway = await start_gateway({"default_model": MODEL, "backends": [embedded.entry(MODEL)],
                                   "metrics": {"enabled": False}})
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(f"{gateway.url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"
        assert (await http.get(f"{gateway.url}/healthz")).status_code == 200


@pytest.mark.slow
async def test_healthz_and_readyz(embedded_gateway: Gateway) -> None:
    async with httpx.AsyncClient(timeout=5) as http:
        health = await http.get(f"{embedded_gateway.url}/healthz")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    ready = await ready_state(embedded_gateway.url)
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "backends": {"embedded": "up"}}


async def test_readyz_unavailable_when_default_backend_is_down(start_gateway: Callable[..., Any],
                                                               embedded: ScriptedBackend) -> None:
    # A real Ollama adapter, and nothing listens on its port.
    dead = {"name": "ollama-dead", "kind": "ollama", "url": f"http://127.0.0.1:{free_port()}",
            "models": ["llama3.2"], "connect_timeout": 1}
    gateway = await start_gateway({"default_model": "llama3.2", "backends": [dead, embedded.entry(MODEL)]})
    # Liveness is not readiness: the process is fine, its default model is not.
    async with httpx.AsyncClient(timeout=5) as http:
        assert (await http.get(f"{gateway.url}/healthz")).status_code == 200
    ready = await ready_state(gateway.url)
    assert ready.status_code == 503
    assert ready.json()["status"] == "unavailable"
    backends = ready.json()["backends"]
    # "failing" after the first probe, "down" once the circuit opened.
    assert backends["embedded"] == "up" and backends["ollama-dead"] in ("failing", "down")
    samples = parse(await scrape(gateway))
    assert value(samples, "privatai_backend_up", backend="ollama-dead") == 0
    assert value(samples, "privatai_backend_up", backend="embedded") == 1
