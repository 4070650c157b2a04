"""The web chat against the real gateway.

Two kinds of tests: plain HTTP (httpx and raw sockets) for the serving
contract and the limits, against the app served in this process on a real
port with a scripted backend; and headless Chromium driving the page end to
end, against a gateway process with a fake Ollama on a real socket.

Client identities: the web chat limits per client address. All test traffic
comes from loopback, so the gateways here trust ``127.0.0.1`` as a reverse
proxy (as behind nginx in production) and each test names its own client in
``X-Forwarded-For``; untrusted peers are other loopback addresses
(``127.0.0.2`` and up, bound with httpx's ``local_address``), whose
``X-Forwarded-For`` must be ignored.
"""
from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import httpx
import pytest

from privatai.core.events import TextDelta
from tests.fakes import FakeOllama, Sleep
from tests.gateway import Gateway, LocalGateway
from tests.scripted import ScriptedBackend, ScriptedBackends

MODEL = "smollm2-135m"
CSP = ("default-src 'self'; connect-src 'self'; img-src 'self' data:; style-src 'self'; "
       "script-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
CAP = 5
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
# A long answer, one token per step, for the cap to cut.
ESSAY = [TextDelta(f" word{i}") for i in range(40)]


@pytest.fixture
def backend(scripted: ScriptedBackends) -> ScriptedBackend:
    return scripted.backend("embedded")


@pytest.fixture
async def gateway(tmp_path: Path, backend: ScriptedBackend) -> AsyncIterator[LocalGateway]:
    """Small limits for the HTTP tests: 2 requests a minute, max_tokens capped at 5,
    one served model kept off the web chat's allowlist."""
    config = {
        "default_model": MODEL,
        "backends": [backend.entry(MODEL, "smollm2-unlisted")],
        "web_chat": {"requests_per_minute": 2, "max_tokens": CAP, "concurrent_streams": 1,
                     "models": [MODEL], "trusted_proxies": ["127.0.0.1"]},
        # Without the portal's landing page, / belongs to the web chat.
        "portal": {"enabled": False},
    }
    async with LocalGateway(tmp_path, config) as gw:
        yield gw


def client(gateway: LocalGateway, source: str = "127.0.0.1", forwarded_for: str | None = None) -> httpx.AsyncClient:
    """A client on its own source address, optionally claiming to forward for someone."""
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    return httpx.AsyncClient(base_url=gateway.url, headers=headers, timeout=30,
                             transport=httpx.AsyncHTTPTransport(local_address=source))


async def ask(http: httpx.AsyncClient, content: str = "Hi", **body: Any) -> httpx.Response:
    """A web chat request as the page sends it (streamed), read to its end."""
    return await http.post("/webchat/api/chat/completions", json={
        "model": MODEL, "messages": [{"role": "user", "content": content}], "stream": True, **body})


@dataclass
class Answer:
    text: str
    finish_reason: str | None
    usage: dict[str, int] | None


def read_stream(response: httpx.Response) -> Answer:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    text, finish, usage = [], None, None
    for line in response.text.splitlines():
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        assert "error" not in chunk, chunk
        for choice in chunk["choices"]:
            text.append(choice["delta"].get("content") or "")
            finish = choice["finish_reason"] or finish
        usage = chunk.get("usage") or usage
    return Answer("".join(text), finish, usage)


async def raw_get(gateway: LocalGateway, target: str) -> int:
    """GET with the request target sent byte for byte (httpx would resolve the dot segments)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
    head = await reader.readline()
    writer.close()
    await writer.wait_closed()
    return int(head.split()[1])


# ---------------------------------------------------------------------------
# Serving contract


async def test_page_has_the_exact_csp_and_security_headers(gateway: LocalGateway) -> None:
    async with httpx.AsyncClient() as http:
        for path in ("/webchat", "/webchat/"):
            response = await http.get(gateway.url + path)
            assert response.status_code == 200, path
            assert response.headers["content-type"] == "text/html; charset=utf-8"
            assert response.headers["content-security-policy"] == CSP
            assert response.headers["x-content-type-options"] == "nosniff"
            assert response.headers["referrer-policy"] == "no-referrer"
            assert '<script type="module" src="/webchat/static/chat.js">' in response.text
        # Revalidation instead of stale JS after an upgrade, cheap thanks to the ETag.
        assert response.headers["cache-control"] == "no-cache"
        again = await http.get(gateway.url + "/webchat", headers={"If-None-Match": response.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    assert again.headers["content-security-policy"] == CSP


async def test_root_redirects_to_the_chat(gateway: LocalGateway) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.get(gateway.url + "/")
    assert response.status_code == 302 and response.headers["location"] == "/webchat"


@pytest.mark.parametrize(("name", "content_type"), [
    ("chat.js", "text/javascript; charset=utf-8"),
    ("sse.js", "text/javascript; charset=utf-8"),
    ("chat.css", "text/css; charset=utf-8"),
])
async def test_static_files_with_their_types(gateway: LocalGateway, name: str, content_type: str) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{gateway.url}/webchat/static/{name}")
    assert response.status_code == 200
    assert response.headers["content-type"] == content_type
    assert response.headers["x-content-type-options"] == "nosniff"
    source = Path(__file__).resolve().parent.parent / "privatai" / "web" / "static" / name
    assert response.content == source.read_bytes()


TRAVERSALS = [
    "/webchat/static/../app.py",
    "/webchat/static/../../privatai/app.py",
    "/webchat/static/%2e%2e/app.py",
    "/webchat/static/%2e%2e%2fapp.py",
    "/webchat/static/..%2fapp.py",
    "/webchat/static/..%2F..%2Fapp.py",
    "/webchat/static/%252e%252e%252fapp.py",
    "/webchat/static/..%5capp.py",
    "/webchat/static/.%2e/api/chat.py",
    "/webchat/static//etc/passwd",
    "/webchat/static/%2fetc%2fpasswd",
    "/webchat/static/",
    "/webchat/static/.",
    "/webchat/static/README.md",
    "/webchat/static/index.html",   # the page exists only at /webchat, with its CSP
    "/webchat/static/chat.js%00.css",
]


async def test_static_traversal_and_unlisted_names_are_404(gateway: LocalGateway) -> None:
    statuses = {target: await raw_get(gateway, target) for target in TRAVERSALS}
    assert statuses == dict.fromkeys(TRAVERSALS, 404)


async def test_models_lists_only_the_allowlist(gateway: LocalGateway) -> None:
    async with httpx.AsyncClient() as http:
        body = (await http.get(gateway.url + "/webchat/api/models")).json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == [MODEL]


# ---------------------------------------------------------------------------
# Limits


async def test_model_outside_the_allowlist_is_refused_with_an_openai_error(gateway: LocalGateway) -> None:
    async with client(gateway, forwarded_for="198.51.100.10") as http:
        response = await ask(http, model="smollm2-unlisted")
        assert response.status_code == 404
        assert response.json() == {"error": {
            "message": "The model 'smollm2-unlisted' is not available in the web chat.",
            "type": "invalid_request_error", "param": "model", "code": "model_not_found"}}
        # A refused model used none of the client's two requests a minute.
        assert (await ask(http, max_tokens=1)).status_code == 200
        assert (await ask(http, max_tokens=1)).status_code == 200


async def test_over_the_limit_is_429_with_retry_after(gateway: LocalGateway) -> None:
    async with client(gateway, forwarded_for="198.51.100.20") as http:
        assert (await ask(http, max_tokens=1)).status_code == 200
        assert (await ask(http, max_tokens=1)).status_code == 200
        refused = await ask(http, max_tokens=1)
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    error = refused.json()["error"]
    assert error["type"] == "rate_limit_error" and error["code"] == "requests_per_minute_exceeded"
    # Another client behind the same trusted proxy has its own budget.
    async with client(gateway, forwarded_for="198.51.100.21") as other:
        assert (await ask(other, max_tokens=1)).status_code == 200


async def test_spoofed_forwarded_for_from_an_untrusted_peer_gets_no_fresh_budget(gateway: LocalGateway) -> None:
    for n in (1, 2):
        async with client(gateway, source="127.0.0.2", forwarded_for=f"203.0.113.{n}") as http:
            assert (await ask(http, max_tokens=1)).status_code == 200
    async with client(gateway, source="127.0.0.2", forwarded_for="203.0.113.3") as http:
        refused = await ask(http, max_tokens=1)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "requests_per_minute_exceeded"


async def test_max_tokens_above_the_cap_is_clamped_exactly(gateway: LocalGateway, backend: ScriptedBackend) -> None:
    """The backend is asked for exactly the cap, whatever the client asked
    for, and answers as a model does: asking for 10000 gives the very text
    that asking for exactly the cap gives, and a longer one than one token
    less; ``max_completion_tokens`` (which wins over ``max_tokens``
    downstream) is clamped the same way."""
    prompt = "Write a long essay about the history of bread."
    fixed = {"temperature": 0, "seed": 7}
    for _ in range(4):
        backend.reply(*ESSAY)

    async def answer(http: httpx.AsyncClient, **limit: int) -> Answer:
        return read_stream(await ask(http, prompt, **fixed, **limit))

    async with client(gateway, forwarded_for="198.51.100.30") as http:
        huge = await answer(http, max_tokens=10_000)
        at_cap = await answer(http, max_tokens=CAP)
    async with client(gateway, forwarded_for="198.51.100.31") as http:
        huge_completion = await answer(http, max_completion_tokens=10_000)
        below = await answer(http, max_tokens=CAP - 1)

    assert huge.finish_reason == "length" and huge_completion.finish_reason == "length"
    assert huge.text and huge.text == at_cap.text == huge_completion.text
    assert huge.text.startswith(below.text) and len(below.text) < len(huge.text)
    assert huge.usage is not None and 1 <= huge.usage["completion_tokens"] <= CAP + 2
    sent = [(a.request.max_tokens, a.request.max_completion_tokens) for a in backend.asked]
    assert sent == [(CAP, None), (CAP, None), (CAP, None), (CAP - 1, None)]


async def test_non_streamed_requests_are_refused_without_using_the_budget(gateway: LocalGateway) -> None:
    """A non-streamed answer that the client abandons could not be charged."""
    async with client(gateway, forwarded_for="198.51.100.35") as http:
        refused = await ask(http, max_tokens=1, stream=False)
        assert refused.status_code == 400
        assert refused.json()["error"]["param"] == "stream"
        assert (await ask(http, max_tokens=1)).status_code == 200
        assert (await ask(http, max_tokens=1)).status_code == 200


async def test_an_error_before_the_stream_gives_the_slot_back(gateway: LocalGateway, backend: ScriptedBackend) -> None:
    """A prompt over the model's context is refused by the backend before any
    token (400); the client's one concurrent-stream slot must be free again."""
    backend.fail(400, "the request exceeds the available context size", error_type="exceed_context_size_error")
    async with client(gateway, forwarded_for="198.51.100.40") as http:
        too_long = await ask(http, "bread " * 3000)
        assert too_long.status_code == 400
        assert too_long.json()["error"]["type"] == "invalid_request_error"
        assert (await ask(http, max_tokens=1)).status_code == 200


async def test_api_key_traffic_is_not_rate_limited(gateway: LocalGateway) -> None:
    """The web chat allows 2 requests a minute; 30 API-key requests from the
    same address, half of them while the web chat refuses that address, are
    limited only by capacity."""
    api = {"Authorization": f"Bearer {await gateway.key()}"}

    async def call_api(http: httpx.AsyncClient, n: int) -> list[int]:
        return [(await http.post("/v1/chat/completions", headers=api, json={
            "model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1,
        })).status_code for _ in range(n)]

    async with client(gateway, source="127.0.0.3") as http:
        assert await call_api(http, 15) == [200] * 15
        # The API requests used none of this address's web chat budget ...
        assert (await ask(http, max_tokens=1)).status_code == 200
        assert (await ask(http, max_tokens=1)).status_code == 200
        # ... which is spent now, and refusing the web chat does not limit the API.
        assert (await ask(http, max_tokens=1)).status_code == 429
        assert await call_api(http, 15) == [200] * 15


# ---------------------------------------------------------------------------
# The page in headless Chromium


@dataclass
class BrowserGateway:
    gateway: Gateway
    ollama: FakeOllama


@pytest.fixture(scope="module")
def browser_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserGateway]:
    """A gateway process with two allowlisted models to pick from (and one
    served but hidden) and a limit reached in three messages, in front of a
    fake Ollama whose answers each test scripts (one long enough to stop)."""
    with FakeOllama() as ollama:
        config = {
            "default_model": MODEL,
            "backends": [{"name": "ollama", "kind": "ollama", "url": ollama.url,
                          "models": [MODEL, "smollm2-alt", "smollm2-hidden"]}],
            "web_chat": {"requests_per_minute": 2, "max_tokens": 120, "concurrent_streams": 1,
                         "models": [MODEL, "smollm2-alt"], "trusted_proxies": ["127.0.0.1"]},
        }
        with Gateway(tmp_path_factory.mktemp("webchat-browser"), config) as gw:
            yield BrowserGateway(gw, ollama)


# A story a token every 50 ms: still streaming when the test presses stop.
STORY = [step for i in range(80) for step in (TextDelta(f" dragon{i}"), Sleep(0.05))]
GOODBYE = [TextDelta("Goodbye"), TextDelta(", and"), TextDelta(" happy"), TextDelta(" baking!")]


# Injected before the page's scripts (devtools scripts are exempt from the
# CSP): records CSP violations, and every distinct length the last answer
# had when a DOM mutation batch was delivered, i.e. its visible steps.
WATCH = """
window.__cspViolations = [];
document.addEventListener('securitypolicyviolation', (e) => {
  window.__cspViolations.push(e.violatedDirective + ' ' + e.blockedURI);
});
window.__steps = [];
new MutationObserver(() => {
  const answers = document.querySelectorAll('[data-testid=answer]');
  if (!answers.length) return;
  const length = answers[answers.length - 1].textContent.length;
  const steps = window.__steps;
  if (length > 0 && steps[steps.length - 1] !== length) steps.push(length);
}).observe(document, { childList: true, subtree: true, characterData: true });
"""
# Chromium logs every non-2xx fetch; the 429 is the one this test provokes.
EXPECTED_CONSOLE = re.compile(r"Failed to load resource: the server responded with a status of 429")


@dataclass
class UI:
    page: Any
    console: list[str]
    lang: str
    sent: list[dict[str, Any]]

    def shot(self, step: str) -> Path:
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / f"webchat-gateway-{self.lang}-{step}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def problems(self) -> list[str]:
        return self.console + [f"CSP: {v}" for v in self.page.evaluate("window.__cspViolations")]

    def send(self, text: str) -> None:
        self.page.evaluate("window.__steps = []")
        self.page.fill("[data-testid=prompt]", text)
        self.page.press("[data-testid=prompt]", "Enter")


def open_ui(browser: Any, gateway: Gateway, locale: str, client_ip: str) -> UI:
    # The gateway trusts 127.0.0.1 as its proxy; this header makes the
    # browser a client of its own, as nginx would say.
    context = browser.new_context(locale=locale, viewport={"width": 1000, "height": 800},
                                  extra_http_headers={"X-Forwarded-For": client_ip})
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.add_init_script(WATCH)
    ui = UI(page, [], locale.split("-")[0], [])

    def on_console(message: Any) -> None:
        if EXPECTED_CONSOLE.search(message.text):
            return
        if message.type in ("error", "warning") or "Content Security Policy" in message.text:
            ui.console.append(f"{message.type}: {message.text}")

    def on_request(request: Any) -> None:
        if request.url.endswith("/webchat/api/chat/completions"):
            ui.sent.append(request.post_data_json)

    page.on("console", on_console)
    page.on("pageerror", lambda error: ui.console.append(f"pageerror: {error}"))
    page.on("request", on_request)
    page.goto(f"{gateway.url}/webchat")
    page.wait_for_function("() => document.documentElement.dataset.state === 'idle'")
    return ui


LONG_PROMPT = "Write a very long and detailed story about a dragon who learns to bake bread."
WORDS = {
    "en": {"send": "Send", "stopped": "Stopped.", "limit": "a lot of messages",
           "retry": r"in (\d+) seconds?", "api": "API keys have no such limit."},
    "de": {"send": "Senden", "stopped": "Angehalten.", "limit": "viele Nachrichten",
           "retry": r"in (\d+) Sekunden?", "api": "Mit einem API-Schlüssel gibt es kein solches Limit."},
}


@pytest.mark.slow
@pytest.mark.parametrize(("locale", "client_ip"), [("en-US", "192.0.2.1"), ("de-DE", "192.0.2.2")])
def test_page_streams_stops_and_shows_the_limit(browser: Any, browser_gateway: BrowserGateway,
                                                locale: str, client_ip: str) -> None:
    browser_gateway.ollama.reply(*STORY)
    browser_gateway.ollama.reply(*GOODBYE, usage=(40, 4))
    ui = open_ui(browser, browser_gateway.gateway, locale, client_ip)
    page = ui.page
    words = WORDS[ui.lang]
    assert page.evaluate("document.documentElement.lang") == ui.lang
    assert page.locator("[data-testid=send]").inner_text() == words["send"]
    # The picker offers the allowlist only, not every served model.
    assert page.locator("#model option").all_inner_texts() == [MODEL, "smollm2-alt"]
    page.select_option("[data-testid=model-select]", "smollm2-alt")
    ui.shot("1-loaded")

    # 1. Tokens stream in from the model, then stop mid-stream keeps the partial answer.
    ui.send(LONG_PROMPT)
    page.wait_for_function("() => window.__steps.length >= 4 && window.__steps.at(-1) >= 30")
    page.click("[data-testid=stop]")
    page.wait_for_selector("[data-testid=assistant-message][data-done]")
    reply = page.locator("[data-testid=assistant-message]").last
    assert reply.get_attribute("data-done") == "stopped", "the answer ended before stop was pressed"
    answer = page.locator("[data-testid=answer]").last
    partial = answer.inner_text()
    steps = page.evaluate("window.__steps")
    assert len(steps) >= 3 and steps == sorted(steps), f"streamed in steps: {steps}"
    assert len(partial) >= 30
    time.sleep(0.5)
    assert answer.inner_text() == partial, "nothing more arrives after stop"
    assert words["stopped"] in page.locator("[data-testid=meta]").last.inner_text()
    assert ui.sent[-1] == {"model": "smollm2-alt", "stream": True,
                           "messages": [{"role": "user", "content": LONG_PROMPT}]}
    ui.shot("2-stopped")

    # 2. A second turn carries the partial answer as history and streams to its end.
    ui.send("Thanks. Now say goodbye.")
    page.wait_for_selector("[data-testid=assistant-message][data-done] >> nth=1", timeout=60_000)
    second = page.locator("[data-testid=assistant-message]").last
    assert second.get_attribute("data-done") == "complete"
    assert page.locator("[data-testid=answer]").last.inner_text().strip()
    assert re.search(r"\d+ Tokens?", page.locator("[data-testid=meta]").last.inner_text(), re.I)
    assert ui.sent[-1]["messages"][1] == {"role": "assistant", "content": partial}
    ui.shot("3-answered")

    # 3. The third message in a minute is refused: a friendly, localized notice with the wait.
    ui.send("One more question")
    notice = page.locator("[data-testid=notice]")
    notice.wait_for(state="visible")
    assert notice.get_attribute("data-kind") == "rate-limit"
    text = notice.inner_text()
    wait = re.search(words["retry"], text)
    assert words["limit"] in text and words["api"] in text and wait, text
    assert 1 <= int(wait.group(1)) <= 60
    assert notice.get_attribute("data-retry-after") == wait.group(1)
    # The refused message is given back for later and is not in the conversation.
    assert page.input_value("[data-testid=prompt]") == "One more question"
    assert page.locator("[data-testid=user-message]").count() == 2
    ui.shot("4-rate-limited")

    assert page.evaluate("localStorage.length + sessionStorage.length") == 0
    assert page.evaluate("document.cookie") == ""
    assert ui.problems() == []
    page.context.close()
