"""The web chat page in headless Chromium, against a fake gateway.

The fake (aiohttp, in a thread) serves the static files exactly as the gateway
is meant to (``/webchat`` with the strict CSP, ``/webchat/static/...``) and
answers ``/webchat/api/models`` and ``/webchat/api/chat/completions`` with a
scripted reply in PrivatAI's target SSE format, tokens 100 ms apart, or with
a 429 / an error on demand. Debian's chromium is driven through Playwright's
``executable_path`` because browser downloads fail here.
"""
from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.conftest import CHROMIUM

aiohttp_web = pytest.importorskip("aiohttp.web")

STATIC = Path(__file__).resolve().parent.parent / "privatai" / "web" / "static"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CSP = ("default-src 'self'; connect-src 'self'; img-src 'self' data:; style-src 'self'; "
       "script-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
CONTENT_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
                 ".html": "text/html; charset=utf-8"}
MODELS = ["smollm2", "qwen3"]
THINKING = ["Der ", "Nutzer ", "grüßt."]
ANSWER = ["Hallo", "!", " Wie", " kann", " ich", " helfen", "?", " 😊"]
TOKEN_GAP = 0.1

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium")]


# ---------------------------------------------------------------------------
# The fake gateway


@dataclass
class FakeGateway:
    # What the next chat request gets: answer | slow | 429 | inband | 400
    mode: str = "answer"
    requests: list[dict[str, Any]] = field(default_factory=list)
    disconnected: threading.Event = field(default_factory=threading.Event)
    port: int = 0

    def app(self) -> Any:
        web = aiohttp_web
        app = web.Application()
        app.router.add_get("/webchat", self.page)
        app.router.add_get("/webchat/static/{name}", self.static)
        app.router.add_get("/webchat/api/models", self.models)
        app.router.add_post("/webchat/api/chat/completions", self.chat)
        return app

    async def page(self, request: Any) -> Any:
        return self._file(STATIC / "index.html", csp=True)

    async def static(self, request: Any) -> Any:
        name = request.match_info["name"]
        path = STATIC / name
        if "/" in name or name.startswith(".") or not path.is_file():
            raise aiohttp_web.HTTPNotFound()
        return self._file(path)

    @staticmethod
    def _file(path: Path, csp: bool = False) -> Any:
        headers = {"Content-Type": CONTENT_TYPES[path.suffix], "X-Content-Type-Options": "nosniff",
                   "Cache-Control": "no-store"}
        if csp:
            headers["Content-Security-Policy"] = CSP
        return aiohttp_web.Response(body=path.read_bytes(), headers=headers)

    async def models(self, request: Any) -> Any:
        return aiohttp_web.json_response(
            {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "privatai"}
                                        for m in MODELS]})

    async def chat(self, request: Any) -> Any:
        body = await request.json()
        self.requests.append(body)
        mode = self.mode
        if mode == "429":
            return aiohttp_web.json_response(
                {"error": {"message": "The web chat allows 10 requests per minute.",
                           "type": "rate_limit_error", "param": None,
                           "code": "requests_per_minute_exceeded"}},
                status=429, headers={"Retry-After": "42"})
        if mode == "400":
            return aiohttp_web.json_response(
                {"error": {"message": "messages[0].content: expected a string",
                           "type": "invalid_request_error", "param": "messages",
                           "code": "invalid_request"}}, status=400)

        response = aiohttp_web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        base = {"id": "chatcmpl-fake123", "object": "chat.completion.chunk",
                "created": int(time.time()), "model": body["model"]}

        async def send(delta: dict[str, Any], finish: str | None = None,
                       usage: dict[str, int] | None = None) -> None:
            chunk: dict[str, Any] = {**base, "choices": [
                {"index": 0, "delta": delta, "finish_reason": finish}]}
            if usage:
                chunk["usage"] = usage
            await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")

        try:
            await response.write(b": keep-alive\n\n")  # as the gateway sends while waiting
            await send({"role": "assistant", "content": ""})
            for piece in THINKING:
                await asyncio.sleep(TOKEN_GAP)
                await send({"thinking": piece})
            tokens = ANSWER * 8 if mode == "slow" else ANSWER
            for n, piece in enumerate(tokens):
                await asyncio.sleep(TOKEN_GAP)
                await send({"content": piece})
                if mode == "inband" and n == 2:
                    error = {"error": {"message": "The backend stopped answering.",
                                       "type": "backend_error", "param": None,
                                       "code": "backend_error"}}
                    await response.write(b"data: " + json.dumps(error).encode() + b"\n\n")
                    await response.write(b"data: [DONE]\n\n")
                    return response
                if n % 3 == 2:
                    await response.write(b": keep-alive\n\n")
            await send({}, "stop", {"prompt_tokens": 12, "completion_tokens": len(tokens),
                                    "total_tokens": 12 + len(tokens)})
            await response.write(b"data: [DONE]\n\n")
        except (ConnectionResetError, asyncio.CancelledError):
            # The browser went away (stop button): the real gateway cancels upstream here.
            self.disconnected.set()
            raise
        return response


@pytest.fixture(scope="module")
def gateway() -> Iterator[FakeGateway]:
    fake = FakeGateway()
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict[str, Any] = {}

    async def start() -> None:
        runner = aiohttp_web.AppRunner(fake.app(), handler_cancellation=True)
        await runner.setup()
        site = aiohttp_web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        fake.port = site._server.sockets[0].getsockname()[1]
        holder["runner"] = runner
        ready.set()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10)
    yield fake
    asyncio.run_coroutine_threadsafe(holder["runner"].cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


# Recorded in the page before any of its scripts run; devtools-injected
# scripts are not subject to the page's CSP.
WATCH_CSP = """
window.__cspViolations = [];
document.addEventListener('securitypolicyviolation', (e) => {
  window.__cspViolations.push(e.violatedDirective + ' ' + e.blockedURI);
});
"""


@dataclass
class Page:
    page: Any
    console: list[str]

    def shot(self, name: str) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"webchat-{name}.png"), full_page=True)

    def problems(self) -> list[str]:
        violations = self.page.evaluate("window.__cspViolations")
        return self.console + [f"CSP: {v}" for v in violations]


def open_page(browser: Any, gateway: FakeGateway, locale: str = "en-US",
              viewport: dict[str, int] | None = None, color_scheme: str = "light") -> Page:
    context = browser.new_context(locale=locale, color_scheme=color_scheme,
                                  viewport=viewport or {"width": 1000, "height": 760})
    page = context.new_page()
    page.set_default_timeout(10_000)
    page.add_init_script(WATCH_CSP)
    console: list[str] = []

    def on_console(message: Any) -> None:
        text = message.text
        # Chromium logs every non-2xx fetch; the 429/400 we provoke are expected.
        if "the server responded with a status of 429" in text or \
                "the server responded with a status of 400" in text:
            return
        if message.type in ("error", "warning") or "Content Security Policy" in text:
            console.append(f"{message.type}: {text}")

    page.on("console", on_console)
    page.on("pageerror", lambda error: console.append(f"pageerror: {error}"))
    page.goto(f"http://127.0.0.1:{gateway.port}/webchat")
    page.wait_for_selector("#model option[value='qwen3']", state="attached")
    page.wait_for_function("document.documentElement.dataset.state === 'idle'")
    return Page(page, console)


def answer_lengths_while_streaming(page: Any) -> list[int]:
    """Samples the last answer's length until the reply is done."""
    answer = page.locator("[data-testid=answer]").last
    reply = page.locator("[data-testid=assistant-message]").last
    lengths: list[int] = []
    deadline = time.monotonic() + 15
    while reply.get_attribute("data-done") is None and time.monotonic() < deadline:
        lengths.append(len(answer.text_content() or ""))
        time.sleep(0.03)
    lengths.append(len(answer.text_content() or ""))
    return lengths


def send(page: Any, text: str) -> None:
    page.fill("[data-testid=prompt]", text)
    page.press("[data-testid=prompt]", "Enter")


# ---------------------------------------------------------------------------


def test_chat_streams_thinks_stops_and_rate_limits(browser: Any, gateway: FakeGateway) -> None:
    ui = open_page(browser, gateway)
    page = ui.page
    assert page.evaluate("document.documentElement.lang") == "en"
    assert page.locator("[data-testid=send]").inner_text() == "Send"
    options = page.locator("#model option").all_inner_texts()
    assert options == MODELS
    page.select_option("[data-testid=model-select]", "qwen3")
    ui.shot("1-empty")

    # 1. A streamed answer with thinking.
    gateway.mode = "answer"
    send(page, "Hallo")
    lengths = answer_lengths_while_streaming(page)
    full = "".join(ANSWER)
    assert lengths[-1] == len(full)
    growth = sorted(set(lengths))
    assert lengths == sorted(lengths), "the answer only ever grows"
    assert len(growth) >= 5, f"tokens should arrive one by one, saw lengths {growth}"
    assert page.locator("[data-testid=answer]").last.inner_text() == full
    thinking = page.locator("[data-testid=thinking]").last
    assert thinking.is_visible()
    assert not thinking.evaluate("d => d.open")  # collapsed by default
    page.locator("[data-testid=thinking] summary").last.click()
    assert page.locator("[data-testid=thinking-text]").last.inner_text() == "".join(THINKING)
    assert "20 tokens" in page.locator("[data-testid=meta]").last.inner_text()
    assert gateway.requests[-1] == {"model": "qwen3", "stream": True,
                                    "messages": [{"role": "user", "content": "Hallo"}]}
    ui.shot("2-answered")

    # 2. Stop mid-stream: the partial answer stays, the server sees the disconnect.
    gateway.mode = "slow"
    gateway.disconnected.clear()
    send(page, "Erzähl mehr")
    answer = page.locator("[data-testid=answer]").last
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=answer]')].at(-1).textContent.length >= 10")
    assert page.locator("[data-testid=stop]").is_visible()
    page.click("[data-testid=stop]")
    page.wait_for_selector("[data-testid=assistant-message][data-done=stopped]")
    partial = answer.inner_text()
    assert 10 <= len(partial) < len(full * 8)
    assert gateway.disconnected.wait(5), "the fake gateway should see the browser go away"
    time.sleep(0.4)
    assert answer.inner_text() == partial, "nothing more arrives after stop"
    assert "Stopped." in page.locator("[data-testid=meta]").last.inner_text()
    assert page.locator("[data-testid=send]").is_visible()
    assert gateway.requests[-1]["messages"] == [
        {"role": "user", "content": "Hallo"},
        {"role": "assistant", "content": full},
        {"role": "user", "content": "Erzähl mehr"},
    ]
    ui.shot("3-stopped")

    # 3. The history sent next includes the partial answer.
    gateway.mode = "429"
    send(page, "Noch eine Frage")
    notice = page.locator("[data-testid=notice]")
    notice.wait_for(state="visible")
    assert notice.get_attribute("data-kind") == "rate-limit"
    assert notice.get_attribute("data-retry-after") == "42"
    text = notice.inner_text()
    assert "a lot of messages" in text and "in 42 seconds" in text, text
    assert gateway.requests[-1]["messages"][-2] == {"role": "assistant", "content": partial}
    # The refused message is given back, and is not in the conversation.
    assert page.input_value("[data-testid=prompt]") == "Noch eine Frage"
    assert page.locator("[data-testid=user-message]").count() == 2
    ui.shot("4-rate-limited")

    # 4. Switch language: the UI and the notice follow.
    page.click("[data-testid=lang-toggle]")
    assert page.evaluate("document.documentElement.lang") == "de"
    assert page.locator("[data-testid=send]").inner_text() == "Senden"
    german = notice.inner_text()
    assert "in 42 Sekunden" in german and "viele Nachrichten" in german, german
    assert "Angehalten." in page.locator("[data-testid=meta]").last.inner_text()
    ui.shot("5-german")

    # Nothing persisted: no storage, no cookies, and a reload forgets the chat.
    assert page.evaluate("localStorage.length + sessionStorage.length") == 0
    assert page.evaluate("document.cookie") == ""
    assert ui.problems() == []
    page.reload()
    page.wait_for_function("document.documentElement.dataset.state === 'idle'")
    assert page.locator("[data-testid=user-message]").count() == 0
    assert ui.problems() == []
    page.context.close()


def test_errors_are_shown_from_the_openai_error_json(browser: Any, gateway: FakeGateway) -> None:
    ui = open_page(browser, gateway, locale="de-DE", viewport={"width": 390, "height": 760})
    page = ui.page
    assert page.evaluate("document.documentElement.lang") == "de"
    assert page.locator("[data-testid=send]").inner_text() == "Senden"

    gateway.mode = "400"
    send(page, "Test")
    notice = page.locator("[data-testid=notice]")
    notice.wait_for(state="visible")
    assert notice.get_attribute("data-kind") == "error"
    assert notice.inner_text() == "messages[0].content: expected a string"

    # An error after streaming began arrives in-band; what came before stays.
    gateway.mode = "inband"
    send(page, "Test")
    page.wait_for_selector("[data-testid=assistant-message][data-done=error]")
    assert page.locator("[data-testid=answer]").last.inner_text() == "".join(ANSWER[:3])
    assert notice.inner_text() == "Die Antwort wurde unterbrochen: The backend stopped answering."
    ui.shot("6-mobile-inband-error")
    assert ui.problems() == []
    page.context.close()


def test_stop_before_the_answer_gives_the_text_back_and_new_chat_forgets(
        browser: Any, gateway: FakeGateway) -> None:
    ui = open_page(browser, gateway, color_scheme="dark")
    page = ui.page

    # Escape while the model is still thinking: nothing to keep, so the turn is undone.
    gateway.mode = "slow"
    gateway.disconnected.clear()
    send(page, "Erste Frage")
    page.wait_for_function(
        "() => document.querySelector('[data-testid=thinking-text]')?.textContent.length > 0")
    page.keyboard.press("Escape")
    page.wait_for_function("document.documentElement.dataset.state === 'idle'")
    assert gateway.disconnected.wait(5)
    assert page.locator("[data-testid=user-message]").count() == 0
    assert page.input_value("[data-testid=prompt]") == "Erste Frage"
    assert page.locator("[data-testid=intro]").is_visible()

    # A full turn, then "New chat": the next request carries no history.
    gateway.mode = "answer"
    page.press("[data-testid=prompt]", "Enter")
    page.wait_for_selector("[data-testid=assistant-message][data-done=complete]")
    assert gateway.requests[-1]["messages"] == [{"role": "user", "content": "Erste Frage"}]
    ui.shot("7-dark")
    page.click("[data-testid=new-chat]")
    assert page.locator("[data-testid=assistant-message]").count() == 0
    send(page, "Zweite Frage")
    page.wait_for_selector("[data-testid=assistant-message][data-done=complete]")
    assert gateway.requests[-1]["messages"] == [{"role": "user", "content": "Zweite Frage"}]
    assert ui.problems() == []
    page.context.close()


SSE_CASES = r"""
async () => {
  const { SSEParser } = await import('/webchat/static/sse.js');
  const run = (chunks) => {
    const out = [];
    const parser = new SSEParser((data) => out.push(data));
    for (const chunk of chunks) parser.push(chunk);
    parser.end();
    return out;
  };
  return {
    plain: run(['data: {"a":1}\n\ndata: [DONE]\n\n']),
    comments: run([': keep-alive\n\n', 'data: x\n\n', ':\n\n']),
    split: run(['da', 'ta: {"a"', ':1}\n', '\n']),
    crlfSplit: run(['data: one\r', '\n\r\ndata: two\r\n\r\n']),
    multiline: run(['data: a\ndata: b\n\n']),
    noSpace: run(['data:x\n\n']),
    otherFields: run(['event: message\nid: 7\nretry: 10\ndata: y\n\n']),
    unterminated: run(['data: last']),
  };
}
"""


def test_sse_parser_edge_cases(browser: Any, gateway: FakeGateway) -> None:
    ui = open_page(browser, gateway)
    result = ui.page.evaluate(SSE_CASES)
    assert result == {
        "plain": ['{"a":1}', "[DONE]"],
        "comments": ["x"],
        "split": ['{"a":1}'],
        "crlfSplit": ["one", "two"],
        "multiline": ["a\nb"],
        "noSpace": ["x"],
        "otherFields": ["y"],
        "unterminated": ["last"],
    }
    assert ui.problems() == []
    ui.page.context.close()
