"""Bounds on client JSON: how deep it nests and how large its integers are.

A request is decoded once, by msgspec, and everything kept from it is later
re-encoded by orjson (to an upstream, for token counting), which refuses
integers outside 64 bits and nesting beyond 254 levels. So the bounds are
checked at decode, where a violation is still a 400 naming the field:

* typed integers (``max_tokens``, ``seed``) carry :data:`Int64` bounds in their
  msgspec type;
* free-form values (a tool's JSON schema, a tool choice) cannot be bounded by
  type, so :func:`check_free_form` re-encodes them once, at C speed, nested
  inside enough lists that orjson itself refuses anything deeper than
  :data:`MAX_DEPTH`;
* a body nested deeper than the decoder's recursion limit (about 900 levels,
  even in a field that is ignored) raises RecursionError inside msgspec;
  :func:`too_deep_at` then finds where, so the 400 can name it.
"""
from __future__ import annotations

import re
from typing import Annotated, Any, Iterable

import msgspec
import orjson

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
Int64 = Annotated[int, msgspec.Meta(ge=INT64_MIN, le=INT64_MAX)]

# Levels a free-form value may nest (a JSON schema rarely needs ten).
MAX_DEPTH = 64
# The most levels orjson encodes; it raises "Recursion limit reached" past them
# (tests/test_json_bounds.py pins it, so an orjson upgrade cannot loosen MAX_DEPTH unseen).
ORJSON_MAX_DEPTH = 254
# Scanning a pathological body for the field to name is bounded; past this
# many tokens the 400 names no field rather than keep the event loop busy.
LOCATE_BUDGET = 200_000

_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{},:]')


class BoundsError(ValueError):
    """A value out of bounds: ``path`` names it (msgspec style), ``reason`` says why."""

    def __init__(self, path: str | None, reason: str) -> None:
        super().__init__(reason)
        self.path = path
        self.reason = reason


def _nested(value: object, levels: int) -> object:
    for _ in range(levels):
        value = [value]
    return value


def _within_bounds(value: object, levels: int = MAX_DEPTH) -> str | None:
    """None when ``value`` nests at most ``levels`` levels and holds only 64-bit
    integers, else the reason."""
    try:
        orjson.dumps(_nested(value, ORJSON_MAX_DEPTH - levels))
    except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
        if "ecursion" in str(exc):
            return f"nested deeper than {MAX_DEPTH} levels"
        return "holds an integer outside the 64-bit range"
    return None


def check_free_form(values: Iterable[tuple[str, object]]) -> None:
    """Raise :class:`BoundsError` for the first ``(path, value)`` out of bounds.

    All values are checked in one orjson call; only when that fails are they
    checked one by one to name the culprit.
    """
    values = list(values)
    # The list around the values is one level more.
    if not values or _within_bounds([value for _, value in values], MAX_DEPTH + 1) is None:
        return
    for path, value in values:
        reason = _within_bounds(value)
        if reason is not None:
            raise BoundsError(path, reason)


def too_deep_at(body: bytes, limit: int = MAX_DEPTH) -> str | None:
    """The path (``tools[0].function.parameters.a``) of the first value nested
    deeper than ``limit`` levels in a JSON body, or None if none is found within
    :data:`LOCATE_BUDGET` tokens."""
    path: list[str | int | None] = []  # per open container: the member being read
    arrays: list[bool] = []
    key: bytes = b""
    for count, match in enumerate(_TOKEN.finditer(body)):
        if count >= LOCATE_BUDGET:
            return None
        token = match.group()
        first = token[:1]
        if first == b'"':
            key = token
        elif first in b"[{":
            if len(arrays) >= limit:
                return _format(path)
            arrays.append(first == b"[")
            path.append(0 if first == b"[" else None)
        elif first in b"]}":
            if arrays:
                arrays.pop()
                path.pop()
        elif first == b":" and arrays and not arrays[-1]:
            path[-1] = _key(key)
        elif first == b"," and arrays and arrays[-1]:
            path[-1] = int(path[-1] or 0) + 1
    return None


def _key(token: bytes) -> str:
    try:
        return str(orjson.loads(token))
    except orjson.JSONDecodeError:
        return "?"


def _format(path: list[str | int | None]) -> str:
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part is not None:
            text += f".{part}" if text else part
    return text
