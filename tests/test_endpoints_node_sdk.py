"""The openai npm package (openai-node) against embeddings, legacy
completions and the Responses API, streamed and not, through a live gateway
on a vLLM-kind fake. Skipped, with the reason, without node or the npm
registry."""
from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from privatai.core.events import TextDelta
from tests.fakes.endpoints import fake_vector, prompt_count
from tests.gateway import local_gateway_on_fake
from tests.node_sdk import Node, install_openai

SCRIPT = """
import OpenAI from "openai";
const client = new OpenAI({ baseURL: process.env.BASE_URL, apiKey: process.env.KEY, maxRetries: 0 });
const model = "public-model";
const out = {};
const embeddings = await client.embeddings.create({ model, input: ["first text", "second text"] });
out.embeddings = embeddings.data.map((d) => d.embedding);
out.embeddingTokens = embeddings.usage.prompt_tokens;
out.completion = (await client.completions.create({ model, prompt: "Once", max_tokens: 5 })).choices[0].text;
out.completionStreamed = "";
for await (const chunk of await client.completions.create({ model, prompt: "Once", stream: true })) {
  out.completionStreamed += chunk.choices[0]?.text ?? "";
}
out.response = (await client.responses.create({ model, input: "Hi", instructions: "Be brief." })).output_text;
const stream = client.responses.stream({ model, input: "Hi" });
out.streamKinds = [];
for await (const event of stream) out.streamKinds.push(event.type);
out.streamText = (await stream.finalResponse()).output_text;
try {
  await client.responses.create({ model, input: "Hi", store: true });
  out.stored = "accepted";
} catch (error) {
  out.stored = [error.status, error.constructor.name, error.param];
}
console.log(JSON.stringify(out));
"""


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Node:
    return install_openai(tmp_path_factory.mktemp("node-sdk"))


async def test_openai_node_against_the_new_endpoints(node: Node, tmp_path: Path) -> None:
    if node.openai_missing is not None:
        pytest.skip(node.openai_missing)
    script = node.directory / "endpoints.mjs"
    script.write_text(SCRIPT, encoding="utf-8")
    async with local_gateway_on_fake("vllm", tmp_path, "public-model") as (fake, gateway):
        key = await gateway.key()
        for text in ("a completion", "a streamed completion", "a response", "a streamed response"):
            fake.reply(*(TextDelta(word + " ") for word in text.split()))
        process = await asyncio.create_subprocess_exec(
            "node", str(script), cwd=node.directory, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env={**os.environ, "BASE_URL": gateway.base_url, "KEY": key})
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode == 0, stderr.decode()
    out = json.loads(stdout)
    # The npm package asks for base64 and decodes it: the floats come back exact.
    assert out["embeddings"] == [fake_vector("first text"), fake_vector("second text")]
    assert out["embeddingTokens"] == prompt_count(["first text", "second text"])
    assert out["completion"] == "a completion "
    assert out["completionStreamed"] == "a streamed completion "
    assert out["response"] == "a response "
    assert out["streamKinds"][0] == "response.created" and out["streamKinds"][-1] == "response.completed"
    assert "response.output_text.delta" in out["streamKinds"] and out["streamText"] == "a streamed response "
    assert out["stored"] == [400, "BadRequestError", "store"]
