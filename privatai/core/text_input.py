"""Text inputs that OpenAI lets clients send as strings or as token arrays.

``input`` (embeddings) and ``prompt`` (legacy completions) may be a string, a
list of strings, one token array or a list of token arrays. Token arrays are
what clients such as LangChain send after tokenizing with tiktoken's
``cl100k_base``; those ids mean nothing to a local model's own vocabulary, so
they are decoded back to the text the client meant (with the same offline
``cl100k_base`` as metering) and every backend receives text.
"""
from __future__ import annotations

from typing import Annotated, Any, Union

import msgspec

from privatai.core import tokens
from privatai.errors import InvalidRequest

TokenId = Annotated[int, msgspec.Meta(ge=0)]
TokenArray = Annotated[list[TokenId], msgspec.Meta(min_length=1)]


def text_inputs(max_items: int) -> Any:
    """The msgspec type of such an input with at most ``max_items`` entries.

    msgspec allows one array type per union, so the list's items are the
    union (strings, token ids, token arrays); :func:`texts_of` refuses mixes.
    """
    return Union[str, Annotated[list[Union[str, TokenId, TokenArray]],
                                msgspec.Meta(min_length=1, max_length=max_items)]]


def texts_of(value: str | list[str | int | list[int]], param: str) -> list[str]:
    """The inputs as text, in order, token arrays decoded."""
    if isinstance(value, str):
        return [value]
    if all(isinstance(item, str) for item in value):
        return list(value)  # type: ignore[arg-type]
    if all(isinstance(item, int) for item in value):
        return [_detokenize(value, param)]  # type: ignore[arg-type]
    if all(isinstance(item, list) for item in value):
        return [_detokenize(item, f"{param}[{i}]") for i, item in enumerate(value)]  # type: ignore[arg-type]
    raise InvalidRequest(f"'{param}' must be a string, a list of strings, one token array or "
                         "a list of token arrays, not a mix.", param=param)


def _detokenize(ids: list[int], param: str) -> str:
    encoding = tokens.encoding()
    if max(ids) >= encoding.n_vocab:
        raise InvalidRequest(f"Token ids must be cl100k_base ids below {encoding.n_vocab}.", param=param)
    try:
        return encoding.decode(ids, errors="strict")
    except (KeyError, UnicodeDecodeError):
        raise InvalidRequest("The token ids do not decode to text in cl100k_base.", param=param) from None
