"""The public web chat: its page, its static files and its fair-use-limited API.

Routes (the serving contract is ``privatai/web/README.md``)::

    GET  /                              -> 302 /webchat (unless the portal has its landing page there)
    GET  /webchat, /webchat/            the page, with a strict CSP
    GET  /webchat/static/<name>         chat.js, sse.js, chat.css (nothing else)
    GET  /webchat/api/models            the web chat's model allowlist
    POST /webchat/api/chat/completions  OpenAI chat, streamed only, no API key, rate-limited,
                                        JSON from the page's own origin only

The page's files are read into memory once, when the app is built: a request
can only ever get one of those few byte strings, so no path from the URL
reaches the file system and directory traversal is impossible by
construction.

The chat API spends a visitor's budget (their address is their identity), so
another site must not be able to make the visitor's browser call it: it takes
only ``Content-Type: application/json`` (which a cross-site form cannot send
and a cross-site ``fetch`` cannot send without a CORS preflight that is never
granted), and refuses a browser request whose ``Sec-Fetch-Site`` or ``Origin``
says it comes from another site. Clients that are not browsers send neither
header and spend only their own budget.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import msgspec
from sanic import Request, Sanic
from sanic.response import HTTPResponse, empty, json, raw, redirect

from privatai.api.chat import run_chat
from privatai.api.context import GatewayRequest
from privatai.api.models import model_object
from privatai.config import Config, WebChatConfig, default_model
from privatai.core.protocol import parse_chat_request
from privatai.errors import InvalidRequest, NotFound, PermissionDenied
from privatai.limits.instances import web_chat_state
from privatai.limits.sqlite_state import SqliteLimitState
from privatai.limits.webchat import WebChatLimiter
from privatai.state import AppState

STATIC_DIR = Path(__file__).resolve().parent.parent / "web" / "static"
PAGE_NAME = "index.html"
CONTENT_TYPES = {
    ".js": "text/javascript; charset=utf-8",  # ES modules: browsers refuse a wrong type
    ".css": "text/css; charset=utf-8",
    ".html": "text/html; charset=utf-8",
}
CSP = ("default-src 'self'; connect-src 'self'; img-src 'self' data:; style-src 'self'; "
       "script-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
PAGE_HEADERS = {"Content-Security-Policy": CSP, **SECURITY_HEADERS}
# The file names carry no content hash, so a browser must revalidate every
# time (a cheap 304 thanks to the ETag) or it would run stale JS after an upgrade.
CACHE_CONTROL = "no-cache"


@dataclass(frozen=True, slots=True)
class StaticFile:
    body: bytes
    content_type: str
    etag: str
    headers: dict[str, str]


def load_static(directory: Path = STATIC_DIR, page: str | None = PAGE_NAME) -> dict[str, StaticFile]:
    """Every servable file of a directory by name, read once; ``page`` gets the CSP."""
    files: dict[str, StaticFile] = {}
    for path in sorted(directory.iterdir()):
        content_type = CONTENT_TYPES.get(path.suffix)
        if content_type is None or not path.is_file():
            continue
        body = path.read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        headers = PAGE_HEADERS if path.name == page else SECURITY_HEADERS
        files[path.name] = StaticFile(body, content_type, etag, headers)
    if page is not None and page not in files:
        raise RuntimeError(f"the page is missing: {directory / page}")
    return files


def effective_config(config: Config) -> WebChatConfig:
    """The web chat settings with the allowlist filled in: an empty ``models``
    means the default model only (as backends.yaml documents), so a public,
    keyless page never offers every model an operator serves by accident."""
    web = config.web_chat
    if web.models:
        return web
    fallback = default_model(config)
    # Only backends that discover their models and no default_model leave
    # nothing to fall back on; then the limiter allows what is served.
    return msgspec.structs.replace(web, models=[fallback]) if fallback else web


def check_same_origin_json(request: Request) -> None:
    """415 unless the body is declared JSON; 403 for a browser request from
    another site (see the module docstring)."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        raise InvalidRequest("The web chat accepts only 'Content-Type: application/json'.",
                             status=415, code="unsupported_media_type")
    fetch_site = request.headers.get("sec-fetch-site")
    origin = request.headers.get("origin")
    if (fetch_site is not None and fetch_site.lower() != "same-origin") or (
            origin is not None and not _same_host(origin, request.headers.get("host", ""))):
        raise PermissionDenied("The web chat answers only its own page.", code="cross_origin_request")


def _same_host(origin: str, host: str) -> bool:
    """Whether an ``Origin`` names this server's host. Ports are not compared:
    a reverse proxy may pass the Host without the port the browser used
    (nginx's ``$host``), and the scheme changes at a TLS proxy anyway."""
    try:
        origin_host = urlsplit(origin).hostname  # None for "null" (a sandboxed or file: page)
        return origin_host is not None and origin_host == urlsplit("//" + host).hostname
    except ValueError:  # "http://[not-an-address": not ours
        return False


def serve_static(request: Request, file: StaticFile) -> HTTPResponse:
    headers = {**file.headers, "ETag": file.etag, "Cache-Control": CACHE_CONTROL}
    if file.etag in request.headers.get("if-none-match", ""):
        return empty(status=304, headers=headers)
    return raw(file.body, content_type=file.content_type, headers=headers)


def register(app: Sanic) -> None:
    """Add the web chat's routes and its limiter (``app.ctx.webchat_limiter``)."""
    state: AppState = app.ctx.state
    # Made here, in the main process, so every forked worker has the same
    # identity key. The counters: Redis when instances share it (with the
    # identity key they share), else the workers' runtime directory, else memory.
    shared = web_chat_state(state.redis)
    if shared is None and state.runtime is not None:
        shared = SqliteLimitState(state.runtime.limits_file)
    limiter = WebChatLimiter(effective_config(state.config), state=shared,
                             identity_key=state.config.state.identity_key() if state.redis else None)
    app.ctx.webchat_limiter = limiter
    state.on_reload = lambda config: limiter.reconfigure(effective_config(config))
    files = load_static()
    page = files[PAGE_NAME]
    # The page is served at /webchat only, with its CSP; /static/ has the assets.
    assets = {name: file for name, file in files.items() if name != PAGE_NAME}

    async def root(request: Request) -> HTTPResponse:
        # 302, not 301: browsers cache a 301 forever, and an operator may
        # later put something else at /.
        return redirect("/webchat")

    async def webchat_page(request: Request) -> HTTPResponse:
        return serve_static(request, page)

    async def webchat_static(request: Request, name: str) -> HTTPResponse:
        file = assets.get(name)
        if file is None:
            raise NotFound("Unknown file.")
        return serve_static(request, file)

    async def webchat_models(request: Request) -> HTTPResponse:
        created = int(state.started_wall)
        models = limiter.allowed_models(state.router.models())
        return json({"object": "list", "data": [model_object(m, created) for m in models]},
                    headers={"Cache-Control": "no-store"})

    async def webchat_chat(request: GatewayRequest) -> HTTPResponse | None:
        check_same_origin_json(request)
        chat = parse_chat_request(request.body)
        if not chat.stream:
            # A streamed answer is charged for what was delivered even when
            # the client leaves early; a non-streamed one that the client
            # abandons is charged nothing, which would let anyone spend the
            # GPU past tokens_per_day. The page always streams.
            raise InvalidRequest("The web chat answers only as a stream (\"stream\": true); "
                                 "use an API key for non-streamed answers.", param="stream")
        # request.ip is the socket peer; the limiter believes X-Forwarded-For
        # only when that peer is a configured trusted proxy.
        forwarded = ",".join(request.headers.getall("x-forwarded-for", []))
        identity = limiter.identity(request.ip, forwarded or None)
        # Before any backend work: a refused request costs nothing upstream.
        admission = await limiter.admit(identity, chat.model, chat.max_output_tokens)
        try:
            # max_completion_tokens wins over max_tokens downstream, so it is
            # cleared, or it would slip past the cap.
            chat = msgspec.structs.replace(chat, model=admission.model, max_tokens=admission.max_tokens,
                                           max_completion_tokens=None)
            return await run_chat(request, chat)
        finally:
            # However the answer ended (also when the visitor left), its
            # usage is settled by now; None when nothing is billed.
            usage = request.ctx.usage
            await admission.release(usage.total_tokens if usage is not None else 0)

    if not state.config.portal.enabled:
        # Otherwise the portal's landing page is at / (privatai/portal).
        app.add_route(root, "/", methods=["GET"], name="root")
    # Sanic's routes are not strict about a trailing slash: this is /webchat/ too.
    app.add_route(webchat_page, "/webchat", methods=["GET"], name="webchat_page")
    app.add_route(webchat_static, "/webchat/static/<name>", methods=["GET"], name="webchat_static")
    app.add_route(webchat_models, "/webchat/api/models", methods=["GET"], name="webchat_models")
    app.add_route(webchat_chat, "/webchat/api/chat/completions", methods=["POST"], name="webchat_chat")
