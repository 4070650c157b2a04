"""Fake inference servers on real sockets, one per backend kind, speaking each
kind's exact wire format: OpenAI's ``/v1/chat/completions`` (SSE
``chat.completion.chunk`` events, or one ``chat.completion``) for llama.cpp's
llama-server, vLLM and a generic OpenAI API (``openai_like.py``), and Ollama's
NDJSON ``/api/chat`` (``ollama.py``). Each fake's class docstring lists the
quirks of its kind that the adapters must accept. Each also answers its kind's
embeddings and raw-completion endpoints (``endpoints.py``).

Usage, in an async test::

    async with FakeLlamaCpp() as fake:              # 127.0.0.1, a free port
        fake.reply(ThinkingDelta("hmm"), TextDelta("Hi"), usage=(12, 3))
        fake.reply(ToolCallDelta(0, name="get_weather", arguments='{"city":"Tokyo"}'))
        fake.fail(400, "context too long", error_type="exceed_context_size_error")
        config = BackendConfig(name="b", kind=fake.kind, url=fake.url, models=["m"])
        ...
        fake.chat_bodies            # JSON bodies the fake received, in order
        await fake.wait_closed(0.1) # the client closed the last chat response

Or, when the test's own event loop is blocked (a synchronous ``openai`` client
talking to a gateway), run the fake on its own loop in a thread::

    with FakeOllama() as fake:                      # start_in_thread / stop_in_thread
        fake.reply(TextDelta("Hello"))
        ...

Script: ``reply(*steps, finish=None, usage=None)`` queues one answer; steps are
our own events (``TextDelta``, ``ThinkingDelta``, ``ToolCallDelta`` with a name
is a whole call the fake fragments in its kind's style) or control steps:
``Raw(bytes)`` sent verbatim, ``Sleep(s)``, ``Hang()`` (silent until the client
leaves), ``Drop()`` (close the TCP connection), ``ErrorLine(message, code,
type)`` (in-band error in the kind's format). ``fail(status, message,
headers=None)`` queues an HTTP error with the kind's error body. With nothing
queued a chat request gets ``default_text``. ``finish`` defaults to
``tool_calls`` / ``stop``; ``usage`` to (10 per message, number of steps), and
is sent as given (a test may make the upstream report nonsense).

A request with ``"stream": false`` (for the OpenAI kinds also one without
``stream``) gets the same script as one JSON body in the kind's non-streamed
format (``chat.completion``, or Ollama's single object): ``Sleep`` delays the
whole answer, ``Hang`` never answers, ``Drop`` closes the connection, an
``ErrorLine`` becomes the kind's HTTP error body with status 500, and ``Raw``
steps, if any, are the whole body verbatim (chunked, without Content-Length).

Kinds and their variants: ``FakeOllama(tool_ids=True|False)``,
``FakeLlamaCpp()``, ``FakeVLLM(reasoning_field="reasoning"|"reasoning_content"|
"both", flat_errors=False)``, ``FakeOpenAI(api_key=None, whole_tool_calls=False)``.
``fake.url`` is what a BackendConfig of that kind wants (the OpenAI fake's
includes ``/v1``); ``fake.healthy = False`` makes health checks fail.
"""
from __future__ import annotations

from tests.fakes.ollama import FakeOllama
from tests.fakes.openai_like import FakeLlamaCpp, FakeOpenAI, FakeVLLM, SSEFake
from tests.fakes.server import Drop, ErrorLine, FakeBackend, Hang, Raw, Recorded, Reply, Sleep, Step, StreamRecord

FAKES: dict[str, type[FakeBackend]] = {
    "ollama": FakeOllama,
    "llamacpp": FakeLlamaCpp,
    "vllm": FakeVLLM,
    "openai": FakeOpenAI,
}

__all__ = [
    "FAKES", "Drop", "ErrorLine", "FakeBackend", "FakeLlamaCpp", "FakeOllama", "FakeOpenAI",
    "FakeVLLM", "Hang", "Raw", "Recorded", "Reply", "SSEFake", "Sleep", "Step", "StreamRecord",
]
