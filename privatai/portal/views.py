"""What each page shows: its template context, from the configuration and the request.

The configuration is read per request (``state.config``), so plans, notes and
models follow a reload (SIGHUP) at once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sanic import Request

from privatai.config import Config, default_model
from privatai.config_types import Language
from privatai.portal.settings import ORIGIN
from privatai.errors import InvalidRequest
from privatai.portal.examples import Examples
from privatai.portal.i18n import localize
from privatai.portal.legal import load_legal
from privatai.state import AppState

API_PATH = "/api/v1"
# The quick start on the landing page: the same files as on the docs page.
QUICK_START = ("chat-stream.curl.sh", "chat-stream.openai.py")


@dataclass(frozen=True, slots=True)
class PlanView:
    name: str
    title: str
    price: str
    price_note: str
    description: str
    features: list[str]
    highlight: bool
    contact: bool


def plans(config: Config, lang: Language) -> list[PlanView]:
    return [PlanView(plan.name, localize(plan.title, lang) if plan.title is not None else plan.name,
                     localize(plan.price, lang), localize(plan.price_note, lang),
                     localize(plan.description, lang), [localize(f, lang) for f in plan.features],
                     plan.highlight, plan.contact)
            for plan in config.plans]


def origin(request: Request, config: Config) -> str:
    """The origin the examples use: ``portal.public_url``, else the one the
    visitor's browser used (behind a TLS proxy: ``X-Forwarded-Proto``)."""
    if config.portal.public_url:
        return config.portal.public_url
    forwarded = request.headers.get("x-forwarded-proto", "").strip().lower()
    scheme = forwarded if forwarded in ("http", "https") else request.scheme
    candidate = f"{scheme}://{request.host}"
    # The host lands in shell and code snippets: only a plain host name or address.
    if not ORIGIN.fullmatch(candidate):
        raise InvalidRequest("The Host header is not a valid host name.", param="Host")
    return candidate


def example_model(state: AppState) -> str:
    return default_model(state.config) or next(iter(state.router.models()), "MODEL")


def page_context(name: str, lang: Language, request: Request, state: AppState,
                 examples: Examples) -> dict[str, Any]:
    """The page-specific part of a page's context."""
    config = state.config
    if name in ("home", "docs"):
        site = origin(request, config)
        model = example_model(state)
        base_url = site + API_PATH
        context: dict[str, Any] = {"origin": site, "base_url": base_url, "model": model}
        if name == "home":
            context["quick_start"] = [examples.get(file, base_url, site, model) for file in QUICK_START]
        else:
            # The template places each topic; a test checks that it shows every snippet.
            context["topics"] = {topic: examples.topic(topic, base_url, site, model)
                                 for topic in examples.topics()}
            context["models"] = state.router.models()
            context["thinking_field"] = config.server.thinking_field
        return context
    if name == "pricing":
        return {"plans": plans(config, lang), "vat_note": localize(config.portal.vat_note, lang)}
    if name in ("imprint", "privacy"):
        return {"legal": load_legal(config.portal.legal_dir, name, lang)}
    return {}
