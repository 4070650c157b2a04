"""OpenAI embeddings: request validation and the ``list`` of ``embedding`` objects.

``input`` is a string, a list of strings or token arrays (decoded to text, see
:mod:`privatai.core.text_input`); every backend receives text.
"""
from __future__ import annotations

import base64
import struct
from dataclasses import dataclass
from typing import Annotated, Literal, Union

import msgspec

from privatai.core.json_bounds import INT64_MAX
from privatai.core.text_input import text_inputs, texts_of
from privatai.core.validation import decode
from privatai.errors import InvalidRequest

# OpenAI's own limit on the number of inputs in one request.
MAX_INPUTS = 2048
EmbeddingInput = text_inputs(MAX_INPUTS)


class EmbeddingsRequest(msgspec.Struct, kw_only=True):
    """A validated ``POST /embeddings`` body."""

    input: EmbeddingInput
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, msgspec.Meta(ge=1, le=INT64_MAX)] | None = None
    # An end-user id for abuse monitoring at OpenAI; nothing here keeps it.
    user: str | None = None

    def texts(self) -> list[str]:
        """The inputs as text, in order; empty strings are refused as OpenAI does."""
        texts = texts_of(self.input, "input")
        for i, text in enumerate(texts):
            if not text:
                raise InvalidRequest("Embedding inputs must not be empty strings.",
                                     param="input" if isinstance(self.input, str) else f"input[{i}]")
        return texts


@dataclass(slots=True)
class EmbeddingResult:
    """What a backend returns: one vector per input, in order, and the prompt
    tokens it reports (None: count them)."""

    vectors: list[list[float]]
    prompt_tokens: int | None = None


def parse_embeddings_request(body: bytes) -> EmbeddingsRequest:
    request = decode(body, EmbeddingsRequest, "'input'")
    request.texts()  # empty strings and unknown token ids are a 400 before any routing
    return request


class Embedding(msgspec.Struct):
    index: int
    # A list of floats, or with ``encoding_format: base64`` the little-endian
    # float32 bytes in base64, as OpenAI sends them (the Python SDK asks for it).
    embedding: Union[list[float], str]
    object: Literal["embedding"] = "embedding"


class EmbeddingsUsage(msgspec.Struct):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(msgspec.Struct):
    data: list[Embedding]
    model: str
    usage: EmbeddingsUsage
    object: Literal["list"] = "list"


def encode_vector(vector: list[float], encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
    return vector


def embeddings_response(vectors: list[list[float]], model: str, prompt_tokens: int,
                        encoding_format: str) -> bytes:
    """The response body for ``vectors`` in input order."""
    return msgspec.json.encode(EmbeddingsResponse(
        data=[Embedding(index=i, embedding=encode_vector(v, encoding_format)) for i, v in enumerate(vectors)],
        model=model,
        usage=EmbeddingsUsage(prompt_tokens=prompt_tokens, total_tokens=prompt_tokens),
    ))
