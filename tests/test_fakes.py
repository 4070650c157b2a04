"""The fakes themselves: the threaded mode the end-to-end tests use with blocking clients."""
from __future__ import annotations

import json
import urllib.request

from privatai.core.events import TextDelta
from tests.fakes import FakeOllama, FakeVLLM


def _post(url: str, body: dict[str, object]) -> str:
    request = urllib.request.Request(url, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.read().decode()


def test_threaded_fakes_serve_a_blocking_client() -> None:
    with FakeVLLM() as vllm, FakeOllama() as ollama:
        vllm.reply(TextDelta("Hi"), usage=(3, 1))
        sse = _post(vllm.url + "/v1/chat/completions",
                    {"model": "m", "messages": [], "stream": True, "stream_options": {"include_usage": True}})
        ollama.reply(TextDelta("Hallo"))
        ndjson = _post(ollama.url + "/api/chat", {"model": "m", "messages": []})
    assert '"content": "Hi"' in sse
    assert '"usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}' in sse
    assert sse.endswith("data: [DONE]\n\n")
    lines = [json.loads(line) for line in ndjson.splitlines()]
    assert lines[0]["message"]["content"] == "Hallo"
    assert lines[-1]["done"] is True and lines[-1]["done_reason"] == "stop"
    assert vllm.chat_bodies == [{"model": "m", "messages": [], "stream": True,
                                 "stream_options": {"include_usage": True}}]
