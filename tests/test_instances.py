"""Three gateway processes behind a real nginx, sharing a throwaway PostgreSQL
and Redis: what an operator running N instances relies on (issue 14).

nginx runs the upstream and proxy rules of deploy/nginx-privatai-upstream.conf,
read from that file, with the three instances' ports put in. The clients are
the official ``openai`` SDK (retries off: every failure is seen) and, for the
web chat, plain HTTP as the page sends it.

The tests share one cluster (starting it is most of the cost) and run in
file order; each checks its own keys, so none depends on another's numbers.
The issue's 2,000 API requests over 20 keys take about a minute on two
heavily shared cores.
"""
from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import httpx
import openai
import pytest

from privatai.store.database import Store
from tests.fakes import FakeLlamaCpp
from tests.gateway import HOST, Gateway, free_port, run_cli
from tests.services import (PASSWORD_ENV, REDIS_PASSWORD_ENV, PostgreSQL, RedisServer, started_postgresql,
                            started_redis)

ROOT = Path(__file__).resolve().parent.parent
NGINX_EXAMPLE = ROOT / "deploy" / "nginx-privatai-upstream.conf"
MODEL = "chat-model"
KEYS = 20
REQUESTS = 2000
WEB_CHAT_RPM = 10
KEY_RPM = 5
CANARY = "canary-webchat-5e1f0c"


def _block(text: str, opening: str) -> str:
    """A brace block of the example (none of them nests), from ``opening`` to its ``}``."""
    start = text.index(opening)
    return text[start:text.index("}", start) + 1]


class Nginx:
    """nginx from Debian with its own prefix, config and port in a temp dir."""

    def __init__(self, ports: list[int]) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="privatai-nginx-"))
        self.port = free_port()
        example = NGINX_EXAMPLE.read_text()
        upstream = _block(example, "upstream privatai {")
        servers = "".join(f"    server {HOST}:{port} max_fails=2 fail_timeout=10s;\n" for port in ports)
        upstream = re.sub(r"(?m)^\s*server \S+ max_fails.*\n", "", upstream).replace(
            "upstream privatai {\n", "upstream privatai {\n" + servers)
        location = _block(example, "location / {")
        temp = "\n".join(f"    {kind}_temp_path {self.root}/{kind};"
                         for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        user = "user root root;\n" if os.geteuid() == 0 else ""
        (self.root / "nginx.conf").write_text(f"""{user}worker_processes 1;
daemon off;
pid {self.root}/nginx.pid;
error_log {self.root}/error.log error;
events {{ worker_connections 4096; }}
http {{
    access_log off;
{temp}
{upstream}
    server {{
        listen {HOST}:{self.port};
        client_max_body_size 4m;
        client_body_buffer_size 4m;
        # For the test only: which instance answered.
        add_header X-Upstream $upstream_addr always;
        {location}
    }}
}}
""")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(["/usr/sbin/nginx", "-p", str(self.root), "-e", str(self.root / "error.log"),
                                      "-c", str(self.root / "nginx.conf")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://{HOST}:{self.port}/healthz", timeout=1)
                return
            except httpx.HTTPError:
                if self.proc.poll() is not None:
                    raise RuntimeError((self.root / "error.log").read_text())
                time.sleep(0.05)
        raise RuntimeError("nginx did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"


@dataclass
class Cluster:
    postgresql: PostgreSQL
    database: str
    redis: RedisServer
    gateways: list[Gateway]
    nginx: Nginx
    config_path: Path
    keys: list[str] = field(default_factory=list)

    def client(self, key: str, base: str | None = None) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(api_key=key, base_url=f"{base or self.nginx.url}/v1", max_retries=0,
                                  timeout=30)

    async def stored(self, keys: list[str]) -> dict[str, tuple[int, int, int]]:
        """What the database holds per key, read with the store's own queries."""
        store = await Store.open(self.postgresql.url(self.database), password=self.postgresql.password)
        try:
            totals = {}
            for key in keys:
                principal = await store.authenticate(key)
                usage = await store.usage_for_key(principal.key_id)
                totals[key] = (usage["requests"], usage["prompt_tokens"], usage["completion_tokens"])
            return totals
        finally:
            await store.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if not Path("/usr/sbin/nginx").exists():
        pytest.skip("needs Debian's nginx package (make test installs it)")
    root = tmp_path_factory.mktemp("instances")
    redis = started_redis()
    postgresql = started_postgresql()
    fake = FakeLlamaCpp()
    nginx: Nginx | None = None
    gateways: list[Gateway] = []
    saved: dict[str, str | None] = {}
    try:
        database = postgresql.new_database()
        fake.start_in_thread()
        env = {PASSWORD_ENV: postgresql.password, REDIS_PASSWORD_ENV: redis.password,
               "PRIVATAI_IDENTITY_KEY": secrets.token_hex(32)}
        # For the CLI run in this process; the session's own PostgreSQL and
        # Redis fixtures keep theirs in the same names, restored afterwards.
        saved.update({name: os.environ.get(name) for name in env})
        os.environ.update(env)
        config: dict[str, Any] = {
            "backends": [{"name": "fake", "kind": "llamacpp", "url": fake.url, "max_concurrency": 64,
                          "models": [{"name": MODEL, "upstream": "fake-model"}]}],
            "store": {"url": postgresql.url(database), "password_env": PASSWORD_ENV, "flush_interval": 0.2},
            "state": {"redis_url": redis.url, "password_env": REDIS_PASSWORD_ENV},
            "web_chat": {"requests_per_minute": WEB_CHAT_RPM, "concurrent_streams": 50,
                         "trusted_proxies": ["127.0.0.1"]},
            "portal": {"enabled": False},
            "plans": [{"name": "pro", "price": "29 €"},
                      {"name": "limited", "price": "9 €", "requests_per_minute": KEY_RPM}],
        }
        gateways = [Gateway(root / f"g{i}", config, env=env) for i in range(3)]
        with ThreadPoolExecutor(3) as pool:
            list(pool.map(lambda gateway: gateway.start(), gateways))
        nginx = Nginx([g.port for g in gateways])
        nginx.start()
        cluster = Cluster(postgresql, database, redis, gateways, nginx, gateways[0].config_path)
        cluster.keys = [gateways[0].create_key(f"acct{i % 5}") for i in range(KEYS)]
        yield cluster
    finally:
        if nginx is not None:
            nginx.stop()
        for gateway in gateways:
            gateway.stop()
        fake.stop_in_thread()
        redis.close()
        postgresql.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@dataclass
class Told:
    """What the clients were told, per key and per instance that answered."""

    by_upstream: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    # When each failed request was sent, and its status (or error class).
    failures: list[tuple[float, int | str]] = field(default_factory=list)

    def add(self, key: str, usage: Any, upstream: str) -> None:
        # After a retry nginx names every instance it tried: the last one answered.
        totals = self.by_upstream.setdefault(upstream.split(",")[-1].strip(), {}).setdefault(key, [0, 0, 0])
        totals[0] += 1
        totals[1] += usage.prompt_tokens
        totals[2] += usage.completion_tokens

    def usage(self, key: str, *, without: str | None = None) -> tuple[int, int, int]:
        return tuple(sum(per_key.get(key, [0, 0, 0])[i] for upstream, per_key in self.by_upstream.items()
                         if upstream != without) for i in range(3))  # type: ignore[return-value]

    @property
    def requests(self) -> int:
        return sum(counts[0] for per_key in self.by_upstream.values() for counts in per_key.values())

    def served(self) -> dict[str, int]:
        return {upstream: sum(c[0] for c in per_key.values()) for upstream, per_key in self.by_upstream.items()}


async def _load(cluster: Cluster, keys: list[str], requests: int, told: Told, *, concurrency: int = 16,
                base: str | None = None) -> None:
    """``requests`` chat completions spread over ``keys``, ``concurrency`` at a time."""
    clients = {key: cluster.client(key, base) for key in keys}
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(requests):
        queue.put_nowait(n)

    async def worker() -> None:
        while not queue.empty():
            n = queue.get_nowait()
            key = keys[n % len(keys)]
            messages = [{"role": "user", "content": f"question {n}"}] * (1 + n % 3)
            started = time.monotonic()
            try:
                raw = await clients[key].chat.completions.with_raw_response.create(model=MODEL, messages=messages)
            except openai.APIError as exc:
                told.failures.append((started, getattr(exc, "status_code", None) or type(exc).__name__))
                continue
            told.add(key, raw.parse().usage, raw.headers.get("x-upstream", "?"))

    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        for client in clients.values():
            await client.close()


async def _settled(cluster: Cluster, keys: list[str], expected: dict[str, tuple[int, int, int]],
                   timeout: float = 15) -> dict[str, tuple[int, int, int]]:
    """The stored usage once it equals ``expected`` (flushes take a moment), or the last seen."""
    deadline = time.monotonic() + timeout
    while True:
        stored = await cluster.stored(keys)
        if stored == expected or time.monotonic() > deadline:
            return stored
        await asyncio.sleep(0.25)


def _plus(before: dict[str, tuple[int, int, int]], *told: Told) -> dict[str, tuple[int, int, int]]:
    """``before`` plus everything the clients were told, per key."""
    result = dict(before)
    for t in told:
        result = {key: tuple(a + b for a, b in zip(value, t.usage(key)))  # type: ignore[misc]
                  for key, value in result.items()}
    return result


async def test_usage_over_20_keys_equals_what_clients_were_told(cluster: Cluster) -> None:
    before = await cluster.stored(cluster.keys)
    told = Told()
    await _load(cluster, cluster.keys, REQUESTS, told)
    assert told.failures == []
    assert told.requests == REQUESTS
    # nginx spread the load: every instance served a share.
    served = told.served()
    assert len(served) == 3 and min(served.values()) > REQUESTS / 10, served
    expected = _plus(before, told)
    assert await _settled(cluster, cluster.keys, expected) == expected


async def _web_chat(client: httpx.AsyncClient, cluster: Cluster) -> httpx.Response:
    return await client.post(f"{cluster.nginx.url}/webchat/api/chat/completions",
                             json={"stream": True, "messages": [{"role": "user", "content": CANARY}]})


async def test_web_chat_rpm_is_exact_across_instances(cluster: Cluster) -> None:
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=40)) as client:
        answers = await asyncio.gather(*(_web_chat(client, cluster) for _ in range(3 * WEB_CHAT_RPM)))
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200] * WEB_CHAT_RPM + [429] * (2 * WEB_CHAT_RPM)
    # The admitted ones were served by more than one instance: the limit is shared, not per instance.
    assert len({a.headers["x-upstream"] for a in answers if a.status_code == 200}) > 1
    refused = next(a for a in answers if a.status_code == 429)
    assert refused.json()["error"]["code"] == "requests_per_minute_exceeded"
    # Redis holds keyed hashes and counters: no address, no content.
    dump = _redis_dump(cluster)
    assert dump and "127.0.0.1" not in dump and CANARY not in dump
    assert all(CANARY not in gateway.output() for gateway in cluster.gateways)
    assert re.fullmatch(r"(privatai:lim:\{[0-9a-f]{32}\}:[mda]\n)+", "".join(sorted(
        line + "\n" for line in _redis_cli(cluster, "--scan").splitlines()))), dump


def _redis_cli(cluster: Cluster, *args: str) -> str:
    return subprocess.run(["redis-cli", "-p", str(cluster.redis.port), "--no-auth-warning", *args],
                          capture_output=True, text=True, timeout=30, check=True,
                          env={**os.environ, "REDISCLI_AUTH": cluster.redis.password}).stdout


def _redis_dump(cluster: Cluster) -> str:
    """Every key and everything stored under it, as text."""
    out = []
    for key in _redis_cli(cluster, "--scan").split():
        kind = _redis_cli(cluster, "type", key).strip()
        command = {"zset": ["zrange", key, "0", "-1", "withscores"], "hash": ["hgetall", key],
                   "string": ["get", key]}[kind]
        out.append(key + " " + _redis_cli(cluster, *command))
    return "\n".join(out)


async def test_a_keys_plan_rate_is_exact_across_instances(cluster: Cluster) -> None:
    key = cluster.gateways[0].create_key("limited-co")
    cluster.gateways[0].cli("accounts", "set-plan", "limited-co", "limited")

    async def one(client: openai.AsyncOpenAI) -> Any:
        try:
            return await client.chat.completions.with_raw_response.create(model=MODEL, messages=[
                {"role": "user", "content": CANARY}])
        except openai.RateLimitError as exc:
            return exc

    async with cluster.client(key) as client:
        answers = await asyncio.gather(*(one(client) for _ in range(6 * KEY_RPM)))
    served = [a for a in answers if not isinstance(a, openai.RateLimitError)]
    refused = [a for a in answers if isinstance(a, openai.RateLimitError)]
    assert (len(served), len(refused)) == (KEY_RPM, 5 * KEY_RPM)
    assert {a.code for a in refused} == {"requests_per_minute_exceeded"}
    assert {a.response.headers["x-ratelimit-limit-requests"] for a in refused} == {str(KEY_RPM)}
    # Every instance took part: the allowance is the key's, not each instance's.
    upstreams = {a.headers["x-upstream"] for a in served} | {a.response.headers["x-upstream"] for a in refused}
    assert len(upstreams) == 3
    # Redis holds the key's id and numbers: no API key, no content.
    rate_keys = [k for k in _redis_cli(cluster, "--scan", "--pattern", "privatai:rate:*").split()]
    assert len(rate_keys) == 1 and re.fullmatch(r"privatai:rate:\{\d+\}", rate_keys[0])
    dump = _redis_dump(cluster)
    assert key not in dump and key[:12] not in dump and CANARY not in dump


async def test_a_key_revoked_by_the_cli_is_refused_by_every_instance_within_a_second(cluster: Cluster) -> None:
    key = cluster.gateways[0].create_key("revokee")
    direct = [f"http://{HOST}:{g.port}" for g in cluster.gateways]
    for base in direct:  # every instance has the key cached as valid
        async with cluster.client(key, base) as client:
            await client.models.list()
    result = await asyncio.to_thread(run_cli, "keys", "revoke", key, "--config", str(cluster.config_path))
    assert result.returncode == 0, result.stderr
    revoked_at = time.monotonic()
    refused_after: dict[str, float] = {}
    async with httpx.AsyncClient(timeout=5) as http:
        while len(refused_after) < len(direct) and time.monotonic() - revoked_at < 5:
            for base in direct:
                if base in refused_after:
                    continue
                answer = await http.get(f"{base}/v1/models", headers={"Authorization": f"Bearer {key}"})
                if answer.status_code == 401:
                    refused_after[base] = time.monotonic() - revoked_at
            await asyncio.sleep(0.02)
    assert sorted(refused_after) == sorted(direct)
    assert max(refused_after.values()) < 1.0, refused_after


async def test_an_instance_killed_mid_load_others_serve_and_lose_nothing(cluster: Cluster) -> None:
    keys = cluster.keys[:10]
    before = await cluster.stored(keys)
    victim = cluster.gateways[2]
    victim_addr = f"{HOST}:{victim.port}"
    told = Told()
    load = asyncio.create_task(_load(cluster, keys, 300, told, concurrency=12))
    while told.requests < 60:
        await asyncio.sleep(0.01)
    assert victim.proc is not None
    victim.proc.send_signal(signal.SIGKILL)
    # Dying takes a moment on a loaded machine (its sockets close as it
    # exits); the wait returns once it is gone, sockets and all.
    await asyncio.to_thread(victim.proc.wait)
    dead_at = time.monotonic()
    await load
    victim.stop()
    # Only requests the victim had received before it was gone may fail
    # (nginx's 502: it never resends a POST an instance had received); nginx
    # sends everything after that to the others.
    assert len(told.failures) <= 12 and all(sent < dead_at and status == 502
                                            for sent, status in told.failures), (dead_at, told.failures)
    after = Told()
    await _load(cluster, keys, 60, after, concurrency=6)
    assert after.failures == [] and victim_addr not in after.served()

    # The victim's last unflushed usage died with it (at most one
    # flush_interval's worth); what the survivors told is stored, once.
    await asyncio.sleep(1.0)  # the survivors' last flush
    stored = await cluster.stored(keys)
    for key in keys:
        got = tuple(s - b for s, b in zip(stored[key], before[key]))
        by_survivors = tuple(a + b for a, b in zip(told.usage(key, without=victim_addr), after.usage(key)))
        by_all = tuple(a + b for a, b in zip(told.usage(key), after.usage(key)))
        assert all(low <= g <= high for low, g, high in zip(by_survivors, got, by_all)), (key, got, by_survivors, by_all)


async def test_redis_stopped_and_restarted(cluster: Cluster) -> None:
    live = [g for g in cluster.gateways if g.proc is not None]
    keys = cluster.keys[10:15]
    before = await cluster.stored(keys)
    # The module's instances are shared: only what they log from this outage
    # on counts (an earlier test's load may have had a Redis stall of its own).
    logged_before = [len(gateway.output()) for gateway in live]
    cluster.redis.stop()
    try:
        async with httpx.AsyncClient(timeout=5) as http:
            # Every instance notices within its ping interval and says so.
            deadline = time.monotonic() + 5
            for gateway in live:
                while True:
                    ready = (await http.get(f"{gateway.url}/readyz")).json()
                    if ready["status"] == "degraded" or time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.1)
                assert ready["status"] == "degraded" and "shared_state" in ready["degraded"], ready
            # The web chat fails closed, with an OpenAI-shaped 503.
            closed = await _web_chat(http, cluster)
            assert closed.status_code == 503
            assert closed.json()["error"]["code"] == "limits_unavailable"
        # The API serves on.
        told = Told()
        await _load(cluster, keys, 60, told, concurrency=6)
        assert told.failures == []
    finally:
        cluster.redis.start()
    async with httpx.AsyncClient(timeout=5) as http:
        deadline = time.monotonic() + 10
        while [(await http.get(f"{g.url}/readyz")).json()["status"] for g in live] != ["ready"] * len(live):
            assert time.monotonic() < deadline, "instances did not see Redis return"
            await asyncio.sleep(0.1)
        # A restarted Redis without persistence starts with fresh counters.
        assert (await _web_chat(http, cluster)).status_code == 200
    for gateway, offset in zip(live, logged_before):
        logged = gateway.output()[offset:]
        assert logged.count("Redis unreachable") == 1, logged[-2000:]
        assert "Redis reachable again" in logged
    expected = _plus(before, told)
    assert await _settled(cluster, keys, expected) == expected


async def test_postgresql_stopped_ten_seconds_nothing_lost_or_doubled(cluster: Cluster) -> None:
    live = [g for g in cluster.gateways if g.proc is not None]
    keys = cluster.keys[15:20]
    before = await cluster.stored(keys)
    # Every instance has every key cached before the outage.
    warm = Told()
    for gateway in live:
        await _load(cluster, keys, len(keys), warm, concurrency=5, base=gateway.url)
    told = Told()
    cluster.postgresql.pause()
    paused_at = time.monotonic()
    try:
        async with httpx.AsyncClient(timeout=5) as http:
            ready = (await http.get(f"{live[0].url}/readyz")).json()
            assert ready["status"] == "degraded" and "store" in ready["degraded"], ready
            # What needs the database answers a clear 503 meanwhile.
            usage = await http.get(f"{live[0].url}/v1/usage", headers={"Authorization": f"Bearer {keys[0]}"})
            assert usage.status_code == 503 and usage.json()["error"]["code"] == "store_unavailable"
        while time.monotonic() - paused_at < 10:
            await _load(cluster, keys, 20, told, concurrency=4)
        assert told.failures == []
    finally:
        cluster.postgresql.resume()
    expected = _plus(before, warm, told)
    assert await _settled(cluster, keys, expected, timeout=20) == expected
