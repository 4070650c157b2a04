"""The website's languages: German first, English as the switch.

Our own texts live in ``i18n/<language>.yaml`` (one catalog per language,
the same keys in each); the operator's texts (plans, notes) are
:data:`privatai.config.Text`, a string or a mapping by language.
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, get_args

import yaml

from privatai.config_types import Language, Text

LANGUAGES: tuple[Language, ...] = get_args(Language)
DEFAULT: Language = "de"
CATALOG_DIR = Path(__file__).resolve().parent / "i18n"


def _keys(node: Any, prefix: str = "") -> set[str]:
    if isinstance(node, dict):
        return {key for name, child in node.items() for key in _keys(child, f"{prefix}.{name}")}
    if isinstance(node, list):
        return {key for i, child in enumerate(node) for key in _keys(child, f"{prefix}[{i}]")}
    return {prefix}


def _namespace(node: Any) -> Any:
    # Attribute access in templates (t.nav.pricing) must reach our keys, never
    # a dict method: a key named "items" would otherwise be dict.items.
    if isinstance(node, dict):
        return SimpleNamespace(**{name: _namespace(child) for name, child in node.items()})
    if isinstance(node, list):
        return [_namespace(child) for child in node]
    return node


def load_catalogs(directory: Path = CATALOG_DIR) -> dict[Language, Any]:
    """Every language's messages. The catalogs must have the same keys (and
    lists the same lengths), or one language's page would lack a text: a
    mistake of ours, so the app refuses to start."""
    trees = {lang: yaml.safe_load((directory / f"{lang}.yaml").read_text(encoding="utf-8"))
             for lang in LANGUAGES}
    reference = _keys(trees[DEFAULT])
    for lang, tree in trees.items():
        differ = reference ^ _keys(tree)
        if differ:
            raise RuntimeError(f"{directory / lang}.yaml and {DEFAULT}.yaml differ in: "
                               + ", ".join(sorted(differ)))
    return {lang: _namespace(tree) for lang, tree in trees.items()}


def negotiate(accept_language: str | None) -> Language:
    """The visitor's preferred language of ours by ``Accept-Language``
    (highest q, the first listed on a tie); German when none of ours is named."""
    best: Language = DEFAULT
    best_q = 0.0
    for item in (accept_language or "").split(","):
        tag, _, params = item.partition(";")
        primary = tag.strip().split("-")[0].lower()
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.partition("=")
            if name.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        for lang in LANGUAGES:
            if primary == lang and q > best_q:
                best, best_q = lang, q
    return best


def localize(text: Text, lang: Language) -> str:
    """An operator's text in ``lang``, else German, else whatever it has."""
    if isinstance(text, str):
        return text
    return text.get(lang) or text.get(DEFAULT) or next(iter(text.values()))
