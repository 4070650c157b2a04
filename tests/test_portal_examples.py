"""The documentation's examples, pasted: each snippet is taken from the docs
page a live gateway serves (on the real embedded model) and run as a visitor
would, with only ``PRIVATAI_API_KEY`` set, as the page tells them to.

curl through bash, Python with this interpreter (it has ``openai`` and
``httpx``, the page's prerequisites), JavaScript with node after
``npm install openai`` into a temp directory (skipped, with the reason, when
node or the npm registry is not there).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.gateway import Gateway
from tests.node_sdk import Node, install_openai
from tests.portal_helpers import example_files, parse

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m"
RUN_TIMEOUT = 240
# The routes the page documents, as the OpenAPI snippets list them: a route
# added to the API fails the openapi checks until the page documents it too.
DOCUMENTED = ("POST /api/v1/chat/completions", "POST /api/v1/completions", "POST /api/v1/embeddings",
              "POST /api/v1/responses", "GET /api/v1/models", "GET /api/v1/models/{model_id}",
              "GET /api/v1/usage", "GET /api/v1/openapi.json", "GET /healthz", "GET /readyz")


@pytest.fixture(scope="module")
def examples(embedded_gateway: Gateway) -> dict[str, str]:
    response = httpx.get(embedded_gateway.url + "/en/docs", timeout=30)
    assert response.status_code == 200
    found = parse(response.text).examples
    assert set(found) == example_files()
    return found


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Node:
    """A directory with the openai npm package installed, or why there is none."""
    return install_openai(tmp_path_factory.mktemp("node-examples"))


def run(command: list[str], key: str, cwd: Path) -> str:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=RUN_TIMEOUT,
                            env={**os.environ, "PRIVATAI_API_KEY": key})
    assert result.returncode == 0, f"{command}: exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def check_output(name: str, out: str) -> None:
    """What each topic's snippet prints in Python and JavaScript."""
    topic = name.split(".")[0]
    assert out.strip(), f"{name} printed nothing"
    if topic in ("chat", "chat-stream"):
        assert "tokens" in out and len(out.strip().splitlines()[0]) > 0
    elif topic == "models":
        assert out.count(MODEL) >= 2  # in the list, and retrieved
    elif topic == "usage":
        assert "tokens_used" in out and "completion_tokens" in out and "models" in out
    elif topic == "health":
        assert "ok" in out and "ready" in out
    elif topic in ("completions", "responses", "responses-stream"):
        *text, usage = out.strip().splitlines()
        assert "".join(text).strip(), f"{name} printed no answer"
        assert tokens(usage) > 0
    elif topic == "embeddings":
        *vectors, usage = out.strip().splitlines()
        assert len(vectors) == 2 and tokens(usage) > 0  # one vector per input
        sizes = set()
        for line in vectors:
            size, _, head = line.partition(" dimensions: ")
            sizes.add(int(size))
            assert len([float(x) for x in head.strip("[]").split(",")]) == 3
        assert len(sizes) == 1 and sizes.pop() > 0
    elif topic == "openapi":
        title, *operations = out.strip().splitlines()
        assert title.startswith("PrivatAI ") and title.endswith(" OpenAPI 3.1.0")
        assert set(operations) == set(DOCUMENTED)


def tokens(line: str) -> int:
    """N of the ``[N tokens]`` line the snippets print last."""
    assert line.startswith("[") and line.endswith(" tokens]"), line
    return int(line[1:-len(" tokens]")])


def sse_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    """The (event, data) pairs of a Responses API stream as curl printed it."""
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        assert {"event", "data"} <= set(fields), f"not an SSE event: {block[:200]}"
        events.append((fields["event"], json.loads(fields["data"])))
    return events


def response_text(response: dict[str, Any]) -> str:
    """The answer's text in a Responses API ``response`` object."""
    return "".join(part["text"] for item in response["output"] if item["type"] == "message"
                   for part in item["content"] if part["type"] == "output_text")


def assert_finished(status: str, response: dict[str, Any]) -> None:
    """A whole answer, or one cut at ``max_output_tokens`` (the snippets' limit), with its usage."""
    assert response["status"] == status
    assert status == "completed" or (status == "incomplete"
                                     and response["incomplete_details"] == {"reason": "max_output_tokens"})
    assert response["usage"]["output_tokens"] > 0 and response["usage"]["total_tokens"] > 0


def json_documents(text: str) -> list[Any]:
    """The JSON bodies curl printed one after the other."""
    decoder, documents, position = json.JSONDecoder(), [], 0
    text = text.strip()
    while position < len(text):
        document, end = decoder.raw_decode(text, position)
        documents.append(document)
        position = end
        while position < len(text) and text[position].isspace():
            position += 1
    return documents


@pytest.mark.parametrize("name", sorted(n for n in example_files() if n.endswith(".sh")))
def test_curl_example(name: str, examples: dict[str, str], api_key: str, tmp_path: Path) -> None:
    out = run(["bash", "-c", examples[name]], api_key, tmp_path)
    topic = name.split(".")[0]
    if topic == "chat-stream":
        data = [line[6:] for line in out.splitlines() if line.startswith("data: ")]
        assert data[-1] == "[DONE]"
        chunks = [json.loads(d) for d in data[:-1]]
        assert not [c for c in chunks if "error" in c]
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        assert text and len(chunks) > 2, "answered token by token"
        assert chunks[-1]["usage"]["completion_tokens"] > 0
        return
    if topic == "responses-stream":
        events = sse_events(out)
        assert all(event == data["type"] for event, data in events)
        assert events[0][0] == "response.created"
        deltas = [data["delta"] for event, data in events if event == "response.output_text.delta"]
        assert len(deltas) > 1 and "".join(deltas), "answered piece by piece"
        last, data = events[-1]
        assert_finished(last.removeprefix("response."), data["response"])
        assert response_text(data["response"]) == "".join(deltas)
        return
    documents = json_documents(out)
    assert not [d for d in documents if d.get("error") is not None], documents  # a response has "error": null
    if topic in ("chat", "conversation"):
        (completion,) = documents
        assert completion["choices"][0]["message"]["content"]
        assert completion["model"] == MODEL and completion["usage"]["total_tokens"] > 0
    elif topic == "models":
        listing, model = documents
        assert MODEL in [m["id"] for m in listing["data"]] and model["id"] == MODEL
    elif topic == "usage":
        (usage,) = documents
        assert {"tokens_used", "prompt_tokens", "completion_tokens", "requests", "last_used", "models"} <= set(usage)
    elif topic == "health":
        healthz, readyz = documents
        assert healthz == {"status": "ok"} and readyz["status"] == "ready"
    elif topic == "completions":
        (completion,) = documents
        assert completion["object"] == "text_completion" and completion["choices"][0]["text"]
        assert completion["model"] == MODEL and completion["usage"]["completion_tokens"] > 0
    elif topic == "embeddings":
        (result,) = documents
        vectors = [item["embedding"] for item in result["data"]]
        assert len(vectors) == 2 and result["model"] == MODEL and result["usage"]["prompt_tokens"] > 0
        assert len(vectors[0]) == len(vectors[1]) > 0 and all(isinstance(x, float) for v in vectors for x in v)
    elif topic == "responses":
        (response,) = documents
        assert response["object"] == "response" and response_text(response)
        assert_finished(response["status"], response)
    elif topic == "openapi":
        (spec,) = documents
        assert spec["openapi"].startswith("3.1")
        assert {f"{method.upper()} {path}" for path, ops in spec["paths"].items() for method in ops} == set(DOCUMENTED)
    else:
        pytest.fail(f"no check for {name}")


@pytest.mark.parametrize("name", sorted(n for n in example_files() if n.endswith(".py")))
def test_python_example(name: str, examples: dict[str, str], api_key: str, tmp_path: Path) -> None:
    script = tmp_path / name
    script.write_text(examples[name], encoding="utf-8")
    check_output(name, run([sys.executable, str(script)], api_key, tmp_path))


@pytest.mark.parametrize("name", sorted(n for n in example_files() if n.endswith(".mjs")))
def test_javascript_example(name: str, examples: dict[str, str], api_key: str, node: Node) -> None:
    reason = node.openai_missing if ".openai." in name else node.missing
    if reason is not None:
        pytest.skip(reason)
    script = node.directory / name
    script.write_text(examples[name], encoding="utf-8")
    check_output(name, run(["node", str(script)], api_key, node.directory))
