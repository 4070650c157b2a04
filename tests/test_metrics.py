"""/metrics, /healthz and /readyz against live gateways on the real embedded model."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Iterator

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from privatai.api.metrics import is_loopback
from tests.gateway import Gateway, embedded_backend, free_port

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m"
CHAT = "/v1/chat/completions"
# Sent in prompts, a model id and a path: it must never show up in the metrics.
CANARY = "canary-q7x3-zebra-fjord"
TOKEN = "metrics-test-token-3f9a"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def scrape(gateway: Gateway, token: str | None = None) -> str:
    # The shared gateway inherits the environment: a token set there applies.
    token = token or gateway.env.get("PRIVATAI_METRICS_TOKEN") or None
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.get(f"{gateway.url}/metrics", headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    return response.text


def wait_for(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def ready_state(gateway: Gateway) -> httpx.Response:
    """/readyz once the first probe round is done (it says "starting" before)."""
    url = f"{gateway.url}/readyz"
    wait_for(lambda: httpx.get(url, timeout=5).json()["status"] != "starting")
    return httpx.get(url, timeout=5)


@pytest.fixture
def start_gateway(tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    started: list[Gateway] = []

    def start(config: dict[str, object], env: dict[str, str] | None = None) -> Gateway:
        gateway = Gateway(tmp_path / f"gw{len(started)}", config, env=env).start()
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        gateway.stop()


def embedded_config(**extra: object) -> dict[str, object]:
    return {"default_model": MODEL, "backends": [embedded_backend()], **extra}


def test_metrics_count_exactly_what_was_sent(embedded_gateway: Gateway, api_key: str) -> None:
    client = openai.OpenAI(base_url=embedded_gateway.base_url, api_key=api_key, max_retries=0, timeout=120)
    before = parse(scrape(embedded_gateway))
    prompt = [{"role": "user", "content": f"Say hello to {CANARY}."}]

    usages = []
    for _ in range(2):
        chunks = list(client.chat.completions.create(model=MODEL, messages=prompt, max_tokens=6, stream=True,
                                                     stream_options={"include_usage": True}))
        assert chunks[-1].usage is not None
        usages.append(chunks[-1].usage)
    usages.append(client.chat.completions.create(model=MODEL, messages=prompt, max_tokens=6).usage)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model=f"no-such-model-{CANARY}", messages=prompt, max_tokens=6)
    # Longer than n_ctx: the backend rejects it before the first token, so a
    # streamed request still gets a plain 400, and must still be counted.
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, stream=True, max_tokens=6,
                                       messages=[{"role": "user", "content": f"{CANARY} " * 3000}])
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve(CANARY)

    ok = dict(route=CHAT, status="200", model=MODEL, backend="embedded")
    # A stream's access line (and its metrics) is written once the backend
    # has let go of the request, a moment after the client saw [DONE].
    wait_for(lambda: value(parse(scrape(embedded_gateway)), "privatai_requests_total", **ok)
             - value(before, "privatai_requests_total", **ok) >= 3)
    text = scrape(embedded_gateway)
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
    assert delta("privatai_time_to_first_token_seconds_count", model=MODEL, backend="embedded") == 2
    assert delta("privatai_request_duration_seconds_count", route=CHAT, model=MODEL) == 4  # 3 answered + the 400
    assert delta("privatai_request_duration_seconds_count", route=CHAT, model="") == 1
    # Idle again: nothing in flight, nothing queued, the backend healthy.
    assert value(after, "privatai_streams_in_flight") == 0
    assert value(after, "privatai_queue_depth") == 0
    assert value(after, "privatai_backend_in_flight", backend="embedded") == 0
    assert value(after, "privatai_backend_up", backend="embedded") == 1
    assert CANARY not in text
    assert CANARY not in embedded_gateway.output()


def test_token_required_when_configured(start_gateway: Callable[..., Gateway]) -> None:
    gateway = start_gateway(embedded_config(), env={"PRIVATAI_METRICS_TOKEN": TOKEN})
    for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": f"Basic {TOKEN}"},
                    {"Authorization": f"Bearer {TOKEN}x"}):
        response = httpx.get(f"{gateway.url}/metrics", headers=headers, timeout=10)
        assert response.status_code == 401, headers
        assert response.json()["error"]["type"] == "authentication_error"
        assert response.headers["www-authenticate"] == "Bearer"
    response = httpx.get(f"{gateway.url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = parse(response.text)
    assert value(samples, "privatai_requests_total", route="/metrics", status="401", model="", backend="") == 4
    # Not part of the API: no /v1 twin, even for a valid API key.
    key = {"Authorization": f"Bearer {gateway.create_key()}"}
    assert httpx.get(f"{gateway.url}/v1/metrics", headers=key, timeout=10).status_code == 404


def test_without_token_only_local_unproxied_peers(start_gateway: Callable[..., Gateway]) -> None:
    # An empty variable counts as unset (and overrides one in the test environment).
    gateway = start_gateway(embedded_config(), env={"PRIVATAI_METRICS_TOKEN": ""})
    assert "privatai_backend_up" in scrape(gateway)
    for header in ("X-Forwarded-For", "X-Real-IP", "Forwarded"):
        # What a reverse proxy on the same host adds: the client is not local.
        response = httpx.get(f"{gateway.url}/metrics", headers={header: "203.0.113.9"}, timeout=10)
        assert response.status_code == 403, header
        assert response.json()["error"]["type"] == "permission_error"


def test_loopback_addresses() -> None:
    for address in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "::ffff:127.0.0.1"):
        assert is_loopback(address), address
    for address in ("10.0.0.1", "192.168.1.5", "::ffff:10.0.0.1", "2001:db8::1", "", "localhost", "/run/x.sock"):
        assert not is_loopback(address), address


def test_metrics_disabled_is_404(start_gateway: Callable[..., Gateway]) -> None:
    gateway = start_gateway(embedded_config(metrics={"enabled": False}), env={"PRIVATAI_METRICS_TOKEN": TOKEN})
    response = httpx.get(f"{gateway.url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert httpx.get(f"{gateway.url}/healthz", timeout=10).status_code == 200


def test_healthz_and_readyz(embedded_gateway: Gateway) -> None:
    health = httpx.get(f"{embedded_gateway.url}/healthz", timeout=5)
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    ready = ready_state(embedded_gateway)
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "backends": {"embedded": "up"}}


def test_readyz_unavailable_when_default_backend_is_down(start_gateway: Callable[..., Gateway]) -> None:
    dead = {"name": "ollama-dead", "kind": "ollama", "url": f"http://127.0.0.1:{free_port()}",
            "models": ["llama3.2"], "connect_timeout": 1}
    gateway = start_gateway({"default_model": "llama3.2", "backends": [dead, embedded_backend()]},
                            env={"PRIVATAI_METRICS_TOKEN": ""})
    # Liveness is not readiness: the process is fine, its default model is not.
    assert httpx.get(f"{gateway.url}/healthz", timeout=5).status_code == 200
    ready = ready_state(gateway)
    assert ready.status_code == 503
    assert ready.json()["status"] == "unavailable"
    backends = ready.json()["backends"]
    # "failing" after the first probe, "down" once the circuit opened.
    assert backends["embedded"] == "up" and backends["ollama-dead"] in ("failing", "down")
    samples = parse(scrape(gateway))
    assert value(samples, "privatai_backend_up", backend="ollama-dead") == 0
    assert value(samples, "privatai_backend_up", backend="embedded") == 1
