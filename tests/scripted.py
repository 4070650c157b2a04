"""A scripted backend in this process: the fakes' steps as events, no sockets.

The idea of httpx's ``MockTransport``, one level up. Tests about routing and
the chat handler (failover, capacity, the circuit breaker, keep-alive,
disconnects, metering) script a backend's answers with the steps of
``tests/fakes`` and get them from an :class:`Adapter` instead of an HTTP
server. How each backend kind's wire format maps to events stays with the
fakes on real sockets (``test_adapters*.py``, ``test_backends_sdk.py``).

Usage, with the ``scripted`` fixture (it replaces the router's adapter factory
for the backends it knows; any other backend gets its real adapter)::

    a = scripted.backend("a")
    a.reply(TextDelta("Hi"), Sleep(0.2), TextDelta("!"), usage=(12, 2))
    a.fail(500, "boom")            # the next request: BackendUnavailable
    a.down = True                  # refused: every request and probe fails
    config = {"backends": [a.entry("m", weight=2)]}

A streamed request gets, step by step (the contract in ``adapters/base.py``):

- ``TextDelta``, ``ThinkingDelta``: yielded; a ``ToolCallDelta`` with a name
  as one whole call (id ``call_<index>`` unless it has one). Each counts as
  one token against the request's ``max_tokens``: a script longer than that
  stops there with finish reason ``length``, as a model would.
- ``Sleep``, ``Hang`` (until the consumer leaves): waiting, bounded like the
  real adapters' reads by the backend's ``first_token_timeout`` before the
  first event (then ``BackendUnavailable``) and ``idle_timeout`` after it
  (then ``BackendError``).
- ``Drop``: the connection is lost: ``BackendUnavailable`` before the first
  event, ``BackendError`` after it. ``ErrorLine``: ``BackendError`` after the
  first event; before it, its code decides (5xx unavailable, else rejected).
- then ``Finish`` and ``Usage`` (the script's, or prompt 10 per message and
  one token per step, as the fakes count).

A non-streamed request gets all events at once when the script ends, so every
failure comes before its first event, as with one JSON body. ``fail(status)``
raises before anything: ``BackendUnavailable`` for 5xx, 408 and 429,
``UpstreamRejected`` for other 4xx. ``Raw`` bytes are wire format: not here.
"""
from __future__ import annotations

import asyncio

import msgspec
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, ClassVar

from privatai.adapters.base import Adapter
from privatai.config import BackendConfig
from privatai.core.completions import CompletionRequest
from privatai.core.embeddings import EmbeddingResult, EmbeddingsRequest
from privatai.core.events import Event, Finish, TextDelta, ThinkingDelta, ToolCallDelta, Usage
from privatai.core.protocol import ChatRequest, UserMessage
from privatai.errors import BackendError, BackendUnavailable, PrivatAIError, UpstreamRejected
from tests.fakes.endpoints import fake_vector
from tests.fakes.server import Drop, ErrorLine, Hang, Raw, Replies, Sleep, StreamRecord

CONTENT = (TextDelta, ThinkingDelta, ToolCallDelta)


@dataclass(frozen=True)
class Asked:
    """One chat request as the backend got it."""

    model: str
    request: ChatRequest


class ScriptedBackend(Replies):
    """What one named backend answers, and what it was asked."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.asked: list[Asked] = []
        # Probes fail while False (requests are still answered), as fake.healthy.
        self.healthy = True
        # Refused: requests, probes and discovery fail, as for a killed server.
        self.down = False
        # What discovery finds (None: the configured models).
        self.discovered: list[str] | None = None
        self.in_flight = 0
        self.peak_in_flight = 0
        # False: a chat-only server (completions and embeddings not offered).
        self.text_endpoints = True

    def entry(self, *models: str, **settings: Any) -> dict[str, Any]:
        """This backend's entry in backends.yaml. Its kind needs no URL; the
        ``scripted`` fixture's factory replaces the adapter before any use."""
        return {"name": self.name, "kind": "embedded", "models": list(models), **settings}


class ScriptedAdapter(Adapter):
    kind: ClassVar[str] = "scripted"

    def __init__(self, config: BackendConfig, backend: ScriptedBackend) -> None:
        super().__init__(config)
        self.backend = backend

    async def probe(self) -> None:
        if self.backend.down or not self.backend.healthy:
            raise BackendUnavailable("The backend is unreachable (ConnectionRefusedError).")

    async def list_models(self) -> list[str]:
        if self.backend.down:
            raise BackendUnavailable("The backend is unreachable (ConnectionRefusedError).")
        if self.backend.discovered is not None:
            return list(self.backend.discovered)
        return await super().list_models()

    async def stream_tokens(self, request: ChatRequest, model: str) -> AsyncIterator[Event]:
        backend = self.backend
        if backend.down:
            raise BackendUnavailable("The backend is unreachable (ConnectionRefusedError).")
        backend.asked.append(Asked(model, request))
        reply = backend.next_reply()
        if reply.status != 200:
            raise _http_error(reply.status, reply.error, reply.error_type)
        record = StreamRecord()
        backend.streams.append(record)
        backend.in_flight += 1
        backend.peak_in_flight = max(backend.peak_in_flight, backend.in_flight)
        # A non-streamed answer is one body at the end: nothing is out before then.
        whole: list[Event] | None = None if request.stream else []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.first_token_timeout
        sent = 0
        limit = request.max_output_tokens
        finish = reply.finish_reason()
        try:
            for step in reply.steps:
                out = sent > 0 and whole is None
                if isinstance(step, CONTENT):
                    if limit is not None and sent >= limit:
                        finish = "length"
                        break
                    if isinstance(step, ToolCallDelta) and step.name is not None and step.id is None:
                        step = msgspec.structs.replace(step, id=f"call_{step.index}")
                    sent += 1
                    if whole is None:
                        yield step
                    else:
                        whole.append(step)
                    deadline = loop.time() + self.config.idle_timeout
                elif isinstance(step, (Sleep, Hang)):
                    try:
                        async with asyncio.timeout_at(deadline):
                            await (asyncio.sleep(step.seconds) if isinstance(step, Sleep)
                                   else loop.create_future())
                    except TimeoutError:
                        raise (BackendError("The backend stopped sending tokens.") if out else
                               BackendUnavailable("The backend did not answer in time.")) from None
                elif isinstance(step, Drop):
                    message = "The backend closed the connection mid-response."
                    raise BackendError(message) if out else BackendUnavailable(message)
                elif isinstance(step, ErrorLine):
                    if out:
                        raise BackendError(f"The backend failed mid-response: {step.message}")
                    raise _http_error(step.code, step.message, step.type)
                elif isinstance(step, Raw):
                    raise TypeError("Raw bytes are a wire format: script them on a fake in tests/fakes")
            prompt, completion = reply.usage_counts(request.messages)
            if reply.usage is None:
                completion = sent  # what was produced, after a max_tokens cut too
            for event in (*(whole or ()), Finish(finish), Usage(prompt, completion)):
                yield event
            record.completed = True
        except (GeneratorExit, asyncio.CancelledError):
            record.mark_closed()  # the consumer left: as a client closing its connection
            raise
        finally:
            backend.in_flight -= 1


    def complete_text(self, request: CompletionRequest, prompt: str, model: str) -> AsyncIterator[Event]:
        if not self.backend.text_endpoints:
            return super().complete_text(request, prompt, model)
        chat = ChatRequest(messages=[UserMessage(content=prompt)], stream=request.stream,
                           max_tokens=request.max_tokens)
        return self.stream_tokens(chat, model)

    async def embed(self, request: EmbeddingsRequest, texts: list[str], model: str) -> EmbeddingResult:
        if not self.backend.text_endpoints:
            return await super().embed(request, texts, model)
        chat = ChatRequest(messages=[UserMessage(content=text) for text in texts], stream=False)
        events = [event async for event in self.stream_tokens(chat, model)]
        usage = next(event for event in events if isinstance(event, Usage))
        return EmbeddingResult([fake_vector(text, request.dimensions) for text in texts], usage.prompt_tokens)


def _http_error(status: int, message: str, error_type: str | None) -> PrivatAIError:
    if status >= 500 or status in (408, 429):
        return BackendUnavailable(f"The backend is unavailable: {message}")
    code = "context_length_exceeded" if error_type == "exceed_context_size_error" else None
    return UpstreamRejected(f"The backend rejected the request: {message}", code=code)


class ScriptedBackends:
    """The scripted backends of one test, by name, and the adapter factory
    that serves them (``privatai.core.routing.create_adapter``'s stand-in)."""

    def __init__(self, real_factory: Callable[[BackendConfig], Adapter]) -> None:
        self._real_factory = real_factory
        self._backends: dict[str, ScriptedBackend] = {}

    def backend(self, name: str) -> ScriptedBackend:
        """The scripted backend ``name`` (made on first use); it keeps its script
        across reloads, as a server keeps running when a config changes."""
        return self._backends.setdefault(name, ScriptedBackend(name))

    def create_adapter(self, config: BackendConfig) -> Adapter:
        backend = self._backends.get(config.name)
        if backend is None:
            return self._real_factory(config)
        return ScriptedAdapter(config, backend)

