"""The product page's own chat examples (curl, Python requests, JavaScript
fetch), run verbatim against a live gateway: only the URL and the key are
substituted. They send no ``stream`` field and read SSE lines, so what they
print depends on ``server.stream_by_default``: with it (the operator's choice
for such clients) they print the answer; without it (OpenAI's semantics,
the default) they get one JSON answer and the two SSE readers print nothing.
The OpenAI SDK gets JSON either way, as it asks for JSON. The JavaScript
example, once it has printed the answer, throws on the final ``data:
[DONE]`` line (it JSON.parses every data line): asserted as it happens.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import httpx
import openai
import pytest

from privatai.core.events import TextDelta
from tests.fakes import FAKES, FakeBackend
from tests.gateway import Gateway

SEED_URL = "https://privatai.com/api/v1/chat/completions"
SEED_KEY = "YOUR_API_KEY"

# Line breaks restored (the page shows each example on one line); nothing else changed.
CURL = """curl -X POST https://privatai.com/api/v1/chat/completions \\
  -H "Authorization: Bearer YOUR_API_KEY" \\
  -H "Content-Type: application/json" \\
  -d '{"messages": [{"role": "user", "content": "What is machine learning?"}]}'
"""

PYTHON = '''import requests
import json

API_KEY = "YOUR_API_KEY"
URL = "https://privatai.com/api/v1/chat/completions"

def chat(messages):
    response = requests.post(
        URL,
        headers={
            "Authorization": f"Bearer {API_KEY}",
            "Content-Type": "application/json"
        },
        json={"messages": messages},
        stream=True
    )
    for line in response.iter_lines():
        if line.startswith(b"data: "):
            data = json.loads(line[6:])
            if data.get("choices") and data["choices"][0].get("delta", {}).get("content"):
                print(data["choices"][0]["delta"]["content"], end="", flush=True)
            if data.get("choices") and data["choices"][0].get("finish_reason"):
                print()
                return data.get("usage")

chat([{"role": "user", "content": "Explain quantum computing in simple terms."}])
'''

JAVASCRIPT = """const API_KEY = 'YOUR_API_KEY';

async function chat(messages) {
  const response = await fetch('https://privatai.com/api/v1/chat/completions', {
    method: 'POST',
    headers: {
      'Authorization': `Bearer ${API_KEY}`,
      'Content-Type': 'application/json'
    },
    body: JSON.stringify({ messages })
  });
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  while (true) {
    const { done, value } = await reader.read();
    if (done) break;
    const chunk = decoder.decode(value);
    for (const line of chunk.split('\\n')) {
      if (line.startsWith('data: ')) {
        const data = JSON.parse(line.slice(6));
        if (data.choices && data.choices[0]?.delta?.content) process.stdout.write(data.choices[0].delta.content);
        if (data.choices && data.choices[0]?.finish_reason) console.log();
      }
    }
  }
}

chat([{ role: 'user', content: 'What is the meaning of life?' }]);
"""


class Served:
    def __init__(self, fake: FakeBackend, gateway: Gateway, key: str, stream_by_default: bool) -> None:
        self.fake, self.gateway, self.key, self.stream_by_default = fake, gateway, key, stream_by_default

    def substituted(self, source: str) -> str:
        return source.replace(SEED_URL, f"{self.gateway.url}/api/v1/chat/completions").replace(SEED_KEY, self.key)

    def run(self, argv: list[str], source: str, suffix: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
        script = tmp_path / f"example{suffix}"
        script.write_text(self.substituted(source))
        return subprocess.run([*argv, str(script)], capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module", params=[False, True], ids=["openai-default", "stream-by-default"])
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with FAKES["vllm"]() as fake:
        config: dict[str, Any] = {
            "backends": [{"name": "vllm-1", "kind": "vllm", "url": fake.url,
                          "models": [{"name": "chat-model", "upstream": "fake-model"}]}],
            "server": {"stream_by_default": request.param}}
        gateway = Gateway(tmp_path_factory.mktemp("gw-seed"), config)
        key = gateway.create_key()
        with gateway:
            yield Served(fake, gateway, key, request.param)


def test_python_requests_example(served: Served, tmp_path: Path) -> None:
    served.fake.reply(TextDelta("Qubits "), TextDelta("are both."))
    done = served.run([sys.executable], PYTHON, ".py", tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == ("Qubits are both.\n" if served.stream_by_default else "")
    assert served.fake.last_body["stream"] is served.stream_by_default


def test_javascript_fetch_example(served: Served, tmp_path: Path) -> None:
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    served.fake.reply(TextDelta("Forty"), TextDelta("-two."))
    done = served.run(["node"], JAVASCRIPT, ".mjs", tmp_path)
    if served.stream_by_default:
        assert done.stdout == "Forty-two.\n"
        # The example itself then fails on the stream's last line: it reads on
        # after finish_reason and JSON.parses "data: [DONE]", which OpenAI's
        # streams (and ours) end with. A bug of the example, not of the answer.
        assert done.returncode == 1 and '"[DONE]" is not valid JSON' in done.stderr
    else:
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout == ""


def test_curl_example(served: Served, tmp_path: Path) -> None:
    served.fake.reply(TextDelta("Learning "), TextDelta("from data."))
    done = served.run(["bash"], CURL, ".sh", tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    if served.stream_by_default:
        events = [json.loads(line[6:]) for line in out.splitlines()
                  if line.startswith("data: ") and line != "data: [DONE]"]
        assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"]) \
            == "Learning from data."
        assert out.rstrip().endswith("data: [DONE]")
    else:
        completion = json.loads(out)
        assert completion["object"] == "chat.completion"
        assert completion["choices"][0]["message"]["content"] == "Learning from data."


def test_openai_sdk_always_gets_json(served: Served) -> None:
    served.fake.reply(TextDelta("Hi"))
    client = openai.OpenAI(base_url=served.gateway.base_url, api_key=served.key, max_retries=0, timeout=30)
    raw = client.chat.completions.with_raw_response.create(model="chat-model",
                                                           messages=[{"role": "user", "content": "Hi"}])
    assert raw.headers["content-type"].startswith("application/json")
    assert raw.parse().choices[0].message.content == "Hi"


@pytest.mark.parametrize("accept, streamed", [
    ("text/event-stream", True),
    ("application/json, text/event-stream;q=0.5", True),
    ("application/json", False),
    ("text/event-stream;q=0", False),
])
def test_accept_decides_for_a_body_without_stream(served: Served, accept: str, streamed: bool) -> None:
    served.fake.reply(TextDelta("Hi"))
    response = httpx.post(f"{served.gateway.base_url}/chat/completions", timeout=30,
                          headers={"Authorization": f"Bearer {served.key}", "Accept": accept},
                          json={"messages": [{"role": "user", "content": "Hi"}]})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream" if streamed else "application/json")


def test_an_explicit_stream_field_wins(served: Served) -> None:
    served.fake.reply(TextDelta("Hi"))
    response = httpx.post(f"{served.gateway.base_url}/chat/completions", timeout=30,
                          headers={"Authorization": f"Bearer {served.key}", "Accept": "text/event-stream"},
                          json={"messages": [{"role": "user", "content": "Hi"}], "stream": False})
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["choices"][0]["message"]["content"] == "Hi"
