"""Embeddings from a GGUF model with llama.cpp (llama-cpp-python), in process.

No PyPI package ships a GGUF embedding model, so the embedded backend embeds
with the model it already runs (SmolLM2 by default): a second llama.cpp
context in embedding mode over the same file. A model made for embeddings
(``model_path`` to, say, a nomic-embed or bge GGUF) brings its own pooling; a
chat model has none, so its token states are mean-pooled, as Ollama does for
such models. Vectors are L2-normalized like OpenAI's, llama-server's and
Ollama's, so a dot product is the cosine similarity.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from privatai.errors import UpstreamRejected


def load_embedder(path: Path, n_ctx: int, threads: int) -> Any:
    """A llama.cpp context in embedding mode over the GGUF file at ``path``.

    ``n_ctx`` is also the batch size: one input up to the context length is
    embedded in one pass, and a longer one is refused, never cut.
    """
    import llama_cpp

    settings = {"model_path": str(path), "embedding": True, "n_ctx": n_ctx, "n_batch": n_ctx,
                "n_ubatch": n_ctx, "n_threads": threads, "n_threads_batch": threads, "verbose": False}
    llm = llama_cpp.Llama(**settings)
    if llm.pooling_type() == llama_cpp.LLAMA_POOLING_TYPE_NONE:
        llm.close()
        llm = llama_cpp.Llama(**settings, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN)
    return llm


def embed(llm: Any, texts: list[str]) -> tuple[list[list[float]], int]:
    """The normalized vectors of ``texts`` in order, and the tokens they took."""
    try:
        vectors, count = llm.embed(texts, normalize=True, truncate=False, return_count=True)
    except ValueError:
        # llama-cpp-python's message names the token count, not the text.
        raise UpstreamRejected("An input is longer than the embedding model's context.") from None
    return vectors, count
