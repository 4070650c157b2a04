"""Shared by the portal tests: the site's pages, a gateway serving them, HTML parsing."""
from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from tests.fakes import FakeBackend
from tests.gateway import Gateway

# The web chat's policy, which the portal's pages carry with one change: their
# forms (login, sign-up, dashboard) post to the portal's own origin.
CSP = ("default-src 'self'; connect-src 'self'; img-src 'self' data:; style-src 'self'; "
       "script-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
MODEL = "chat-model"
# Every page in both languages: (name, German path, English path).
PAGES = [
    ("home", "/", "/en/"),
    ("pricing", "/preise", "/en/pricing"),
    ("docs", "/dokumentation", "/en/docs"),
    ("imprint", "/impressum", "/en/imprint"),
    ("privacy", "/datenschutz", "/en/privacy"),
    ("login", "/anmelden", "/en/login"),
    ("signup", "/registrieren", "/en/signup"),
]
PATHS = [path for _, de, en in PAGES for path in (de, en)]
EXAMPLE_DIR = Path(__file__).resolve().parent.parent / "privatai" / "portal" / "examples"


def site_config(fake: FakeBackend, **config: Any) -> dict[str, Any]:
    """A gateway's configuration in front of a fake backend (no model to
    load): the website needs only a running server."""
    return {"backends": [{"name": "fake", "kind": "llamacpp", "url": fake.url, "models": [MODEL]}], **config}


def site_gateway(workdir: Path, fake: FakeBackend, **config: Any) -> Gateway:
    """:func:`site_config` as a gateway process."""
    return Gateway(workdir, site_config(fake, **config))


class Elements(HTMLParser):
    """Every start tag with its attributes, and the text of <code data-example> blocks."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.examples: dict[str, str] = {}
        self._example: str | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self.tags.append((tag, attributes))
        if tag == "code" and attributes.get("data-example"):
            self._example, self._text = attributes["data-example"], []

    def handle_data(self, data: str) -> None:
        if self._example is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "code" and self._example is not None:
            self.examples[self._example] = "".join(self._text)
            self._example = None


def parse(html: str) -> Elements:
    parser = Elements()
    parser.feed(html)
    parser.close()
    return parser


URL_ATTRIBUTES = ("href", "src", "srcset", "action", "formaction", "poster", "data", "cite",
                  "background", "xlink:href")


def urls(html: str) -> list[tuple[str, str, str]]:
    """(tag, attribute, value) of every URL-valued attribute in a page."""
    return [(tag, name, value) for tag, attributes in parse(html).tags
            for name, value in attributes.items() if name in URL_ATTRIBUTES and value is not None]


def example_files() -> set[str]:
    # Files only: a byte-compiled checkout or install has __pycache__ there too.
    return {path.name for path in EXAMPLE_DIR.iterdir() if path.is_file()}
