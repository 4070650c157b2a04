"""Request bodies into typed msgspec structs, with OpenAI-shaped 400s.

msgspec's errors end in the path of the offending field (`` - at `$.input[0]` ``);
that path becomes the error's ``param``, so every endpoint names the field the
same way without hand-written checks.
"""
from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec

from privatai.errors import InvalidRequest

T = TypeVar("T")

_PATH = re.compile(r" - at `\$\.?([^`]*)`$")
_json = msgspec.json.Decoder()


def invalid_body(exc: msgspec.ValidationError) -> InvalidRequest:
    """A msgspec validation error as a 400 whose ``param`` is the field's path."""
    text = str(exc)
    match = _PATH.search(text)
    # msgspec writes a map's key as "[...]": the map itself is the parameter.
    param = match.group(1).replace("[...]", "") if match and match.group(1) else None
    if text.startswith("Object missing required field"):
        field = text.split("`")[1]
        param = f"{param}.{field}" if param else field
    return InvalidRequest(f"Invalid request body: {text}", param=param)


def decode_json(body: bytes, expected: str) -> Any:
    """The body as plain JSON values; ``expected`` names what an empty body lacks."""
    if not body:
        raise InvalidRequest(f"Request body is empty; expected a JSON object with {expected}.")
    try:
        return _json.decode(body)
    except msgspec.DecodeError:
        raise InvalidRequest("Request body is not valid JSON.") from None


def convert(value: Any, type_: type[T]) -> T:
    """Plain JSON values into ``type_``, or a 400 naming the field."""
    if not isinstance(value, dict):
        raise InvalidRequest("Request body must be a JSON object.")
    try:
        return msgspec.convert(value, type_)
    except msgspec.ValidationError as exc:
        raise invalid_body(exc) from None


def decode(body: bytes, type_: type[T], expected: str) -> T:
    """Decode and validate one request body."""
    return convert(decode_json(body, expected), type_)


def refuse(param: str, reason: str) -> InvalidRequest:
    """The 400 for a parameter that is valid for OpenAI but not offered here:
    refused by name rather than accepted and silently dropped."""
    return InvalidRequest(f"'{param}' is not supported by this gateway: {reason}", param=param,
                          code="unsupported_parameter")
