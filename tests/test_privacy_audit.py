"""The canary audit: no prompt, completion, tool argument or key in any log,
captured output, database file, temp file or state file.

The gateway runs as a real process with every logger at DEBUG (ours and the
libraries'), its own empty TMPDIR, and environment settings that make Python
and Sanic as loud as they get (PYTHONDEVMODE, SANIC_DEBUG, ...). A matrix of
requests carries unique canaries (``CANARY-<uuid4 hex>``, one per scenario and
field); what the client received (the model's completions) becomes canaries
too. At the end no canary may appear in the process's whole output, in the
database with its ``-wal``/``-shm``, or in any file under its TMPDIR or state
directory. Positive controls show that each place is scanned for real.
"""
from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import sqlite3
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import openai
import pytest

from privatai.ops.canary_scan import Canaries, new_canary, scan_bytes, scan_file, scan_tree, walk_files
from privatai.core.events import TextDelta, ThinkingDelta, ToolCallDelta
from privatai.ops.logs import NOISY_LOGGERS, describe_error, loop_exception_handler, setup_logging
from tests.fakes import Drop, ErrorLine, FakeBackend, FakeLlamaCpp, FakeOllama, FakeOpenAI, FakeVLLM, Hang, Raw, Sleep
from tests.gateway import ROOT, Gateway, LocalGateway, embedded_backend, eventually, free_port
from tests.scripted import ScriptedBackends

MODEL = "smollm2-135m"
MAX_BODY = 64 * 1024


# -- in-process: the filter and the hooks -------------------------------------------

@pytest.fixture
def isolated_logging() -> Iterator[None]:
    """Put back the logging setup, hooks and warning filters a test changed."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    names = (*NOISY_LOGGERS, "privatai")
    levels = {name: (logging.getLogger(name).level, list(logging.getLogger(name).handlers)) for name in names}
    hooks = (sys.excepthook, threading.excepthook, sys.unraisablehook, warnings.showwarning)
    filters = list(warnings.filters)
    yield
    for old in list(root.handlers):
        root.removeHandler(old)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    for name, (lvl, hs) in levels.items():
        logger = logging.getLogger(name)
        logger.setLevel(lvl)
        logger.handlers[:] = hs
    sys.excepthook, threading.excepthook, sys.unraisablehook, warnings.showwarning = hooks
    warnings.filters[:] = filters


def emit_library_records(canary: str) -> None:
    """Records as the libraries in our stack really write them, with content."""
    logging.getLogger("httpx").info('HTTP Request: %s %s "%s %d %s"', "POST",
                                    f"http://10.0.0.5/v1/chat/completions?q={canary}", "HTTP/1.1", 400,
                                    "Bad Request")
    logging.getLogger("openai._base_client").debug(
        "Request options: %s", {"json_data": {"messages": [{"role": "user", "content": canary}]}})
    # Pre-formatted by the library itself: httpcore's trace lines.
    logging.getLogger("httpcore.http11").debug(
        f"receive_response_headers.complete return_value=(b'HTTP/1.1', 400, b'Bad Request', "
        f"[(b'X-Echo', b'{canary}')])")
    logging.getLogger("openai").debug(f"Request options: {{'json_data': {{'content': '{canary}'}}}}")
    logging.getLogger("sanic.error").error(f"Startup failed due to server error. {canary}")
    logging.getLogger("llama-cpp-python").error(f"llama_grammar_parser: error parsing grammar: {canary}")
    logging.getLogger("aiosqlite").debug({"sql": canary})
    logging.getLogger("httpx").info("with extra fields", extra={"fields": {"body": canary}})
    try:
        raise ValueError(f"upstream said: {canary}")
    except ValueError as exc:
        logging.getLogger("httpx").exception("request failed")
        logging.getLogger("ollama").error("error: %s", exc)
        # Our own records keep their arguments but never a traceback.
        logging.getLogger("privatai.test").error("failed: %s", describe_error(exc), exc_info=True)
    logging.getLogger("aiohttp.client").warning(f"stack for {canary}", stack_info=True)
    # asyncio's default exception handler formats reprs into the message.
    loop = asyncio.new_event_loop()
    try:
        future = loop.create_future()
        future.set_exception(ValueError(canary))
        future.exception()
        handle = loop.call_soon(print, canary)
        handle.cancel()
        loop.default_exception_handler({"message": "Task exception was never retrieved",
                                        "exception": future.exception(), "future": future})
        loop.default_exception_handler({"message": f"Exception in callback {handle}", "handle": handle})
    finally:
        loop.close()


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_library_records_never_print_content(fmt: str, isolated_logging: None) -> None:
    canary = new_canary()
    # Positive control: without our setup the same records print the canary.
    raw = io.StringIO()
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    plain = logging.StreamHandler(raw)
    root.addHandler(plain)
    root.setLevel(logging.DEBUG)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)
    emit_library_records(canary)
    assert raw.getvalue().count(canary) >= 10

    out = io.StringIO()
    setup_logging("DEBUG", fmt, "DEBUG", stream=out)
    emit_library_records(canary)
    text = out.getvalue()
    assert canary not in text
    # The static parts survive, so DEBUG still helps with connection problems.
    for expected in ("HTTP Request", "receive_response_headers.complete", "Task exception was never retrieved",
                     "Exception in callback", "[arguments removed]", "[details removed]",
                     "request failed [ValueError]", "failed: ValueError"):
        assert expected in text, expected
    if fmt == "json":
        records = [json.loads(line) for line in text.splitlines()]
        assert len(records) >= 12 and all("msg" in r for r in records)
    else:
        assert "Traceback" not in text and "upstream said" not in text


def test_our_loop_exception_handler_logs_class_only(isolated_logging: None) -> None:
    canary = new_canary()
    out = io.StringIO()
    setup_logging("DEBUG", "text", "DEBUG", stream=out)
    loop = asyncio.new_event_loop()
    try:
        future = loop.create_future()
        future.set_exception(RuntimeError(canary))
        handle = loop.call_soon(print, canary)
        handle.cancel()
        loop_exception_handler(loop, {"message": "Task exception was never retrieved",
                                      "exception": future.exception(), "future": future})
        loop_exception_handler(loop, {"message": f"Exception in callback {handle}", "handle": handle})
    finally:
        loop.close()
    text = out.getvalue()
    assert canary not in text
    assert "privatai.loop: Task exception was never retrieved: RuntimeError" in text
    assert "Exception in callback" in text


def test_interpreter_hooks_print_no_content(isolated_logging: None, capsys: pytest.CaptureFixture[str]) -> None:
    canary = new_canary()
    out = io.StringIO()
    setup_logging("INFO", "text", "WARNING", stream=out)

    # Positive control for the warning: Python's own formatter would print it.
    assert canary in warnings.formatwarning(f"deprecated {canary}", DeprecationWarning, "x.py", 1)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn(f"deprecated {canary}", DeprecationWarning)
    try:
        raise ValueError(canary)
    except ValueError as exc:
        sys.excepthook(type(exc), exc, exc.__traceback__)

    def fail() -> None:
        raise ValueError(canary)

    worker = threading.Thread(target=fail)
    worker.start()
    worker.join()

    class Leaky:
        def __del__(self) -> None:
            raise ValueError(canary)

    Leaky()
    captured = capsys.readouterr()
    text = out.getvalue()
    assert canary not in text + captured.out + captured.err
    assert "DeprecationWarning at " in text
    assert "unhandled exception: ValueError" in text
    assert "unhandled exception in a thread: ValueError" in text
    assert "exception ignored (unraisable): ValueError" in text


def test_sanic_debug_mode_is_refused() -> None:
    """Debug mode would put tracebacks with request values into responses and
    logs; however it gets turned on, the server refuses to start."""
    from sanic.application.constants import Mode
    from sanic_testing.testing import SanicTestClient

    from privatai.app import create_app
    from privatai.config import parse_config

    config = parse_config({"backends": [{"name": "e", "kind": "embedded", "models": ["m"]}],
                           "store": {"path": ":memory:"}})
    app = create_app(config, name="debug_refused")
    app.state.mode = Mode.DEBUG
    with pytest.raises(RuntimeError, match="debug mode is not allowed"):
        SanicTestClient(app).get("/healthz")


# -- the live gateway ----------------------------------------------------------------

@dataclass
class Audit:
    gateway: Gateway
    key: str
    tmpdir: Path
    fakes: dict[str, FakeBackend]
    canaries: Canaries = field(default_factory=Canaries)
    done: set[str] = field(default_factory=set)
    # `privatai audit` run against this gateway (once; see audit_command()).
    command: subprocess.CompletedProcess[str] | None = None
    auditor_key: str = ""

    def canary(self, label: str) -> str:
        return self.canaries.add(label)

    def headers(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.key}"}

    def post(self, body: bytes | dict[str, Any], *, key: str | None = None, path: str = "/chat/completions",
             headers: dict[str, str] | None = None, timeout: float = 120) -> httpx.Response:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return httpx.post(self.gateway.base_url + path, content=content, timeout=timeout,
                          headers={**self.headers(key), "Content-Type": "application/json", **(headers or {})})

    def sdk(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.gateway.base_url, api_key=self.key, max_retries=0, timeout=120)


HOSTILE_ENV = {
    # As loud as Python gets: asyncio debug (slow-callback reports with reprs),
    # every warning shown, faulthandler on.
    "PYTHONDEVMODE": "1",
    "PYTHONWARNINGS": "always",
    # Sanic reads SANIC_* into its config; none of these may turn debug or its
    # own access log on.
    "SANIC_DEBUG": "true",
    "SANIC_NOISY_EXCEPTIONS": "true",
    "SANIC_ACCESS_LOG": "true",
    "SANIC_LOG_EXTRA": "true",
    "SANIC_FALLBACK_ERROR_FORMAT": "html",
}


UPSTREAM_KEY_ENV = "PRIVACY_AUDIT_UPSTREAM_KEY"
# The key the gateway sends to an OpenAI-compatible upstream: a secret too.
UPSTREAM_KEY = new_canary()
TIMEOUT = 1.5  # first_token_timeout and idle_timeout of the llama.cpp fake


@pytest.fixture(scope="module")
def audit_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Audit]:
    workdir = tmp_path_factory.mktemp("privacy-audit")
    tmpdir = workdir / "tmp"
    tmpdir.mkdir()
    fakes: dict[str, FakeBackend] = {"ollama": FakeOllama(), "llamacpp": FakeLlamaCpp(),
                                     "vllm": FakeVLLM(reasoning_field="reasoning_content"),
                                     "openai": FakeOpenAI(api_key=UPSTREAM_KEY)}
    for fake in fakes.values():
        fake.start_in_thread()
    backends = [embedded_backend()]
    for kind, fake in fakes.items():
        backend: dict[str, Any] = {"name": f"fake-{kind}", "kind": kind, "url": fake.url,
                                   "models": [{"name": f"fake-{kind}", "upstream": fake.models[0]}]}
        if kind == "openai":
            backend["api_key_env"] = UPSTREAM_KEY_ENV
        if kind == "llamacpp":
            backend.update(first_token_timeout=TIMEOUT, idle_timeout=TIMEOUT)
        backends.append(backend)
    # Nothing listens there: "backend down".
    backends.append({"name": "down", "kind": "ollama", "url": f"http://127.0.0.1:{free_port()}",
                     "models": ["down-model"], "connect_timeout": 1})
    config = {
        "default_model": MODEL,
        "backends": backends,
        "server": {"max_body_bytes": MAX_BODY, "keepalive_interval": 1},
        "store": {"flush_interval": 0.2},
        "logging": {"level": "DEBUG", "third_party_level": "DEBUG", "hashed_client_ip": True},
        # Scripted failures must not open a backend's circuit for the next scenario.
        "routing": {"failure_threshold": 1000},
        "web_chat": {"models": [MODEL, "fake-ollama"], "requests_per_minute": 3, "max_tokens": 40},
    }
    home = workdir / "home"
    home.mkdir()
    # A fresh TMPDIR and HOME: any temp file or cache (llama.cpp, tiktoken,
    # Python) shows up here.
    env = {**HOSTILE_ENV, "TMPDIR": str(tmpdir), "TEMP": str(tmpdir), "TMP": str(tmpdir),
           "HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache"), UPSTREAM_KEY_ENV: UPSTREAM_KEY}
    gateway = Gateway(workdir, config, env)
    key = gateway.create_key("privacy-audit")
    try:
        with gateway:
            audit = Audit(gateway, key, tmpdir, fakes)
            audit.canaries.values["upstream API key"] = UPSTREAM_KEY
            yield audit
    finally:
        for fake in fakes.values():
            fake.stop_in_thread()


@pytest.fixture
def audit(audit_gateway: Audit) -> Audit:
    """The audit's gateway, running: test_no_canary_anywhere stops it to scan
    what it leaves behind, and a test after it gets it started again."""
    if audit_gateway.gateway.proc is None:
        audit_gateway.gateway.start()
    return audit_gateway


SCENARIOS: dict[str, Callable[[Audit], None]] = {}


def scenario(func: Callable[[Audit], None]) -> Callable[[Audit], None]:
    SCENARIOS[func.__name__] = func
    return func


@scenario
def chat_non_streamed(a: Audit) -> None:
    prompt = a.canary("prompt (non-streamed)")
    system = a.canary("system prompt")
    reply = a.sdk().chat.completions.create(model=MODEL, max_tokens=40, temperature=0, messages=[
        {"role": "system", "content": f"Reference number {system}."},
        {"role": "user", "content": f"Repeat this code exactly and nothing else: {prompt}"}])
    text = reply.choices[0].message.content or ""
    assert text
    a.canaries.add_completion("completion (non-streamed)", text)


@scenario
def chat_streamed(a: Audit) -> None:
    prompt = a.canary("prompt (streamed)")
    stream = a.sdk().chat.completions.create(model=MODEL, max_tokens=40, temperature=0, stream=True,
                                             stream_options={"include_usage": True}, messages=[
        {"role": "user", "content": f"Repeat this code exactly and nothing else: {prompt}"}])
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text
    a.canaries.add_completion("completion (streamed)", text)


def tool_messages(a: Audit, tag: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    arguments = json.dumps({"city": a.canary(f"tool call arguments in history ({tag})")})
    messages = [
        {"role": "user", "content": f"Weather in {a.canary(f'prompt with tools ({tag})')}?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": f"Sunny, {a.canary(f'tool result ({tag})')}"},
        {"role": "user", "content": "And tomorrow? Call the tool again."},
    ]
    tools = [{"type": "function", "function": {
        "name": "get_weather", "description": f"Weather lookup {a.canary(f'tool description ({tag})')}",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "description": a.canary(f"tool parameter description ({tag})")}},
            "required": ["city"]}}}]
    return messages, tools


@scenario
def tool_call_history(a: Audit) -> None:
    messages, tools = tool_messages(a, "non-streamed")
    reply = a.sdk().chat.completions.create(model=MODEL, max_tokens=40, messages=messages, tools=tools)
    message = reply.choices[0].message
    a.canaries.add_completion("completion (tools)", (message.content or "") + "".join(
        call.function.arguments for call in message.tool_calls or ()))


@scenario
def tool_call_history_streamed(a: Audit) -> None:
    messages, tools = tool_messages(a, "streamed")
    stream = a.sdk().chat.completions.create(model=MODEL, max_tokens=40, messages=messages, tools=tools,
                                             tool_choice="required", stream=True)
    parts = []
    for chunk in stream:
        for choice in chunk.choices:
            parts.append(choice.delta.content or "")
            parts.extend(call.function.arguments or "" for call in choice.delta.tool_calls or ()
                         if call.function)
    a.canaries.add_completion("completion (tools, streamed)", "".join(parts))


@scenario
def response_format_schema(a: Audit) -> None:
    name = "k" + a.canary("schema property").replace("-", "_")
    response = a.post({"model": MODEL, "max_tokens": 30, "messages": [
        {"role": "user", "content": f"JSON please: {a.canary('prompt (json schema)')}"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
            "type": "object", "properties": {name: {"type": "string",
                                                   "description": a.canary("schema description")}},
            "required": [name]}}}})
    assert response.status_code == 200
    a.canaries.add_completion("completion (json schema)", response.json()["choices"][0]["message"]["content"])


@scenario
def schema_llama_cpp_cannot_parse(a: Audit) -> None:
    """A quote in a property name made llama.cpp print the whole grammar (with
    the schema's names and constants) to stderr, then crash the process."""
    name = a.canary("schema property with a quote") + '"'
    schema = {"type": "object", "properties": {name: {"const": a.canary("schema constant") + "\\"}}}
    response = a.post({"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "JSON"}],
                       "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}})
    assert response.status_code == 400, response.text
    tool = {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {a.canary("tool parameter with a quote") + '"': {"type": "string"}}}}}
    response = a.post({"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "call f"}],
                       "tools": [tool], "tool_choice": {"type": "function", "function": {"name": "f"}}})
    assert response.status_code == 400, response.text
    assert a.gateway.proc is not None and a.gateway.proc.poll() is None


@scenario
def malformed_json(a: Audit) -> None:
    canary = a.canary("malformed JSON body")
    response = a.post(f'{{"model": "{MODEL}", "messages": [{{"role": "user", "content": "{canary}"'.encode())
    assert response.status_code == 400


@scenario
def invalid_field_values(a: Audit) -> None:
    canary = a.canary("invalid role")
    response = a.post({"messages": [{"role": canary, "content": a.canary("content next to invalid role")}]})
    assert response.status_code == 400
    # Positive control: the client's own value comes back to the client.
    assert canary in response.text
    response = a.post({"messages": [{"role": "user", "content": "x"}], "tool_choice": a.canary("tool_choice")})
    assert response.status_code == 400


@scenario
def unknown_model(a: Audit) -> None:
    canary = a.canary("unknown model name")
    response = a.post({"model": canary, "messages": [{"role": "user", "content": a.canary("prompt (404)")}]})
    assert response.status_code == 404
    assert canary in response.text  # positive control: the client sees it
    response = httpx.get(f"{a.gateway.base_url}/models/{a.canary('model path')}", headers=a.headers(), timeout=10)
    assert response.status_code == 404


@scenario
def auth_failures(a: Audit) -> None:
    body = {"messages": [{"role": "user", "content": a.canary("prompt (401)")}]}
    wellformed = "privat_" + a.canary("x")[7:] + "ABCDEFGH"
    a.canaries.values["unknown well-formed key"] = wellformed
    assert a.post(body, key=wellformed).status_code == 401
    assert a.post(body, key=a.canary("malformed key")).status_code == 401
    response = httpx.post(a.gateway.base_url + "/chat/completions", json=body, timeout=10,
                          headers={"Authorization": f"Basic {a.canary('basic credentials')}"})
    assert response.status_code == 401
    response = httpx.get(f"{a.gateway.base_url}/usage?api_key={a.canary('key in query')}", timeout=10)
    assert response.status_code == 401


@scenario
def query_headers_and_paths(a: Audit) -> None:
    response = a.post({"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "Say OK."}]},
                      path=f"/chat/completions?user={a.canary('query string')}",
                      headers={"User-Agent": a.canary("user agent"), "Cookie": f"s={a.canary('cookie')}",
                               "X-Forwarded-For": a.canary("forwarded for"), "Referer": a.canary("referer")})
    assert response.status_code == 200
    assert httpx.get(f"{a.gateway.url}/{a.canary('unknown path')}", timeout=10).status_code == 404
    response = httpx.get(f"{a.gateway.base_url}/usage?since={a.canary('usage since')}", headers=a.headers(),
                         timeout=10)
    assert response.status_code == 400


@scenario
def oversized_body(a: Audit) -> None:
    canary = a.canary("oversized body")
    filler = (canary + " ") * (MAX_BODY // len(canary) + 10)
    response = a.post({"model": MODEL, "messages": [{"role": "user", "content": filler}]})
    assert response.status_code == 413


@scenario
def client_disconnect(a: Audit) -> None:
    prompt = a.canary("prompt (client disconnects)")
    body = {"model": MODEL, "max_tokens": 200, "stream": True,
            "messages": [{"role": "user", "content": f"Write a long story about {prompt}."}]}
    received = []
    with httpx.stream("POST", a.gateway.base_url + "/chat/completions", json=body, headers=a.headers(),
                      timeout=60) as response:
        for line in response.iter_lines():
            if line.startswith("data: ") and '"content"' in line:
                received.append(json.loads(line[6:])["choices"][0]["delta"].get("content") or "")
                if len(received) >= 3:
                    break
    a.canaries.add_completion("completion (cut off)", "".join(received))
    time.sleep(0.5)


@dataclass
class Received:
    """What a client got from a streamed request."""

    status: int
    raw: str
    content: str = ""
    thinking: str = ""
    arguments: str = ""
    error: bool = False


def stream(a: Audit, body: dict[str, Any], *, leave_after: int | None = None) -> Received:
    """A streamed request with httpx; ``leave_after`` content events, then disconnect."""
    with httpx.stream("POST", a.gateway.base_url + "/chat/completions", json={**body, "stream": True},
                      headers=a.headers(), timeout=60) as response:
        got = Received(response.status_code, "")
        events = 0
        for line in response.iter_lines():
            got.raw += line + "\n"
            if not line.startswith("data: {"):
                continue
            data = json.loads(line[6:])
            got.error = got.error or "error" in data
            for choice in data.get("choices") or ():
                delta = choice.get("delta") or {}
                got.content += delta.get("content") or ""
                got.thinking += delta.get("thinking") or ""
                got.arguments += "".join((c.get("function") or {}).get("arguments") or ""
                                         for c in delta.get("tool_calls") or ())
                events += bool(delta.get("content"))
            if leave_after is not None and events >= leave_after:
                break
    return got


def ask(a: Audit, model: str, tag: str) -> dict[str, Any]:
    return {"model": model, "max_tokens": 50,
            "messages": [{"role": "user", "content": f"Question {a.canary(f'prompt ({tag})')}"}]}


@scenario
def thinking_and_answer_streamed(a: Audit) -> None:
    thinking, answer = a.canary("thinking (backend output)"), a.canary("answer (backend output)")
    a.fakes["vllm"].reply(ThinkingDelta(f"Let me think about {thinking}."), TextDelta(f"It is {answer}."))
    got = stream(a, ask(a, "fake-vllm", "thinking"))
    # Positive control: the client receives both.
    assert got.status == 200 and thinking in got.thinking and answer in got.content


@scenario
def tool_calls_from_backends(a: Audit) -> None:
    for kind in ("llamacpp", "ollama", "openai"):
        arguments = json.dumps({"city": a.canary(f"tool call arguments (backend output, {kind})")})
        a.fakes[kind].reply(ToolCallDelta(0, name="get_weather", arguments=arguments))
        got = stream(a, ask(a, f"fake-{kind}", f"tool call, {kind}"))
        assert got.status == 200 and json.loads(got.arguments) == json.loads(arguments), kind
    arguments = json.dumps({"city": a.canary("tool call arguments (backend output, non-streamed)")})
    a.fakes["vllm"].reply(TextDelta("Checking."), ToolCallDelta(0, name="get_weather", arguments=arguments))
    response = a.post(ask(a, "fake-vllm", "tool call, non-streamed"))
    assert response.status_code == 200
    assert json.loads(response.json()["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]) \
        == json.loads(arguments)


@scenario
def backend_errors_echo_the_prompt(a: Audit) -> None:
    for kind, status in (("llamacpp", 400), ("vllm", 500), ("openai", 401), ("ollama", 404), ("vllm", 400)):
        body = ask(a, f"fake-{kind}", f"upstream {status}, {kind}")
        prompt = body["messages"][0]["content"]
        a.fakes[kind].fail(status, f"could not process '{prompt}' (see {a.canary(f'upstream error {status}')})")
        response = a.post(body)
        assert response.status_code >= 400, (kind, status)
    # Positive control: the upstream text does reach the client that sent it.
    body = ask(a, "fake-llamacpp", "upstream 400, echoed")
    a.fakes["llamacpp"].fail(400, f"bad request: {body['messages'][0]['content']}")
    response = a.post(body)
    assert response.status_code == 400 and body["messages"][0]["content"] in response.text


@scenario
def failures_mid_stream(a: Audit) -> None:
    scripts = {
        "vllm": lambda text, tag: (TextDelta(text), ErrorLine(f"CUDA error while decoding {a.canary(tag)}")),
        "ollama": lambda text, tag: (TextDelta(text), ErrorLine(f"runner crashed on {a.canary(tag)}")),
        "llamacpp": lambda text, tag: (TextDelta(text), Drop()),
        "openai": lambda text, tag: (TextDelta(text), Raw(f"data: {{broken {a.canary(tag)}\n\n".encode())),
    }
    for kind, script in scripts.items():
        text = a.canary(f"answer before the failure ({kind})")
        a.fakes[kind].reply(*script(text, f"upstream in-band error ({kind})"))
        got = stream(a, ask(a, f"fake-{kind}", f"mid-stream failure, {kind}"))
        assert got.status == 200 and text in got.content and got.error, (kind, got.raw)
        assert "[DONE]" in got.raw


@scenario
def timeouts(a: Audit) -> None:
    slow = a.canary("answer after the first-token timeout")
    a.fakes["llamacpp"].reply(Sleep(TIMEOUT + 2), TextDelta(slow))
    response = a.post(ask(a, "fake-llamacpp", "first-token timeout, non-streamed"))
    assert response.status_code >= 500 and slow not in response.text
    a.fakes["llamacpp"].reply(Sleep(TIMEOUT + 2), TextDelta(slow))
    got = stream(a, ask(a, "fake-llamacpp", "first-token timeout, streamed"))
    assert (got.error or got.status >= 500) and slow not in got.raw
    before = a.canary("answer before the idle timeout")
    a.fakes["llamacpp"].reply(TextDelta(before), Hang())
    got = stream(a, ask(a, "fake-llamacpp", "idle timeout"))
    assert got.error and before in got.content


@scenario
def backend_down(a: Audit) -> None:
    response = a.post(ask(a, "down-model", "backend down"))
    assert response.status_code == 503
    got = stream(a, ask(a, "down-model", "backend down, streamed"))
    assert got.status == 503


@scenario
def client_disconnects_from_backend_stream(a: Audit) -> None:
    fake = a.fakes["ollama"]
    text = a.canary("answer before the client left")
    fake.reply(TextDelta(text), Sleep(0.2), TextDelta(a.canary("answer never delivered")), Hang())
    got = stream(a, ask(a, "fake-ollama", "client leaves"), leave_after=1)
    assert text in got.content
    deadline = time.monotonic() + 10
    while not fake.streams[-1].client_closed and time.monotonic() < deadline:
        time.sleep(0.05)
    # The gateway closed the upstream request when its client left.
    assert fake.streams[-1].client_closed


@scenario
def upstream_key_is_sent_not_logged(a: Audit) -> None:
    answer = a.canary("answer (openai upstream)")
    a.fakes["openai"].reply(TextDelta(answer))
    response = a.post(ask(a, "fake-openai", "openai upstream"))
    assert response.status_code == 200 and answer in response.text
    assert a.fakes["openai"].requests[-1].headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"


@scenario
def web_chat(a: Audit) -> None:
    """The keyless web chat: streamed only, rate-limited per client."""
    url = a.gateway.url + "/webchat/api/chat/completions"
    headers = {"X-Forwarded-For": a.canary("forwarded for (web chat)"), "User-Agent": a.canary("web chat UA")}

    def post(body: dict[str, Any]) -> httpx.Response:
        return httpx.post(url, json=body, headers=headers, timeout=120)

    response = post({"model": MODEL, "stream": True, "max_tokens": 30, "messages": [
        {"role": "user", "content": f"Repeat exactly: {a.canary('prompt (web chat)')}"}]})
    assert response.status_code == 200
    text = "".join(json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                   for line in response.text.splitlines() if line.startswith("data: {") and '"choices"' in line)
    a.canaries.add_completion("completion (web chat)", text)
    answer = a.canary("answer (web chat, backend output)")
    a.fakes["ollama"].reply(TextDelta(answer))
    response = post({"model": "fake-ollama", "stream": True, "messages": [
        {"role": "user", "content": a.canary("prompt (web chat, fake)")}]})
    assert response.status_code == 200 and answer in response.text
    response = post({"model": MODEL, "messages": [{"role": "user", "content": a.canary("prompt (web chat, 400)")}]})
    assert response.status_code == 400
    # One answer for the two requests: the refused one never reaches the
    # backend, and an answer left queued would go to a later scenario.
    a.fakes["ollama"].reply(TextDelta("ok"))
    statuses = [post({"model": "fake-ollama", "stream": True, "messages": [
        {"role": "user", "content": a.canary(f"prompt (web chat, limit {n})")}]}).status_code for n in range(2)]
    # requests_per_minute: 3
    assert statuses == [200, 429]


def run_scenario(audit: Audit, name: str) -> None:
    SCENARIOS[name](audit)
    audit.done.add(name)


def audit_command(audit: Audit) -> subprocess.CompletedProcess[str]:
    """`privatai audit` against the live gateway, run once; its canaries join
    ours for the final scan. Its requests go to a fake backend: what the
    embedded model does with canaries the scenarios above cover, and the
    command's own work (probes, the scan) is the same for any model."""
    if audit.command is None:
        key = audit.gateway.create_key("auditor")
        audit.canaries.values["auditor key"] = key
        audit.auditor_key = key
        audit.command = subprocess.run(
            [sys.executable, "-m", "privatai", "audit", "--url", audit.gateway.url, "--key", key,
             "--config", str(audit.gateway.config_path), "--log-file", str(audit.gateway.output_path),
             "--model", "fake-vllm", "--max-tokens", "24"],
            capture_output=True, text=True, timeout=600, cwd=ROOT, env=audit.gateway.env)
        for line in audit.command.stdout.splitlines():
            match = re.match(r"\s+(.+?)\s{2,}(CANARY-[0-9a-f]{32})$", line)
            if match:
                audit.canaries.values[f"audit: {match.group(1)}"] = match.group(2)
    return audit.command


@pytest.fixture
def completed(audit: Audit) -> Audit:
    """The audit with every scenario and the audit command run (those that
    earlier tests have not run yet, in their order): what the final checks
    scan for, whether they run after the whole module or alone."""
    for name in SCENARIOS:
        if name not in audit.done:
            run_scenario(audit, name)
    audit_command(audit)
    return audit


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario(audit: Audit, name: str) -> None:
    run_scenario(audit, name)


@pytest.mark.slow
def test_audit_command_passes_on_the_gateway(audit: Audit) -> None:
    """`privatai audit` against the live gateway: every request as expected, nothing found."""
    done = audit_command(audit)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Result: PASS" in done.stdout and "UNEXPECTED" not in done.stdout
    assert "web chat, streamed (no key)" in done.stdout
    # The website's forms, with canaries in every field a visitor reaches without an account.
    for form in ("sign-up (malformed address)", "login", "password reset request", "new password",
                 "confirmation", "invitation", "second factor (no session)"):
        assert re.search(rf"website: {re.escape(form)}\s+\d+", done.stdout), (form, done.stdout)
    assert re.search(r"/metrics\s+1\s+[1-9]\d*\s+0", done.stdout), done.stdout
    assert "usage is recorded against the key " + audit.auditor_key[:12] in done.stdout
    assert sum(label.startswith("audit: ") for label in audit.canaries.values) >= 10


ACCESS = re.compile(r"privatai\.access: request (.*)$", re.MULTILINE)
FIELD = re.compile(r"(\w+)=(.*?)(?= \w+=|$)")


def access_fields(line: str) -> dict[str, str]:
    return dict(FIELD.findall(line))


@pytest.mark.slow
def test_access_lines_hold_only_the_allowed_fields(completed: Audit) -> None:
    audit = completed
    # One run of the process each (the gateway is started again after
    # test_no_canary_anywhere): the client hash's key lives as long as a run.
    runs = [ACCESS.findall(run) for run in audit.gateway.output().split("PrivatAI listening on")[1:]]
    lines = [line for run in runs for line in run]
    assert lines
    allowed = {"method", "route", "status", "ms", "bytes", "model", "backend", "key", "client",
               "tokens_in", "tokens_out", "error"}
    for line in lines:
        fields = access_fields(line)
        assert set(fields) <= allowed, line
        assert "127.0.0.1" not in line
        # hashed_client_ip: a 16-hex keyed hash, the same for every request from here.
        assert re.fullmatch(r"[0-9a-f]{16}", fields["client"]), line
        assert fields["route"].startswith("/") and "?" not in fields["route"]
    assert all(len({access_fields(line)["client"] for line in run}) == 1 for run in runs if run)
    # An error is named by its class and status only.
    errors = {access_fields(line)["error"] for line in lines if "error=" in line}
    assert errors and all(re.fullmatch(r"[A-Za-z_]+( \(status \d+\))?", e) for e in errors), errors
    assert any("route=/v1/chat/completions status=200" in line and f"key={audit.key[:12]}" in line
               for line in lines)


@pytest.mark.slow
def test_no_core_dumps(audit: Audit) -> None:
    assert audit.gateway.proc is not None
    limits = Path(f"/proc/{audit.gateway.proc.pid}/limits").read_text()
    assert re.search(r"^Max core file size\s+0\s+0\s+bytes", limits, re.MULTILINE), limits


def scan_everything(audit: Audit) -> dict[str, Any]:
    state = audit.gateway.workdir
    db = Path(audit.gateway.config["store"]["path"])
    results = [scan_file(path, audit.canaries) for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm"))
               if path.exists()]
    results.append(scan_bytes("gateway output", audit.gateway.output_path.read_bytes(), audit.canaries))
    results.append(scan_tree("TMPDIR", audit.tmpdir, audit.canaries))
    results.append(scan_tree("state directory", state, audit.canaries, skip=[audit.tmpdir]))
    return {r.name: r for r in results}


@pytest.mark.slow
def test_no_canary_anywhere(completed: Audit) -> None:
    """Every scenario's canaries against every place the gateway can write;
    it stops the gateway to scan what a stopped one leaves behind."""
    audit = completed
    assert set(SCENARIOS) <= audit.done and audit.command is not None
    assert len(audit.canaries.values) >= 40
    output = audit.gateway.output()
    # Positive controls for the output capture: DEBUG records of a library and
    # our access lines are there, so the scan reads the real log.
    assert "DEBUG aiosqlite:" in output and "privatai.access: request" in output
    assert "status=413" in output and "status=401" in output and "status=404" in output

    # /metrics ends up in a Prometheus database: it must be as clean.
    metrics = httpx.get(f"{audit.gateway.url}/metrics", timeout=10)
    assert metrics.status_code == 200 and "privatai_requests" in metrics.text
    assert not scan_bytes("/metrics", metrics.content, audit.canaries).found

    # /usage writes the pending usage first: the database holds all it will.
    assert httpx.get(f"{audit.gateway.base_url}/usage", headers=audit.headers(), timeout=10).status_code == 200
    running = scan_everything(audit)
    assert running["TMPDIR"].files == 0, sorted(str(p) for p in walk_files(audit.tmpdir))
    home = audit.gateway.workdir / "home"
    assert not list(walk_files(home)), sorted(str(p) for p in walk_files(home))
    assert audit.gateway.stop() == 0
    stopped = scan_everything(audit)
    db = Path(audit.gateway.config["store"]["path"])
    assert db.stat().st_size > 0
    for results in (running, stopped):
        findings = {name: r.found for name, r in results.items() if r.total}
        assert not findings, findings
        assert results["gateway output"].nbytes > 10_000
    # The usage of the audit key was counted (numbers only).
    rows = sqlite3.connect(db).execute("SELECT model, requests, prompt_tokens FROM usage_daily").fetchall()
    served = {MODEL, "down-model", *(f"fake-{kind}" for kind in audit.fakes)}
    assert rows and {model for model, _, _ in rows} <= served

    # Positive control for the file scanner: a file written with a canary in
    # the state directory is found.
    leak = audit.gateway.workdir / "leak.txt"
    label, value = next(iter(audit.canaries.values.items()))
    leak.write_text(f"some log line {value}\n")
    try:
        found = scan_tree("state directory", audit.gateway.workdir, audit.canaries, skip=[audit.tmpdir])
        assert found.found == {label: 1}
    finally:
        leak.unlink()


# -- `privatai audit` finds a leak ----------------------------------------------------

class LeakyServer:
    """A deliberately leaky 'deployment': an OpenAI-style API that writes every
    request (headers and body) into its log file and the Authorization header
    into a file next to its database."""

    def __init__(self, workdir: Path, leak: bool = True) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.log = workdir / "leaky.log"
        self.log.write_text("started\n")
        self.state = workdir / "state"
        self.state.mkdir()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return None

            def _answer(self, status: int, body: bytes, content_type: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                with server.log.open("a") as log:
                    log.write(f"GET {self.path if leak else ''}\n")
                if self.path.endswith("/models"):
                    self._answer(200, b'{"object":"list","data":[{"id":"m","object":"model"}]}')
                else:
                    self._answer(404, b'{"error":{"message":"no"}}')

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with server.log.open("a") as log:
                    log.write(f"POST {body.decode(errors='replace') if leak else len(body)}\n")
                if leak:
                    with (server.state / "sessions.txt").open("a") as sessions:
                        sessions.write(self.headers.get("Authorization", "") + "\n")
                if b'"stream": true' in body or b'"stream":true' in body:
                    chunk = {"choices": [{"index": 0, "delta": {"content": "Hello there."}}]}
                    data = f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode()
                    self._answer(200, data, "text/event-stream")
                else:
                    self._answer(200, json.dumps({"choices": [{"index": 0, "message": {
                        "role": "assistant", "content": "Hello there."}}]}).encode())

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> LeakyServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_audit_command_finds_a_leak(tmp_path: Path) -> None:
    with LeakyServer(tmp_path) as leaky:
        config = tmp_path / "backends.yaml"
        config.write_text(f"backends: [{{name: e, kind: embedded, models: [m]}}]\n"
                          f"store: {{path: {leaky.state / 'privatai.db'}}}\n")
        key = "privat_" + "K" * 40
        done = subprocess.run([sys.executable, "-m", "privatai", "audit", "--url", leaky.url, "--key", key,
                               "--config", str(config), "--log-file", str(leaky.log), "--settle", "0"],
                              capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Result: FAIL" in done.stdout
    findings = done.stdout.split("Findings:")[1]
    assert re.search(rf"{re.escape(str(leaky.log))}\s+prompt\s+\d+x", findings)
    assert re.search(r"state/ \(all other files\)\s+API key used by the audit\s+\d+x", findings)
    # Counts only: no line of the leaked log is reproduced.
    assert "POST {" not in done.stdout


def test_audit_command_passes_a_clean_server_but_not_an_unread_journal(tmp_path: Path) -> None:
    with LeakyServer(tmp_path, leak=False) as clean:
        config = tmp_path / "backends.yaml"
        config.write_text(f"backends: [{{name: e, kind: embedded, models: [m]}}]\n"
                          f"store: {{path: {clean.state / 'privatai.db'}}}\n")
        command = [sys.executable, "-m", "privatai", "audit", "--url", clean.url, "--key", "privat_" + "K" * 40,
                   "--config", str(config), "--log-file", str(clean.log), "--settle", "0"]
        passed = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)
        # A journal that yields nothing (no journald here, or no permission)
        # must not count as clean while the server logs at INFO.
        unread = subprocess.run(command + ["--journal-unit", "privatai-audit-test"], capture_output=True,
                                text=True, timeout=120, cwd=ROOT)
    assert passed.returncode == 0 and "Result: PASS" in passed.stdout, passed.stdout + passed.stderr
    assert unread.returncode == 2 and "Result: INCOMPLETE" in unread.stdout, unread.stdout + unread.stderr


def test_audit_command_usage_errors(tmp_path: Path) -> None:
    config = tmp_path / "backends.yaml"
    config.write_text("backends: [{name: e, kind: embedded, models: [m]}]\n")
    base = [sys.executable, "-m", "privatai", "audit"]
    missing_url = subprocess.run(base + ["--key", "k"], capture_output=True, text=True, cwd=ROOT)
    unreachable = subprocess.run(base + ["--url", "http://127.0.0.1:9", "--key", "k", "--config", str(config)],
                                 capture_output=True, text=True, cwd=ROOT, timeout=60)
    no_log = subprocess.run(base + ["--url", "http://127.0.0.1:9", "--key", "k", "--config", str(config),
                                    "--log-file", str(tmp_path / "absent.log")],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert (missing_url.returncode, unreachable.returncode, no_log.returncode) == (2, 2, 2)
    assert "cannot reach" in unreachable.stderr and "cannot read log file" in no_log.stderr


# -- usage retention -----------------------------------------------------------------

def stored_days(db_path: str) -> set[str]:
    db = sqlite3.connect(db_path)
    try:
        return {row[0] for row in db.execute("SELECT day FROM usage_daily")}
    finally:
        db.close()


async def test_usage_retention_prunes_old_days(tmp_path: Path, scripted: ScriptedBackends) -> None:
    """Days older than usage_retention_days are deleted when the server starts
    (here in this process, with a scripted backend: pruning is the store's)."""
    backend = scripted.backend("embedded")
    gateway = LocalGateway(tmp_path, {"default_model": MODEL, "backends": [backend.entry(MODEL)],
                                      "store": {"usage_retention_days": 30}})
    key = gateway.create_key("retention")
    db_path = gateway.config["store"]["path"]
    today = datetime.now(timezone.utc).date()
    days = {"old": (today - timedelta(days=31)).isoformat(), "kept": (today - timedelta(days=30)).isoformat(),
            "recent": (today - timedelta(days=1)).isoformat()}
    db = sqlite3.connect(db_path)
    with db:
        key_id = db.execute("SELECT id FROM api_keys WHERE prefix = ?", (key[:12],)).fetchone()[0]
        db.executemany("INSERT INTO usage_daily VALUES (?, ?, ?, 1, 10, 20)",
                       [(key_id, day, MODEL) for day in days.values()])
    db.close()
    async with gateway:
        async def pruned() -> set[str] | None:
            stored = await asyncio.to_thread(stored_days, db_path)
            return stored if days["old"] not in stored else None

        stored = await eventually(pruned, 30, "the old day pruned")
        async with httpx.AsyncClient(timeout=10) as http:
            response = await http.get(f"{gateway.base_url}/usage", headers={"Authorization": f"Bearer {key}"})
    assert stored == {days["kept"], days["recent"]}
    assert response.json()["requests"] == 2
