"""A fast fake inference server for the benchmark, in its own process.

It speaks the two upstream wire formats the gateway's adapters read, as the
real servers send them:

- OpenAI SSE as vLLM sends it: ``POST /v1/chat/completions`` streamed
  (``data: <chunk>\\n\\n`` ... ``data: [DONE]``, with a final ``choices: []``
  usage chunk when ``stream_options.include_usage`` is asked) or not
  (one ``chat.completion``), ``GET /v1/models``, ``GET /health``;
- Ollama NDJSON: ``POST /api/chat`` (``stream`` defaults to true; the last line
  has ``done: true``, ``done_reason`` and the eval counts), ``GET /api/tags``,
  ``GET /api/version``.

Each response has ``--tokens N`` tokens (a request's ``max_tokens``,
``max_completion_tokens`` or Ollama ``options.num_predict`` overrides N), sent
either at once (``--rate 0``, the default) or at ``--rate R`` tokens per
second. A model name ending in ``@R`` (``bench@20``) sets the rate for that
request, so one fake serves an instant and a paced model side by side; one
ending in ``+nousage`` leaves usage out of OpenAI responses (Ollama always
reports its eval counts), which makes the gateway count tokens itself.

Speed matters more than generality here: it must never be the bottleneck of
the gateway it feeds. So it is a raw asyncio Protocol on uvloop with
httptools' C parser, instant responses are built once and cached as bytes,
and paced streams are driven by loop timers, not by a task per stream.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import resource
import signal
import socket
import sys
from typing import Any, Callable

import httptools
import orjson

WORDS = ("Hello", " world", ",", " this", " is", " a", " benchmark", " token", " stream", ".")
CREATED = 1_790_000_000
CREATED_AT = "2026-09-21T12:00:00.000000Z"
MAX_CACHE = 512
REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed"}


def token(i: int) -> str:
    return WORDS[i % len(WORDS)]


def _head(status: int, content_type: bytes, length: int | None, keep_alive: bool) -> bytes:
    lines = [b"HTTP/1.1 %d %s" % (status, REASONS.get(status, b"OK")),
             b"Content-Type: " + content_type]
    lines.append(b"Content-Length: %d" % length if length is not None else b"Transfer-Encoding: chunked")
    if not keep_alive:
        lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n"


def response(status: int, content_type: bytes, body: bytes, keep_alive: bool = True) -> bytes:
    return _head(status, content_type, len(body), keep_alive) + body


def json_response(payload: Any, status: int = 200, keep_alive: bool = True) -> bytes:
    return response(status, b"application/json", orjson.dumps(payload), keep_alive)


def http_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


# --------------------------------------------------------------------------
# What one response consists of: a list of frames (SSE events or NDJSON lines)


class Plan:
    """The frames of one response, built from the request body."""

    __slots__ = ("frames", "first", "tail", "content_type", "stream", "rate")

    def __init__(self, frames: list[bytes], first: int, tail: int, content_type: bytes, stream: bool,
                 rate: float) -> None:
        self.frames = frames      # every frame, in order
        self.first = first        # frames sent at once, before pacing starts
        self.tail = tail          # closing frames, sent together with the last token
        self.content_type = content_type
        self.stream = stream
        self.rate = rate


def model_options(model: str, default_rate: float) -> tuple[float, bool]:
    """(rate, usage) from a model name: ``bench@20`` streams at 20 tokens/s;
    ``bench+nousage`` reports no usage (the gateway must count tokens itself)."""
    name, *flags = model.split("+")
    usage = "nousage" not in flags
    base, sep, rate = name.rpartition("@")
    if sep and base:
        try:
            return float(rate), usage
        except ValueError:
            pass
    return default_rate, usage


def openai_plan(body: dict[str, Any], n: int, prompt_tokens: int, rate: float,
                usage: bool = True) -> Plan:
    model = str(body.get("model") or "bench")
    cid = "chatcmpl-fake0123456789abcdef"
    stream = bool(body.get("stream", False))
    if not stream:
        text = "".join(token(i) for i in range(n))
        payload = {"id": cid, "object": "chat.completion", "created": CREATED, "model": model,
                   "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                "logprobs": None, "finish_reason": "stop"}]}
        if usage:
            payload["usage"] = {"prompt_tokens": prompt_tokens, "completion_tokens": n,
                                "total_tokens": prompt_tokens + n}
        return Plan([orjson.dumps(payload)], 1, 0, b"application/json", False, 0.0)
    head = orjson.dumps({"id": cid, "object": "chat.completion.chunk", "created": CREATED,
                         "model": model})[:-1]

    def event(choices: bytes, extra: bytes = b"") -> bytes:
        return b"data: " + head + b',"choices":' + choices + extra + b"}\n\n"

    def delta(d: dict[str, Any], finish: str | None = None) -> bytes:
        return event(orjson.dumps([{"index": 0, "delta": d, "logprobs": None, "finish_reason": finish}]))

    frames = [delta({"role": "assistant", "content": ""})]
    frames += [delta({"content": token(i)}) for i in range(n)]
    frames.append(delta({}, "stop"))
    options = body.get("stream_options")
    if usage and isinstance(options, dict) and options.get("include_usage"):
        usage = orjson.dumps({"prompt_tokens": prompt_tokens, "completion_tokens": n,
                              "total_tokens": prompt_tokens + n})
        frames.append(event(b"[]", b',"usage":' + usage))
    frames.append(b"data: [DONE]\n\n")
    # The role chunk and the first token go out together; the rest is paced.
    return Plan(frames, 2, len(frames) - 1 - n, b"text/event-stream", True, rate)


def ollama_plan(body: dict[str, Any], n: int, prompt_tokens: int, rate: float) -> Plan:
    model = str(body.get("model") or "bench")
    stream = body.get("stream", True) is not False
    ns_per_token = int(1e9 / rate) if rate > 0 else 1000
    final = {"model": model, "created_at": CREATED_AT,
             "message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "stop",
             "total_duration": ns_per_token * (n + 1), "load_duration": 1000,
             "prompt_eval_count": prompt_tokens, "prompt_eval_duration": 1000,
             "eval_count": n, "eval_duration": ns_per_token * n}
    if not stream:
        final["message"]["content"] = "".join(token(i) for i in range(n))
        return Plan([orjson.dumps(final)], 1, 0, b"application/json", False, 0.0)
    frames = [orjson.dumps({"model": model, "created_at": CREATED_AT,
                            "message": {"role": "assistant", "content": token(i)}, "done": False}) + b"\n"
              for i in range(n)]
    frames.append(orjson.dumps(final) + b"\n")
    return Plan(frames, 1, 1, b"application/x-ndjson", True, rate)


# --------------------------------------------------------------------------
# The server


class Fake:
    """Shared settings and the cache of instant responses."""

    def __init__(self, tokens: int, rate: float, models: list[str]) -> None:
        self.tokens = tokens
        self.rate = rate
        self.models = models
        self.cache: dict[tuple[Any, ...], bytes] = {}
        self.requests = 0

    def plan(self, path: str, body: bytes) -> Plan | bytes:
        try:
            data = orjson.loads(body) if body else {}
        except orjson.JSONDecodeError:
            return json_response({"error": {"message": "invalid JSON", "type": "invalid_request_error",
                                            "param": None, "code": None}}, 400)
        if not isinstance(data, dict):
            return json_response({"error": "body must be an object"}, 400)
        rate, usage = model_options(str(data.get("model") or "bench"), self.rate)
        if path == "/api/chat":
            options = data.get("options") if isinstance(data.get("options"), dict) else {}
            n = options.get("num_predict") or self.tokens
        else:
            n = data.get("max_completion_tokens") or data.get("max_tokens") or self.tokens
        n = max(1, min(int(n), 100_000))
        # A cheap stand-in for a tokenizer: about four bytes a token.
        prompt_tokens = max(1, len(body) // 4)
        if path == "/api/chat":
            return ollama_plan(data, n, prompt_tokens, rate)
        return openai_plan(data, n, prompt_tokens, rate, usage)

    def instant(self, path: str, body: bytes, keep_alive: bool) -> bytes | Plan:
        """The whole response as bytes when it is not paced (cached by request shape)."""
        key = (path, body, keep_alive)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        plan = self.plan(path, body)
        if isinstance(plan, bytes):
            return plan
        if plan.stream and plan.rate > 0:
            return plan
        data = response(200, plan.content_type, b"".join(plan.frames), keep_alive)
        if len(self.cache) >= MAX_CACHE:
            self.cache.clear()
        self.cache[key] = data
        return data

    def get(self, path: str) -> bytes:
        if path == "/v1/models":
            return json_response({"object": "list", "data": [
                {"id": m, "object": "model", "created": CREATED, "owned_by": "fake"} for m in self.models]})
        if path == "/health":
            return response(200, b"application/json", b"")
        if path == "/api/tags":
            return json_response({"models": [
                {"name": m, "model": m, "modified_at": CREATED_AT, "size": 1, "digest": "0" * 64,
                 "details": {"format": "gguf", "family": "fake", "parameter_size": "1M",
                             "quantization_level": "Q8_0"}} for m in self.models]})
        if path == "/api/version":
            return json_response({"version": "0.12.0"})
        return json_response({"error": "not found"}, 404)


class Connection(asyncio.Protocol):
    __slots__ = ("fake", "loop", "transport", "parser", "url", "body", "queue", "busy", "timer",
                 "plan", "next_frame", "started", "interval", "closed", "keep_alive")

    def __init__(self, fake: Fake) -> None:
        self.fake = fake
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.body: list[bytes] = []
        self.queue: list[tuple[bytes, bytes, bytes, bool]] = []
        self.busy = False
        self.timer: asyncio.TimerHandle | None = None
        self.plan: Plan | None = None
        self.next_frame = 0
        self.started = 0.0
        self.interval = 0.0
        self.closed = False
        self.keep_alive = True

    # -- asyncio.Protocol ----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._write(json_response({"error": "bad request"}, 400, keep_alive=False))
            self._close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    # -- httptools callbacks -------------------------------------------------

    def on_message_begin(self) -> None:
        self.url = b""
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        request = (self.parser.get_method(), self.url, b"".join(self.body), self.parser.should_keep_alive())
        if self.busy:
            self.queue.append(request)  # pipelined behind a paced stream
        else:
            self._handle(*request)

    # -- responses -------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    def _close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()
        self.closed = True

    def _handle(self, method: bytes, url: bytes, body: bytes, keep_alive: bool) -> None:
        fake = self.fake
        fake.requests += 1
        path = url.split(b"?", 1)[0].decode("latin-1")
        if method == b"POST" and path in ("/v1/chat/completions", "/chat/completions", "/api/chat"):
            result = fake.instant(path, body, keep_alive)
        elif method == b"GET":
            result = fake.get(path)
        else:
            result = json_response({"error": "method not allowed"}, 405)
        if isinstance(result, bytes):
            self._write(result)
            if not keep_alive:
                self._close()
            return
        self._start_paced(result, keep_alive)

    def _start_paced(self, plan: Plan, keep_alive: bool) -> None:
        self.busy = True
        self.plan = plan
        self._write(_head(200, plan.content_type, None, keep_alive)
                    + b"".join(http_chunk(f) for f in plan.frames[:plan.first]))
        self.next_frame = plan.first
        self.started = self.loop.time()
        self.interval = 1.0 / plan.rate
        self.keep_alive = keep_alive
        self._schedule()

    def _schedule(self) -> None:
        # Absolute times, so timer latency does not add up over a long stream.
        due = self.started + (self.next_frame - self.plan.first + 1) * self.interval  # type: ignore[union-attr]
        self.timer = self.loop.call_at(due, self._tick)

    def _tick(self) -> None:
        # One token per tick; the closing frames go with the last token, as
        # servers flush them back to back.
        self.timer = None
        plan = self.plan
        if self.closed or plan is None:
            return
        frames = plan.frames
        i = self.next_frame
        end = len(frames) if i + 1 >= len(frames) - plan.tail else i + 1
        data = b"".join(http_chunk(f) for f in frames[i:end])
        if end >= len(frames):
            data += b"0\r\n\r\n"
        self._write(data)
        self.next_frame = end
        if end < len(frames):
            self._schedule()
            return
        self.plan = None
        self.busy = False
        if not self.keep_alive:
            self._close()
        elif self.queue:
            self._handle(*self.queue.pop(0))


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def serve(host: str, port: int, fake: Fake, ready: Callable[[int], None] | None = None) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Connection(fake), host, port, backlog=4096,
                                      reuse_address=True)
    bound = server.sockets[0].getsockname()[1]
    if ready is not None:
        ready(bound)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on stdout)")
    parser.add_argument("--tokens", type=int, default=16, help="tokens per response")
    parser.add_argument("--rate", type=float, default=0.0, help="tokens per second; 0 sends at once")
    parser.add_argument("--models", default="bench", help="comma-separated names for /v1/models and /api/tags")
    args = parser.parse_args(argv)
    raise_nofile()
    try:
        import uvloop
        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a Sanic dependency
        pass
    fake = Fake(args.tokens, args.rate, [m for m in args.models.split(",") if m])

    def ready(port: int) -> None:
        print(f"fake upstream listening on http://{args.host}:{port} pid {os.getpid()}", flush=True)

    asyncio.run(serve(args.host, args.port, fake, ready))
    return 0


if __name__ == "__main__":
    sys.exit(main())
