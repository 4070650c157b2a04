"""The scripted backend keeps the adapter contract (``adapters/base.py``) the
router and the handler rely on; tests built on it prove nothing otherwise."""
from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from privatai.config import BackendConfig
from privatai.core.events import Finish, TextDelta, ThinkingDelta, ToolCallDelta, Usage
from privatai.errors import BackendError, BackendUnavailable, UpstreamRejected
from tests.adapter_helpers import chat, collect, finish_of, tool_calls_of, usage_of
from tests.fakes import Drop, ErrorLine, Hang, Raw, Sleep
from tests.scripted import ScriptedAdapter, ScriptedBackend


def adapter(backend: ScriptedBackend, **settings: Any) -> ScriptedAdapter:
    return ScriptedAdapter(BackendConfig(**backend.entry("m", **settings)), backend)


async def test_events_then_finish_and_usage() -> None:
    backend = ScriptedBackend("s")
    backend.reply(ThinkingDelta("hmm"), TextDelta("Hi"), ToolCallDelta(0, name="f", arguments='{"a": 1}'))
    events = await collect(adapter(backend).stream(chat("x"), "m"))
    assert events[:2] == [ThinkingDelta("hmm"), TextDelta("Hi")]
    assert tool_calls_of(events) == [{"id": "call_0", "name": "f", "arguments": {"a": 1}}]
    assert finish_of(events) == "tool_calls" and usage_of(events) == Usage(10, 3)
    assert backend.asked[0].request.messages[0].content == "x" and backend.streams[0].completed


@pytest.mark.parametrize(("step", "before", "after"), [
    (Drop(), BackendUnavailable, BackendError),
    (ErrorLine("crashed"), BackendUnavailable, BackendError),
    (ErrorLine("bad", code=400), UpstreamRejected, BackendError),
])
async def test_failures_before_and_after_the_first_event(step: Any, before: type, after: type) -> None:
    backend = ScriptedBackend("s")
    backend.reply(step)
    with pytest.raises(before):
        await collect(adapter(backend).stream(chat("x"), "m"))
    backend.reply(TextDelta("partial"), step)
    received = []
    with pytest.raises(after) as failed:
        async for event in adapter(backend).stream(chat("x"), "m"):
            received.append(event)
    assert received == [TextDelta("partial")]
    assert type(failed.value) is after  # not a retryable BackendUnavailable once something was sent


async def test_http_errors() -> None:
    backend = ScriptedBackend("s")
    backend.fail(503, "busy")
    backend.fail(400, "too long", error_type="exceed_context_size_error")
    with pytest.raises(BackendUnavailable):
        await collect(adapter(backend).stream(chat("x"), "m"))
    with pytest.raises(UpstreamRejected) as rejected:
        await collect(adapter(backend).stream(chat("x"), "m"))
    assert rejected.value.code == "context_length_exceeded"


async def test_first_token_and_idle_timeouts() -> None:
    backend = ScriptedBackend("s")
    backend.reply(Sleep(5), TextDelta("late"))
    backend.reply(TextDelta("early"), Hang())
    timed = adapter(backend, first_token_timeout=0.05, idle_timeout=0.05)
    with pytest.raises(BackendUnavailable, match="in time"):
        await collect(timed.stream(chat("x"), "m"))
    with pytest.raises(BackendError, match="stopped sending"):
        await collect(timed.stream(chat("x"), "m"))


async def test_a_whole_answer_comes_at_the_end_and_fails_as_a_whole() -> None:
    backend = ScriptedBackend("s")
    backend.reply(TextDelta("a"), Sleep(0.05), TextDelta("b"))
    backend.reply(TextDelta("a"), Drop())
    stream = adapter(backend).stream(chat("x", stream=False), "m")
    first = asyncio.create_task(anext(stream))
    await asyncio.sleep(0.02)
    assert not first.done(), "nothing before the script has ended"
    assert await first == TextDelta("a")
    assert [e async for e in stream][:2] == [TextDelta("b"), Finish("stop")]
    with pytest.raises(BackendUnavailable):
        await collect(adapter(backend).stream(chat("x", stream=False), "m"))


async def test_max_tokens_cuts_the_script_as_a_model_would() -> None:
    backend = ScriptedBackend("s")
    backend.reply(*(TextDelta(f"t{i}") for i in range(10)))
    events = await collect(adapter(backend).stream(chat("x", max_tokens=3), "m"))
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["t0", "t1", "t2"]
    assert finish_of(events) == "length" and usage_of(events) == Usage(10, 3)


async def test_leaving_closes_the_stream() -> None:
    backend = ScriptedBackend("s")
    backend.reply(TextDelta("one"), Hang())
    stream = adapter(backend).stream(chat("x"), "m")
    assert await anext(stream) == TextDelta("one")
    async with contextlib.aclosing(stream):
        pending = asyncio.create_task(anext(stream))
        await asyncio.sleep(0.01)
        pending.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pending
    assert backend.streams[0].client_closed and backend.in_flight == 0
    assert await backend.wait_closed(0.1) == 0.0


async def test_down_and_unhealthy() -> None:
    backend = ScriptedBackend("s")
    scripted = adapter(backend)
    backend.healthy = False
    with pytest.raises(BackendUnavailable):
        await scripted.probe()
    assert await collect(scripted.stream(chat("x"), "m"))  # unhealthy still answers
    backend.healthy, backend.down = True, True
    with pytest.raises(BackendUnavailable):
        await scripted.probe()
    with pytest.raises(BackendUnavailable):
        await collect(scripted.stream(chat("x"), "m"))
    with pytest.raises(BackendUnavailable):
        await scripted.list_models()


async def test_raw_bytes_are_refused() -> None:
    backend = ScriptedBackend("s")
    backend.reply(Raw(b"data: {}\n\n"))
    with pytest.raises(TypeError, match="wire format"):
        await collect(adapter(backend).stream(chat("x"), "m"))
