"""The API examples the website shows, from one source: the files in ``examples/``.

Each file is one snippet, named ``<topic>.<tool>.<ext>`` (``chat-stream.openai.py``).
The pages fill in this gateway's base URL and model, and the tests run the
snippets as the documentation page shows them, so what a visitor pastes is
what was tested.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

EXAMPLE_DIR = Path(__file__).resolve().parent / "examples"
# The order a topic's snippets appear in: the shell first, then by language.
LANGUAGES = {".sh": "curl", ".py": "Python", ".mjs": "JavaScript"}
ORDER = ("curl", "openai.py", "httpx.py", "openai.mjs", "fetch.mjs")


@dataclass(frozen=True, slots=True)
class Example:
    name: str      # the file name; the page marks each snippet with it (data-example)
    label: str     # the heading above it: "Python (openai)"
    code: str


@dataclass(frozen=True, slots=True)
class Examples:
    templates: dict[str, str]  # file name -> text with placeholders

    def topics(self) -> list[str]:
        """What the snippets show: chat, chat-stream, models, ..."""
        return sorted({name.split(".", 1)[0] for name in self.templates})

    def topic(self, topic: str, base_url: str, origin: str, model: str) -> list[Example]:
        """One topic's snippets, filled in for this gateway."""
        names = [name for name in self.templates if name.split(".", 1)[0] == topic]
        names.sort(key=lambda name: ORDER.index(_kind(name)))
        return [self.get(name, base_url, origin, model) for name in names]

    def get(self, name: str, base_url: str, origin: str, model: str) -> Example:
        """One snippet, filled in for this gateway."""
        # Plain replacement: the snippets are full of braces ({...} in JSON,
        # ${...} in JavaScript, $VAR in shell) that a template language would eat.
        code = (self.templates[name].replace("__BASE_URL__", base_url)
                .replace("__ORIGIN__", origin).replace("__MODEL__", model))
        return Example(name, _label(name), code)


def _kind(name: str) -> str:
    _, tool, ext = name.split(".")
    return "curl" if tool == "curl" else f"{tool}.{ext}"


def _label(name: str) -> str:
    _, tool, ext = name.split(".")
    language = LANGUAGES[f".{ext}"]
    return language if tool == language else f"{language} ({tool})"


def load_examples(directory: Path = EXAMPLE_DIR) -> Examples:
    """Every snippet, read once when the app is built."""
    templates: dict[str, str] = {}
    for path in sorted(directory.iterdir()):
        if not path.is_file():
            # __pycache__: pip byte-compiles the .py snippets when it installs the package.
            continue
        parts = path.name.split(".")
        if len(parts) != 3 or f".{parts[2]}" not in LANGUAGES or _kind(path.name) not in ORDER:
            raise RuntimeError(f"example file not named <topic>.<tool>.<sh|py|mjs>: {path}")
        templates[path.name] = path.read_text(encoding="utf-8")
    return Examples(templates)
