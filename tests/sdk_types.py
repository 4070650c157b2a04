"""Parse our output with the official ``openai`` SDK's own pydantic models.

The SDK's models accept unknown keys (``extra="allow"``), so a misspelt field
would pass unnoticed; :func:`strict` also fails on any key the SDK does not
declare, anywhere in the tree.
"""
from __future__ import annotations

from typing import Any, TypeVar, get_args

import pydantic
from openai.types.responses import ResponseStreamEvent

M = TypeVar("M", bound=pydantic.BaseModel)


def _undeclared(model: Any, path: str) -> list[str]:
    found: list[str] = []
    if isinstance(model, pydantic.BaseModel):
        found += [f"{path}.{key}" for key in (model.model_extra or {})]
        for name in type(model).model_fields:
            found += _undeclared(getattr(model, name), f"{path}.{name}")
    elif isinstance(model, (list, tuple)):
        for i, value in enumerate(model):
            found += _undeclared(value, f"{path}[{i}]")
    elif isinstance(model, dict):
        for key, value in model.items():
            found += _undeclared(value, f"{path}[{key!r}]")
    return found


def strict(cls: type[M], data: Any) -> M:
    """``data`` validated as ``cls``; fails on any key the SDK does not know."""
    model = cls.model_validate(data)
    undeclared = _undeclared(model, cls.__name__)
    assert not undeclared, f"keys the SDK does not declare: {undeclared}"
    return model


def _stream_event_classes() -> dict[str, type[pydantic.BaseModel]]:
    union = get_args(ResponseStreamEvent)[0]
    return {get_args(cls.model_fields["type"].annotation)[0]: cls for cls in get_args(union)}


STREAM_EVENTS = _stream_event_classes()


def stream_event(data: dict[str, Any]) -> pydantic.BaseModel:
    """One Responses stream event, as the SDK class its ``type`` names."""
    return strict(STREAM_EVENTS[data["type"]], data)
