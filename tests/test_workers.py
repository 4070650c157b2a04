"""``server.workers: N`` on one machine with SQLite: real gateway processes
with 2-3 forked workers, real sockets, the openai SDK as client.

Which worker answered is in each access line (``worker``: its PID), so the
tests can show that a request burst, a revocation or a reload really reached
every worker rather than one of them.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import httpx
import openai
import pytest
import yaml

from privatai.core.events import TextDelta
from tests.fakes import FakeLlamaCpp, Sleep
from tests.gateway import Gateway, run_cli

WORKERS = 3


def access_lines(gateway: Gateway) -> list[dict[str, Any]]:
    lines = []
    for line in gateway.output().splitlines():
        if line.startswith("{") and '"privatai.access"' in line:
            lines.append(json.loads(line))
    return lines


def wait_for(condition: Any, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def fake() -> Iterator[FakeLlamaCpp]:
    with FakeLlamaCpp() as backend:
        yield backend


def start(tmp_path: Path, fake: FakeLlamaCpp, workers: int = WORKERS, **sections: Any) -> Gateway:
    backend = {"name": "fake", "kind": "llamacpp", "url": fake.url, "models": ["m"]}
    config: dict[str, Any] = {"backends": [backend], "logging": {"format": "json"},
                              "store": {"flush_interval": 0.2}, **sections}
    config.setdefault("server", {})["workers"] = workers
    gateway = Gateway(tmp_path, config)
    gateway.create_key()  # the account, so tests may add keys while it runs
    gateway.start()
    wait_for(lambda: f"with {workers} workers" in gateway.output(), what="every worker to start")
    return gateway


def test_usage_is_exact_over_workers_and_keys(tmp_path: Path, fake: FakeLlamaCpp) -> None:
    gateway = start(tmp_path, fake)
    try:
        keys = [gateway.create_key() for _ in range(4)]
        told: dict[str, Counter[str]] = {key: Counter() for key in keys}

        async def one(n: int, clients: list[openai.AsyncOpenAI]) -> None:
            key, client = keys[n % len(keys)], clients[n % len(keys)]
            # 1 to 3 messages: the fake reports 10 prompt tokens per message.
            messages = [{"role": "user", "content": f"question {n}"}] * (1 + n % 3)
            if n % 2:
                stream = await client.chat.completions.create(
                    model="m", messages=messages, stream=True, stream_options={"include_usage": True})
                usage = None
                async for chunk in stream:
                    usage = chunk.usage or usage
            else:
                usage = (await client.chat.completions.create(model="m", messages=messages)).usage
            assert usage is not None
            told[key].update(requests=1, prompt_tokens=usage.prompt_tokens,
                             completion_tokens=usage.completion_tokens)

        async def burst() -> None:
            clients = [openai.AsyncOpenAI(base_url=gateway.base_url, api_key=key, max_retries=0) for key in keys]
            await asyncio.gather(*(one(n, clients) for n in range(240)))
            for client in clients:
                await client.close()

        asyncio.run(burst())
        served = Counter(line["worker"] for line in access_lines(gateway)
                         if line["route"] == "/v1/chat/completions")
        assert len(served) >= 2, f"one worker served everything: {served}"
        time.sleep(1.0)  # every worker's batch flushed (flush_interval 0.2 s)
        for key in keys:
            stored = httpx.get(f"{gateway.base_url}/usage", headers={"Authorization": f"Bearer {key}"},
                               timeout=10).json()
            assert {name: stored[name] for name in ("requests", "prompt_tokens", "completion_tokens")} \
                == dict(told[key]), key[:12]
    finally:
        gateway.stop()


def test_web_chat_admits_exactly_the_limit_across_workers(tmp_path: Path, fake: FakeLlamaCpp) -> None:
    gateway = start(tmp_path, fake, web_chat={"requests_per_minute": 10, "concurrent_streams": 100})
    try:
        body = {"messages": [{"role": "user", "content": "hello"}], "stream": True}

        async def one(http: httpx.AsyncClient) -> httpx.Response:
            response = await http.post(f"{gateway.url}/webchat/api/chat/completions", json=body)
            await response.aread()
            return response

        async def burst() -> list[httpx.Response]:
            # A connection per request, so the workers share the burst.
            async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_keepalive_connections=0)) as http:
                return await asyncio.gather(*(one(http) for _ in range(60)))

        responses = asyncio.run(burst())
        statuses = Counter(response.status_code for response in responses)
        assert statuses == {200: 10, 429: 50}
        for response in responses:
            if response.status_code == 429:
                assert response.json()["error"]["code"] == "requests_per_minute_exceeded"
                assert response.headers["x-ratelimit-limit-requests"] == "10"
                assert response.headers["x-ratelimit-remaining-requests"] == "0"
                assert 1 <= int(response.headers["retry-after"]) <= 60
        refused_by = {line["worker"] for line in access_lines(gateway)
                      if line["route"] == "/webchat/api/chat/completions" and line["status"] == 429}
        assert len(refused_by) >= 2, "the burst did not reach several workers"
    finally:
        gateway.stop()


def test_a_keys_plan_rate_is_one_allowance_across_workers(tmp_path: Path, fake: FakeLlamaCpp) -> None:
    plans = [{"name": "pro", "price": "29 €"},
             {"name": "limited", "price": "9 €", "requests_per_minute": 5}]
    gateway = start(tmp_path, fake, plans=plans)
    try:
        key = gateway.create_key("limited-co")
        gateway.cli("accounts", "set-plan", "limited-co", "limited")

        async def one(http: httpx.AsyncClient) -> httpx.Response:
            return await http.post(f"{gateway.base_url}/chat/completions",
                                   headers={"Authorization": f"Bearer {key}"},
                                   json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})

        async def burst() -> list[httpx.Response]:
            # A connection per request, so the workers share the burst.
            async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_keepalive_connections=0)) as http:
                return await asyncio.gather(*(one(http) for _ in range(40)))

        responses = asyncio.run(burst())
        assert Counter(response.status_code for response in responses) == {200: 5, 429: 35}
        for response in responses:
            assert response.headers["x-ratelimit-limit-requests"] == "5"
            if response.status_code == 429:
                assert response.json()["error"]["code"] == "requests_per_minute_exceeded"
                assert int(response.headers["retry-after"]) >= 1
        refused_by = {line["worker"] for line in access_lines(gateway)
                      if line["route"] == "/v1/chat/completions" and line["status"] == 429}
        assert len(refused_by) >= 2, "the burst did not reach several workers"
    finally:
        gateway.stop()


def test_web_chat_slots_are_given_back_in_the_shared_counters(tmp_path: Path, fake: FakeLlamaCpp) -> None:
    """One answer at a time (the default): each finished answer frees the
    slot for the next, whichever worker serves it, even though the visitor
    closes the connection as soon as the last chunk is in (which cancels the
    handler while it gives the slot back)."""
    gateway = start(tmp_path, fake, web_chat={"requests_per_minute": 5})
    try:
        answers = []
        for _ in range(6):
            response = httpx.post(f"{gateway.url}/webchat/api/chat/completions", timeout=30,
                                  json={"messages": [{"role": "user", "content": "hi"}], "stream": True})
            answers.append((response.status_code, response.json()["error"]["code"]
                            if response.status_code != 200 else None))
        assert answers == [(200, None)] * 5 + [(429, "requests_per_minute_exceeded")]
    finally:
        gateway.stop()


def test_revoked_key_is_refused_by_every_worker_within_a_second(tmp_path: Path, fake: FakeLlamaCpp) -> None:
    # A cache that alone would honour the key for a minute: only the change
    # counter can make every worker refuse it in time.
    gateway = start(tmp_path, fake, store={"flush_interval": 0.2, "auth_cache_ttl": 60})
    try:
        key = gateway.create_key()
        url, headers = f"{gateway.base_url}/models", {"Authorization": f"Bearer {key}"}
        # Every worker has the key in its authentication cache.
        with httpx.Client(timeout=10, limits=httpx.Limits(max_keepalive_connections=0)) as http:
            wait_for(lambda: http.get(url, headers=headers).status_code == 200 and len(
                {line["worker"] for line in access_lines(gateway) if line["status"] == 200}) == WORKERS,
                what="every worker to have answered with the key")
        answers: list[tuple[float, int]] = []
        stop = threading.Event()

        def hammer() -> None:
            with httpx.Client(timeout=10, limits=httpx.Limits(max_keepalive_connections=0)) as http:
                while not stop.is_set():
                    sent = time.monotonic()
                    answers.append((sent, http.get(url, headers=headers).status_code))

        threads = [threading.Thread(target=hammer) for _ in range(6)]
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        revoked = run_cli("keys", "revoke", key[:12], "--config", str(gateway.config_path))
        done = time.monotonic()
        assert revoked.returncode == 0, revoked.stderr
        time.sleep(1.0)
        before = len(access_lines(gateway))
        time.sleep(1.5)
        stop.set()
        for thread in threads:
            thread.join(10)
        assert any(status == 200 for sent, status in answers if sent < done)  # it worked until then
        late = [(round(sent - done, 2), status) for sent, status in answers if sent >= done + 1.0]
        assert late and all(status == 401 for _, status in late), late
        refusing = {line["worker"] for line in access_lines(gateway)[before:] if line["status"] == 401}
        assert len(refusing) == WORKERS, "not every worker was asked after the revocation"
    finally:
        gateway.stop()


def test_reload_reaches_every_worker(tmp_path: Path, fake: FakeLlamaCpp) -> None:
    gateway = start(tmp_path, fake)
    try:
        key = gateway.create_key()
        config = yaml.safe_load(gateway.config_path.read_text())
        config["backends"][0]["models"] = ["m", "m2"]
        gateway.config_path.write_text(yaml.safe_dump(config))
        # Without --pid: the CLI finds the main process, which passes the signal on.
        reload = gateway.cli("reload")
        assert "asked 1 server process(es)" in reload.stdout
        wait_for(lambda: gateway.output().count("configuration reloaded") == WORKERS,
                 what="every worker to reload")
        assert gateway.output().count("configuration reloaded") == WORKERS
        assert gateway.proc is not None and gateway.proc.poll() is None

        async def listed() -> list[list[str]]:
            async with httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_keepalive_connections=0)) as http:
                responses = await asyncio.gather(*(http.get(f"{gateway.base_url}/models",
                                                            headers={"Authorization": f"Bearer {key}"})
                                                   for _ in range(30)))
            return [[model["id"] for model in r.json()["data"]] for r in responses]

        assert all(models == ["m", "m2"] for models in asyncio.run(listed()))
    finally:
        gateway.stop()


def test_sigterm_lets_every_worker_finish_its_streams(tmp_path: Path, fake: FakeLlamaCpp) -> None:
    gateway = start(tmp_path, fake, workers=2, server={"grace_period": 60})
    key = gateway.create_key()
    for _ in range(6):
        fake.reply(TextDelta("one "), Sleep(2.0), TextDelta("two"), usage=(10, 2))
    ended: list[str] = []
    first = threading.Barrier(7)

    def stream() -> None:
        client = openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0,
                               http_client=httpx.Client(limits=httpx.Limits(max_keepalive_connections=0)))
        chunks = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}],
                                                stream=True)
        text = ""
        for n, chunk in enumerate(chunks):
            if n == 0:
                first.wait(30)
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
        ended.append(text)

    threads = [threading.Thread(target=stream) for _ in range(6)]
    for thread in threads:
        thread.start()
    first.wait(30)  # all six streams are open
    assert gateway.proc is not None
    main = gateway.proc.pid
    gateway.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    gateway.proc.send_signal(signal.SIGTERM)  # an impatient supervisor: ignored
    for thread in threads:
        thread.join(60)
    code = gateway.stop()
    assert code == 0, gateway.output()[-2000:]
    assert ended == ["one two"] * 6
    streamed_by = {line["worker"] for line in access_lines(gateway) if line["route"] == "/v1/chat/completions"}
    assert len(streamed_by) == 2, "the streams were not spread over both workers"
    assert not any(entry.startswith(f"privatai-{main}-") for entry in os.listdir("/dev/shm"))
    usage = run_cli("usage", "--config", str(gateway.config_path))
    assert usage.returncode == 0
    assert re.search(r"\b6\b.*\b60\b.*\b12\b", usage.stdout), usage.stdout


def test_metrics_count_every_worker(tmp_path: Path, fake: FakeLlamaCpp) -> None:
    gateway = start(tmp_path, fake)
    try:
        key = gateway.create_key()

        async def burst() -> None:
            async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_keepalive_connections=0)) as http:
                await asyncio.gather(*(http.post(f"{gateway.base_url}/chat/completions",
                                                 headers={"Authorization": f"Bearer {key}"},
                                                 json={"model": "m", "messages": [{"role": "user", "content": "x"}]})
                                       for _ in range(90)))

        asyncio.run(burst())
        per_worker = Counter(line["worker"] for line in access_lines(gateway)
                             if line["route"] == "/v1/chat/completions")
        assert sum(per_worker.values()) == 90 and len(per_worker) >= 2
        pattern = re.compile(r'^privatai_requests_total\{backend="fake",model="m",'
                             r'route="/v1/chat/completions",status="200"\} (\S+)$', re.M)
        tokens = re.compile(r'^privatai_tokens_total\{direction="in",model="m"\} (\S+)$', re.M)
        for _ in range(10):  # scrapes answered by any worker say the same
            text = httpx.get(f"{gateway.url}/metrics", timeout=10).text
            assert float(pattern.search(text).group(1)) == 90  # type: ignore[union-attr]
            assert float(tokens.search(text).group(1)) == 900  # type: ignore[union-attr]
            assert re.search(r'^privatai_backend_up\{backend="fake"\} 1\.0$', text, re.M)
    finally:
        gateway.stop()


def test_workers_run_under_the_units_seccomp_rules(tmp_path: Path, fake: FakeLlamaCpp) -> None:
    """Forking, the shared counter file, the start-up counter's semaphore and
    the metrics files, under privatai.service's system-call and memory rules."""
    import ctypes.util
    import shutil
    import sys

    from tests.gateway import ROOT

    if ctypes.util.find_library("seccomp") is None or shutil.which("systemd-analyze") is None:
        pytest.skip("libseccomp or systemd-analyze not installed")
    serve = tmp_path / "serve.py"
    serve.write_text("import sys\nfrom privatai.ops.cli import main\nraise SystemExit(main(sys.argv[1:]))\n")
    backend = {"name": "fake", "kind": "llamacpp", "url": fake.url, "models": ["m"]}
    gateway = Gateway(tmp_path / "gw", {"backends": [backend], "server": {"workers": 2},
                                        "logging": {"format": "json"}, "web_chat": {"requests_per_minute": 3}},
                      env={"PYTHONPATH": str(ROOT)},
                      launcher=[sys.executable, str(ROOT / "tests" / "unit_sandbox.py"),
                                str(ROOT / "systemd" / "privatai.service"), str(serve)])
    key = gateway.create_key()
    with gateway:
        wait_for(lambda: "with 2 workers" in gateway.output(), what="both workers to start")
        client = openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)
        assert client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}]).usage
        statuses = [httpx.post(f"{gateway.url}/webchat/api/chat/completions", timeout=30,
                               json={"messages": [{"role": "user", "content": "hi"}], "stream": True}).status_code
                    for _ in range(4)]
        assert statuses == [200, 200, 200, 429], gateway.output()[-3000:]
        assert "privatai_requests_total" in httpx.get(f"{gateway.url}/metrics", timeout=10).text
        assert gateway.proc is not None
        gateway.proc.send_signal(signal.SIGTERM)
        assert gateway.proc.wait(60) == 0, gateway.output()[-2000:]
        gateway.proc = None
    assert "Traceback" not in gateway.output()


def test_a_worker_may_take_longer_than_sanics_30_seconds_to_start(tmp_path: Path, fake: FakeLlamaCpp) -> None:
    """A large embedded model can take more than 30 s to load from a cold
    disk; Sanic's manager shut the whole server down when a worker had not
    started within 30 s. Here every worker's start-up takes 35 s, on a clock
    that runs ten times faster: Sanic's default becomes 3 s, the gateway's
    limit a tenth of its own, and the start-up 3.5 s."""
    backend = {"name": "fake", "kind": "llamacpp", "url": fake.url, "models": ["m"]}
    gateway = Gateway(tmp_path, {"backends": [backend], "server": {"workers": 2}},
                      env={"PRIVATAI_TEST_SLOW_EVENT": "before_server_start", "PRIVATAI_TEST_SLOW_SECONDS": "3.5",
                           "PRIVATAI_TEST_TIME_SCALE": "0.1"},
                      # In a session of its own: Sanic's manager, when it gives up,
                      # SIGKILLs the process group of its workers, which would be pytest's.
                      launcher=["setsid", sys.executable, "-m", "tests.slow_start"])
    key = gateway.create_key()
    gateway.start(timeout=150)
    try:
        wait_for(lambda: "with 2 workers" in gateway.output(), what="both workers to start")
        assert "Not all workers acknowledged" not in gateway.output()
        models = httpx.get(f"{gateway.base_url}/models", headers={"Authorization": f"Bearer {key}"}, timeout=10)
        assert models.status_code == 200 and [m["id"] for m in models.json()["data"]] == ["m"]
    finally:
        assert gateway.stop() == 0, gateway.output()
