"""SIGTERM lets open streams finish, records their usage, and usage survives a restart."""
from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.gateway import ROOT, Gateway, LocalGateway, embedded_backend
from tests.scripted import ScriptedBackends

pytestmark = pytest.mark.slow


def stream_chat(gateway: Gateway, key: str, received: list[str], first: threading.Event,
                result: dict[str, object]) -> None:
    body = {"messages": [{"role": "user", "content": "Write a long story about a lighthouse."}],
            "max_tokens": 120, "stream": True}
    with httpx.stream("POST", f"{gateway.base_url}/chat/completions", json=body, timeout=120,
                      headers={"Authorization": f"Bearer {key}"}) as response:
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            received.append(line)
            if line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                first.set()
            if chunk.get("usage"):
                result["usage"] = chunk["usage"]


async def test_sigterm_finishes_open_streams_and_keeps_their_usage(tmp_path: Path,
                                                                 scripted: ScriptedBackends) -> None:
    gateway = Gateway(tmp_path, {"backends": [embedded_backend()], "server": {"grace_period": 60}})
    key = gateway.create_key()
    gateway.start()
    received: list[str] = []
    first = threading.Event()
    result: dict[str, object] = {}
    thread = threading.Thread(target=stream_chat, args=(gateway, key, received, first, result))
    thread.start()
    assert await asyncio.to_thread(first.wait, 60)
    assert gateway.proc is not None
    gateway.proc.send_signal(signal.SIGTERM)
    await asyncio.to_thread(thread.join, 120)
    code = await asyncio.to_thread(gateway.stop)
    assert code == 0, gateway.output()
    assert received[-1] == "data: [DONE]", "the open stream was cut by the shutdown"
    usage = result["usage"]
    assert isinstance(usage, dict) and usage["completion_tokens"] > 0

    # After a restart the usage recorded during shutdown is there, exactly
    # (the restart is in this process: only /usage is asked, no model needed).
    scripted.backend("embedded")
    async with LocalGateway(tmp_path / "restart", gateway.config) as restarted, httpx.AsyncClient() as http:
        body = (await http.get(f"{restarted.base_url}/usage", headers={"Authorization": f"Bearer {key}"})).json()
    assert body["requests"] == 1
    assert body["prompt_tokens"] == usage["prompt_tokens"]
    assert body["completion_tokens"] == usage["completion_tokens"]


def test_a_sigterm_right_after_start_stops_the_server(tmp_path: Path) -> None:
    """A supervisor that stops the gateway as soon as it answers. The first
    answer can come before Sanic installs its signal handlers (a SIGTERM then
    killed the process: no drain, no usage flush; 1 start in 3 here) or while
    its start-up listeners run (the stop was lost and the server served on
    until SIGKILL). Each of several starts must end by the normal drain,
    with exit code 0, within seconds."""
    backend = {"name": "gone", "kind": "vllm", "url": "http://127.0.0.1:9", "models": ["m"]}
    for attempt in range(6):
        gateway = Gateway(tmp_path / str(attempt), {"backends": [backend]})
        gateway.start()
        code = gateway.stop(timeout=15)  # Gateway.stop kills after the timeout: exit -9
        assert code == 0, f"start {attempt}: exit {code}\n{gateway.output()[-800:]}"


def test_a_stop_during_the_start_up_listeners_waits_for_them_and_drains(tmp_path: Path) -> None:
    """A SIGTERM while the after_server_start listeners still run stopped the
    loop under Sanic's start-up: the start failed with a RuntimeError (exit 1),
    the shutdown listeners never ran, and the process could hang on the open
    store's thread. The stop must instead come once the server serves, and
    end the normal way (drain, usage flush, store closed): exit 0."""
    backend = {"name": "gone", "kind": "vllm", "url": "http://127.0.0.1:9", "models": ["m"]}
    gateway = Gateway(tmp_path, {"backends": [backend]},
                      launcher=[sys.executable, "-m", "tests.slow_start"])
    gateway.write_config(gateway.config)
    with gateway.output_path.open("ab") as out:
        gateway.proc = proc = subprocess.Popen(
            [*gateway.launcher, "serve", "--config", str(gateway.config_path)],
            stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=gateway.env)
    deadline = time.monotonic() + 120
    while "slow after_server_start listener begins" not in gateway.output():
        assert proc.poll() is None and time.monotonic() < deadline, gateway.output()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    code = gateway.stop(timeout=30)
    output = gateway.output()
    assert code == 0, output
    assert "RuntimeError" not in output and "Traceback" not in output, output
