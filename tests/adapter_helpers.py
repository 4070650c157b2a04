"""Helpers shared by the adapter tests: requests, event collection, fixtures' parts."""
from __future__ import annotations

import json
import socket
from typing import Any, AsyncIterator

import orjson

from privatai.adapters import create_adapter
from privatai.adapters.base import Adapter
from privatai.config import BackendConfig
from privatai.core.events import Event, Finish, TextDelta, ThinkingDelta, ToolCallDelta, Usage
from privatai.core.protocol import ChatRequest, parse_chat_request
from tests.fakes import FakeBackend

API_KEY_ENV = "PRIVATAI_TEST_UPSTREAM_KEY"
API_KEY = "sk-test-upstream-key"

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a place.",
        "parameters": {
            "type": "object",
            "properties": {
                "place": {"type": "object", "properties": {"city": {"type": "string"},
                                                           "country": {"type": "string"}},
                          "required": ["city"]},
                "unit": {"anyOf": [{"enum": ["C", "F"]}, {"type": "null"}], "default": "C"},
            },
            "required": ["place"],
            "additionalProperties": False,
        },
    },
}


def chat(messages: list[dict[str, Any]] | str, **fields: Any) -> ChatRequest:
    """A validated request, built the way the gateway builds it (from JSON).

    Streamed unless ``stream=False`` is given: most adapter tests are about the
    streaming path, and a non-streamed request takes a different one.
    """
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    fields.setdefault("stream", True)
    return parse_chat_request(orjson.dumps({"model": "m", "messages": messages, **fields}))


def backend_config(fake: FakeBackend, **overrides: Any) -> BackendConfig:
    fields: dict[str, Any] = {"name": f"test-{fake.kind}", "kind": fake.kind, "url": fake.url,
                              "models": ["m"]}
    if fake.kind == "openai":
        fields["api_key_env"] = API_KEY_ENV
    fields.update(overrides)
    return BackendConfig(**fields)


async def started_adapter(config: BackendConfig) -> Adapter:
    adapter = create_adapter(config)
    await adapter.start()
    return adapter


async def collect(stream: AsyncIterator[Event]) -> list[Event]:
    return [event async for event in stream]


def text_of(events: list[Event]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def thinking_of(events: list[Event]) -> str:
    return "".join(e.text for e in events if isinstance(e, ThinkingDelta))


def tool_calls_of(events: list[Event]) -> list[dict[str, Any]]:
    """Tool calls as a client assembles them from fragments (id and name from
    the first fragment, arguments concatenated)."""
    calls: dict[int, dict[str, Any]] = {}
    for event in events:
        if not isinstance(event, ToolCallDelta):
            continue
        if event.index not in calls:
            assert event.id and event.name, f"first fragment lacks id or name: {event}"
            calls[event.index] = {"id": event.id, "name": event.name, "arguments": ""}
        else:
            assert event.id is None and event.name is None, f"id/name repeated: {event}"
        calls[event.index]["arguments"] += event.arguments
    return [{**c, "arguments": json.loads(c["arguments"])} for _, c in sorted(calls.items())]


def finish_of(events: list[Event]) -> str:
    finishes = [e for e in events if isinstance(e, Finish)]
    assert len(finishes) == 1, events
    return finishes[0].reason


def usage_of(events: list[Event]) -> Usage | None:
    usages = [e for e in events if isinstance(e, Usage)]
    assert len(usages) <= 1
    return usages[0] if usages else None


def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
