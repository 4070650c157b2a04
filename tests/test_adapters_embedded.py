"""The embedded adapter's mapping of llama-cpp-python's chunks, with a scripted
stand-in for the model (``tests/fakes/llama.py``): the real model cannot be
told to write think tags or to end a tool call with ``stop``. The real model
runs in ``test_embedded_adapter.py``."""
from __future__ import annotations

from pathlib import Path
from typing import AsyncIterator

import pytest

from privatai.adapters.base import Adapter
from privatai.config import BackendConfig
from privatai.core.events import Finish, TextDelta, ThinkingDelta, ToolCallDelta
from tests.adapter_helpers import WEATHER_TOOL, chat, collect, finish_of, started_adapter, text_of, thinking_of, \
    tool_calls_of
from tests.fakes.llama import FakeLlama

llama_cpp = pytest.importorskip("llama_cpp")


@pytest.fixture
async def embedded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[FakeLlama, Adapter]]:
    fake = FakeLlama()
    monkeypatch.setattr(llama_cpp, "Llama", fake.load)
    model = tmp_path / "fake.gguf"
    model.write_bytes(b"GGUF")
    adapter = await started_adapter(BackendConfig(name="embedded", kind="embedded", models=["m"],
                                                  model_path=str(model), think_tags=True))
    yield fake, adapter
    await adapter.close()


async def test_think_tags_become_thinking(embedded: tuple[FakeLlama, Adapter]) -> None:
    fake, adapter = embedded
    fake.reply(TextDelta("<th"), TextDelta("ink>\nWeighing it.</think>\n\nHi"), TextDelta(" there."))
    events = await collect(adapter.stream(chat("Hi?"), "m"))
    assert thinking_of(events) == "Weighing it."
    assert text_of(events) == "Hi there."
    assert isinstance(events[0], ThinkingDelta)
    assert events[-1] == Finish("stop")
    assert fake.resets == 1


async def test_tool_call_ending_with_stop_reports_tool_calls(embedded: tuple[FakeLlama, Adapter]) -> None:
    fake, adapter = embedded
    fake.reply(ToolCallDelta(0, name="get_weather", arguments='{"place": {"city": "Bonn"}}'), finish="stop")
    events = await collect(adapter.stream(chat("Bonn?", tools=[WEATHER_TOOL]), "m"))
    [call] = tool_calls_of(events)
    assert call["name"] == "get_weather" and call["arguments"] == {"place": {"city": "Bonn"}}
    assert finish_of(events) == "tool_calls"
    assert fake.calls[-1]["tools"] == [WEATHER_TOOL]


async def test_non_streamed_request_gets_the_same_events(embedded: tuple[FakeLlama, Adapter]) -> None:
    fake, adapter = embedded
    fake.reply(TextDelta("Hel"), TextDelta("lo"), finish="length")
    events = await collect(adapter.stream(chat("Hi", stream=False), "m"))
    assert events == [TextDelta("Hel"), TextDelta("lo"), Finish("length")]
