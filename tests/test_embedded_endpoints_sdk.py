"""Embeddings, legacy completions and the Responses API on the real embedded
model, through the gateway, with the official SDK."""
from __future__ import annotations

import math

import httpx
import openai
import pytest

from tests.gateway import Gateway

pytestmark = pytest.mark.slow
MODEL = "smollm2-135m"


@pytest.fixture(scope="module")
def client(embedded_gateway: Gateway, api_key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=embedded_gateway.base_url, api_key=api_key, max_retries=0, timeout=120)


def test_embeddings_are_unit_vectors_that_tell_texts_apart(client: openai.OpenAI) -> None:
    texts = ["The cat sat on the mat.", "A kitten was sitting on the rug.", "Quarterly tax filing deadlines"]
    answer = client.embeddings.create(model=MODEL, input=texts)
    vectors = [d.embedding for d in answer.data]
    assert len(vectors) == 3 and len({len(v) for v in vectors}) == 1
    assert all(math.isclose(sum(x * x for x in v), 1.0, rel_tol=1e-3) for v in vectors)

    def cosine(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b))

    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2])
    assert answer.usage.prompt_tokens > 0 and answer.usage.total_tokens == answer.usage.prompt_tokens


def test_completion_and_response(client: openai.OpenAI, embedded_gateway: Gateway, api_key: str) -> None:
    completion = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=5,
                                           temperature=0, seed=1)
    assert completion.choices[0].text.strip() and completion.usage.completion_tokens <= 5
    chunks = list(client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=5,
                                            temperature=0, seed=1, stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == completion.choices[0].text
    response = client.responses.create(model=MODEL, input="Say hello.", max_output_tokens=8)
    assert response.output_text and response.usage.output_tokens <= 8
    with httpx.Client() as http:
        usage = http.get(f"{embedded_gateway.base_url}/usage", headers={"Authorization": f"Bearer {api_key}"}).json()
    assert usage["requests"] >= 4
