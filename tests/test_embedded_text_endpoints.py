"""The embedded adapter's text completions and embeddings on the real SmolLM2 model."""
from __future__ import annotations

import json

import numpy as np
import pytest

from privatai.adapters.embedded import EmbeddedAdapter
from privatai.config import BackendConfig
from privatai.core.completions import parse_completion_request
from privatai.core.embeddings import parse_embeddings_request
from privatai.errors import InvalidRequest, UpstreamRejected
from tests.adapter_helpers import collect, finish_of, text_of

pytestmark = pytest.mark.slow


@pytest.fixture
async def adapter():
    backend = EmbeddedAdapter(BackendConfig(name="embedded", kind="embedded", models=["smollm2-135m"],
                                            n_threads=1, n_ctx=256))
    await backend.start()
    yield backend
    await backend.close()


async def test_completion_continues_the_raw_prompt(adapter: EmbeddedAdapter) -> None:
    request = parse_completion_request(b'{"prompt": "1, 2, 3, 4,", "max_tokens": 6, "temperature": 0, "seed": 1}')
    events = await collect(adapter.complete_text(request, "1, 2, 3, 4,", "m"))
    assert finish_of(events) in ("length", "stop")
    # A chat template would make it answer like an assistant; a raw continuation counts on.
    assert text_of(events).lstrip().startswith("5")
    same = await collect(adapter.complete_text(request, "1, 2, 3, 4,", "m"))
    assert text_of(same) == text_of(events)


async def test_embeddings_are_normalized_and_mean_something(adapter: EmbeddedAdapter) -> None:
    texts = ["The cat sat on the mat.", "A kitten rested on the rug.", "Quarterly tax revenue fell."]
    request = parse_embeddings_request(json.dumps({"input": texts}).encode())
    result = await adapter.embed(request, texts, "m")
    vectors = np.array(result.vectors)
    assert vectors.shape == (3, 576)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > similarity[0, 2] and similarity[0, 1] > similarity[1, 2]
    assert result.prompt_tokens is not None and result.prompt_tokens >= 15
    # Chat still works alongside (the two contexts share the lock, not state).
    again = await adapter.embed(request, texts[:1], "m")
    assert np.allclose(again.vectors[0], result.vectors[0], atol=1e-5)


async def test_embedding_refusals(adapter: EmbeddedAdapter) -> None:
    with pytest.raises(InvalidRequest) as info:
        request = parse_embeddings_request(b'{"input": "x", "dimensions": 8}')
        await adapter.embed(request, ["x"], "m")
    assert info.value.param == "dimensions"
    request = parse_embeddings_request(b'{"input": "x"}')
    with pytest.raises(UpstreamRejected):
        await adapter.embed(request, ["word " * 400], "m")  # over n_ctx: refused, never cut
