"""The scriptable fake-backend server every kind builds on.

A fake is an aiohttp.web app on 127.0.0.1 with a free port. Each chat request
consumes the next scripted :class:`Reply` (or a default greeting), records the
request, and records whether and when the client closed the connection.

A request for a non-streamed answer gets the same script as one JSON body in
the kind's non-streamed format, sent when the script ends: ``Sleep`` delays
the whole answer, ``Hang`` never answers, ``Drop`` closes the connection, an
``ErrorLine`` becomes the kind's HTTP error body with status 500 (the upstream
failed while generating; there is no in-band channel), and ``Raw`` steps,
if any, are the whole body verbatim (bring your own JSON, or none), sent
chunked without Content-Length.
"""
from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from aiohttp import web

from privatai.core.events import TextDelta, ThinkingDelta, ToolCallDelta


@dataclass(frozen=True)
class Raw:
    """Bytes sent verbatim: bring your own framing (``data: ...\\n\\n`` or a JSON line)."""

    data: bytes


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Hang:
    """Send nothing more and keep the connection open until the client leaves."""


@dataclass(frozen=True)
class Drop:
    """Close the TCP connection abruptly, mid-response."""


@dataclass(frozen=True)
class ErrorLine:
    """An in-band error, in the kind's own format, followed by what that kind
    does next (llama.cpp closes without ``[DONE]``, vLLM sends ``[DONE]``,
    Ollama ends the NDJSON body)."""

    message: str
    code: int = 500
    type: str = "server_error"


Step = TextDelta | ThinkingDelta | ToolCallDelta | Raw | Sleep | Hang | Drop | ErrorLine


@dataclass
class Reply:
    """One scripted answer to a chat request.

    ``steps`` are our own events (a :class:`ToolCallDelta` with a ``name`` is a
    whole call, which the fake fragments as its kind does; one without a name
    is a raw argument fragment) or the control steps above. ``finish`` None
    means ``tool_calls`` if the reply has tool calls, else ``stop``.
    ``usage`` is (prompt, completion); None means "count the steps". They
    are sent as given, so a test can make the upstream report nonsense
    (negative, huge, a string).
    ``cached_tokens``/``reasoning_tokens`` go into OpenAI's usage details
    (``prompt_tokens_details``, ``completion_tokens_details``) when set, and
    ``system_fingerprint`` on every chunk (OpenAI-style kinds) when set.
    A ``status`` other than 200 answers with that HTTP status and the kind's
    error body built from ``error``, with ``headers`` (e.g. ``Retry-After``).
    """

    steps: list[Step] = field(default_factory=list)
    finish: str | None = None
    usage: tuple[Any, Any] | None = None
    status: int = 200
    error: str = ""
    error_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    cached_tokens: Any = None
    reasoning_tokens: Any = None
    system_fingerprint: str | None = None

    def finish_reason(self) -> str:
        if self.finish is not None:
            return self.finish
        calls = any(isinstance(s, ToolCallDelta) and s.name is not None for s in self.steps)
        return "tool_calls" if calls else "stop"

    def usage_counts(self, messages: list[Any]) -> tuple[Any, Any]:
        if self.usage is not None:
            return self.usage
        produced = sum(isinstance(s, (TextDelta, ThinkingDelta, ToolCallDelta)) for s in self.steps)
        return 10 * max(1, len(messages)), produced

    def openai_usage(self, messages: list[Any]) -> dict[str, Any]:
        """The ``usage`` object of an OpenAI-style answer."""
        prompt, completion = self.usage_counts(messages)
        both_numbers = all(isinstance(n, (int, float)) for n in (prompt, completion))
        usage = {"prompt_tokens": prompt, "completion_tokens": completion,
                 "total_tokens": prompt + completion if both_numbers else None}
        if self.cached_tokens is not None:
            usage["prompt_tokens_details"] = {"cached_tokens": self.cached_tokens}
        if self.reasoning_tokens is not None:
            usage["completion_tokens_details"] = {"reasoning_tokens": self.reasoning_tokens}
        return usage


@dataclass
class WholeAnswer:
    """A script's output gathered for a non-streamed answer: tool calls whole
    (raw argument fragments appended to the call with their index)."""

    text: str = ""
    thinking: str = ""
    calls: list[ToolCallDelta] = field(default_factory=list)

    def add_call(self, step: ToolCallDelta) -> None:
        if step.name is not None:
            self.calls.append(step)
            return
        for i, call in enumerate(self.calls):
            if call.index == step.index:
                self.calls[i] = dataclasses.replace(call, arguments=call.arguments + step.arguments)


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    json: Any
    # The client's (host, port): the same port twice means a reused connection.
    peer: tuple[str, int] | None = None


@dataclass
class StreamRecord:
    """What happened to one chat response's connection."""

    started_at: float = field(default_factory=time.monotonic)
    completed: bool = False
    closed_at: float | None = None
    _closed: threading.Event = field(default_factory=threading.Event)

    def mark_closed(self) -> None:
        if self.closed_at is None:
            self.closed_at = time.monotonic()
            self._closed.set()

    @property
    def client_closed(self) -> bool:
        return self._closed.is_set()


class Replies:
    """A queue of scripted answers and a record of each answer's connection:
    shared by the fakes on sockets and the in-process scripted backend
    (``tests/scripted.py``), so both are scripted the same way."""

    default_text: ClassVar[str] = "Hello from the fake backend."

    def __init__(self) -> None:
        self.replies: deque[Reply] = deque()
        self.streams: list[StreamRecord] = []

    def reply(self, *steps: Step, finish: str | None = None,
              usage: tuple[Any, Any] | None = None) -> Reply:
        """Queue the answer to the next chat request."""
        reply = Reply(list(steps), finish=finish, usage=usage)
        self.replies.append(reply)
        return reply

    def fail(self, status: int, message: str, *, error_type: str | None = None,
             headers: dict[str, str] | None = None) -> Reply:
        """Queue an HTTP error (the kind's error body) as the next answer."""
        reply = Reply(status=status, error=message, error_type=error_type, headers=headers or {})
        self.replies.append(reply)
        return reply

    def next_reply(self) -> Reply:
        return self.replies.popleft() if self.replies else Reply([TextDelta(self.default_text)])

    async def wait_closed(self, timeout: float, stream: int = -1) -> float:
        """Wait until the client closed chat response ``stream``; the seconds since
        this call began. Raises TimeoutError if it did not close in time."""
        begin = time.monotonic()
        record = self.streams[stream]
        while not record.client_closed:
            if time.monotonic() - begin > timeout:
                raise TimeoutError(f"client connection still open after {timeout} s")
            await asyncio.sleep(0.002)
        assert record.closed_at is not None
        return max(0.0, record.closed_at - begin)


class FakeBackend(Replies):
    """Base class: subclasses add the routes and the wire format of one kind."""

    kind: ClassVar[str]
    chat_path: ClassVar[str]

    def __init__(self, *, models: tuple[str, ...] = ("fake-model",)) -> None:
        super().__init__()
        self.models = list(models)
        self.healthy = True
        self.requests: list[Recorded] = []
        self.port: int | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._thread_loop: asyncio.AbstractEventLoop | None = None

    # -- what happened -------------------------------------------------------

    @property
    def root(self) -> str:
        """``http://127.0.0.1:<port>``, the server root."""
        assert self.port is not None, "fake not started"
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """What to put into a BackendConfig's ``url`` for this kind."""
        return self.root

    @property
    def chat_bodies(self) -> list[Any]:
        return [r.json for r in self.requests if r.path == self.chat_path]

    def bodies(self, path: str) -> list[Any]:
        """JSON bodies received on ``path`` (``/v1/embeddings``, ``/api/generate``...)."""
        return [r.json for r in self.requests if r.path == path]

    @property
    def last_body(self) -> Any:
        return self.chat_bodies[-1]

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> Self:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        # handler_cancellation: a client that leaves cancels the handler at
        # once, which is how we observe the disconnect.
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        # A restarted fake takes its old port again: a backend that comes back.
        site = web.TCPSite(self._runner, "127.0.0.1", self.port or 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def start_in_thread(self) -> Self:
        """Run the fake on its own event loop in a daemon thread, for tests whose
        own loop is blocked (a synchronous client, a server in the main loop)."""
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._thread_loop = loop
            loop.run_until_complete(self.start())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.stop())
            loop.close()

        self._thread = threading.Thread(target=run, name=f"fake-{self.kind}", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fake backend did not start")
        return self

    def stop_in_thread(self) -> None:
        if self._thread is not None and self._thread_loop is not None:
            self._thread_loop.call_soon_threadsafe(self._thread_loop.stop)
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start_in_thread()

    def __exit__(self, *exc: object) -> None:
        self.stop_in_thread()

    # -- serving -------------------------------------------------------------

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        body: Any = None
        if request.can_read_body:
            raw = await request.read()
            try:
                body = await request.json() if raw else None
            except ValueError:
                body = raw.decode("utf-8", "replace")
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.requests.append(Recorded(request.method, request.path, dict(request.headers), body,
                                      tuple(peer[:2]) if peer else None))
        denied = self.check_auth(request)
        if denied is not None:
            return denied
        if request.method == "POST" and request.path == self.chat_path:
            return await self._chat(request, body)
        return await self.handle_other(request)

    async def _chat(self, request: web.Request, body: Any) -> web.StreamResponse:
        reply = self.next_reply()
        if reply.status != 200:
            return web.json_response(self.error_body(reply.status, reply.error, reply.error_type),
                                     status=reply.status, headers=reply.headers)
        record = StreamRecord()
        self.streams.append(record)
        try:
            if self.streamed(body):
                response = await self.render(request, body, reply, record)
            else:
                response = await self._render_whole(request, body, reply, record)
            record.completed = True
            return response
        except (asyncio.CancelledError, ConnectionResetError):
            record.mark_closed()
            raise

    async def _render_whole(self, request: web.Request, body: Any, reply: Reply,
                            record: StreamRecord) -> web.StreamResponse:
        answer = WholeAnswer()
        raw: list[bytes] = []
        for step in reply.steps:
            if isinstance(step, TextDelta):
                answer.text += step.text
            elif isinstance(step, ThinkingDelta):
                answer.thinking += step.text
            elif isinstance(step, ToolCallDelta):
                answer.add_call(step)
            elif isinstance(step, Raw):
                raw.append(step.data)
            elif isinstance(step, ErrorLine):
                return web.json_response(self.error_body(500, step.message, step.type), status=500)
            elif not await self.control(request, step, record):
                return web.Response()  # never sent: the connection is gone
        if raw:
            # Chunked, without Content-Length, as a server streaming its answer out sends it.
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            await response.prepare(request)
            for part in raw:
                await response.write(part)
            await response.write_eof()
            return response
        return web.json_response(self.whole_body(body, reply, answer))

    async def control(self, request: web.Request, step: Step, record: StreamRecord) -> bool:
        """Run a control step; False when the response must end here."""
        if isinstance(step, Sleep):
            await asyncio.sleep(step.seconds)
        elif isinstance(step, Hang):
            while not _closing(request):
                await asyncio.sleep(0.002)
            record.mark_closed()
            return False
        elif isinstance(step, Drop):
            assert request.transport is not None
            request.transport.close()
            return False
        return True

    async def text_reply(self, request: web.Request, render: Any) -> web.StreamResponse:
        """A raw-completion request: the next scripted reply, rendered by
        ``render(request, body, reply)`` (tests/fakes/endpoints.py), or its HTTP error."""
        reply = self.next_reply()
        if reply.status != 200:
            return web.json_response(self.error_body(reply.status, reply.error, reply.error_type),
                                     status=reply.status)
        return await render(request, await request.json(), reply)

    # -- kind hooks ----------------------------------------------------------

    def check_auth(self, request: web.Request) -> web.Response | None:
        return None

    async def handle_other(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"error": "not found"}, status=404)

    def error_body(self, status: int, message: str, error_type: str | None) -> Any:
        raise NotImplementedError

    def streamed(self, body: Any) -> bool:
        """Whether the request asks for a streamed answer (OpenAI's default: not)."""
        return isinstance(body, dict) and body.get("stream") is True

    def whole_body(self, body: Any, reply: Reply, answer: WholeAnswer) -> Any:
        """The non-streamed answer in the kind's format."""
        raise NotImplementedError

    async def render(self, request: web.Request, body: Any, reply: Reply,
                     record: StreamRecord) -> web.StreamResponse:
        raise NotImplementedError


def _closing(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()
