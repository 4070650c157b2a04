"""Impressum and Datenschutzerklärung: the operator's texts, rendered safely.

The operator puts ``impressum.de.md`` and ``datenschutz.de.md`` (and ``.en``;
``.html`` instead of ``.md`` also works) into ``portal.legal_dir``. The file
names are fixed, so nothing from a request reaches the file system. Files are
read on every request, so an edited text shows without a restart.

Markdown is rendered with raw HTML switched off, and every result, Markdown
or HTML, passes an allowlist sanitizer: no scripts, styles, frames, forms,
images or event handlers, links only to http(s), mailto and tel. Nothing in
an operator's text can run or load anything in a visitor's browser.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import nh3
from markdown_it import MarkdownIt
from markupsafe import Markup

from privatai.config_types import Language
from privatai.ops.logs import describe_error
from privatai.portal.i18n import LANGUAGES

log = logging.getLogger("privatai.portal")

# Page name -> the file stem in legal_dir.
STEMS = {"imprint": "impressum", "privacy": "datenschutz"}
TAGS = {"a", "abbr", "address", "b", "blockquote", "br", "code", "dd", "del", "dl", "dt", "em",
        "h2", "h3", "h4", "h5", "h6", "hr", "i", "ins", "li", "ol", "p", "pre", "small", "strong",
        "sub", "sup", "table", "tbody", "td", "tfoot", "th", "thead", "tr", "ul"}
ATTRIBUTES = {"a": {"href", "title"}, "abbr": {"title"}, "td": {"colspan", "rowspan"},
              "th": {"colspan", "rowspan", "scope"}, "ol": {"start"}}
URL_SCHEMES = {"http", "https", "mailto", "tel"}

_markdown = MarkdownIt("commonmark", {"html": False}).enable("table")


@dataclass(frozen=True, slots=True)
class LegalText:
    html: Markup
    language: Language  # may differ from the page's when only the other one exists
    source: str         # the file name, for the operator


def sanitize(html: str) -> Markup:
    # <h1> is the page's own heading; a text's h1 keeps only its content.
    return Markup(nh3.clean(html, tags=TAGS, attributes=ATTRIBUTES, url_schemes=URL_SCHEMES,
                            link_rel="noopener noreferrer nofollow"))


def render(text: str, markdown: bool) -> Markup:
    return sanitize(_markdown.render(text) if markdown else text)


def load_legal(directory: str, page: str, lang: Language) -> LegalText | None:
    """The page's text in ``lang``, else in the other language; None when the
    operator has supplied neither (the page then says so)."""
    stem = STEMS[page]
    for language in (lang, *(other for other in LANGUAGES if other != lang)):
        for suffix in (".md", ".html"):
            path = Path(directory) / f"{stem}.{language}{suffix}"
            try:
                text = path.read_text(encoding="utf-8", errors="replace")
            except FileNotFoundError:
                continue
            except OSError as exc:
                # Unreadable (permissions): the page shows the "not supplied" notice.
                log.warning("legal text %s cannot be read: %s", path.name, describe_error(exc))
                continue
            return LegalText(render(text, suffix == ".md"), language, path.name)
    return None
