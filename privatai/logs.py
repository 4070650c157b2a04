"""Logging owned by the project: content-free records only.

Nothing with a prompt, completion, tool argument or key may reach a log. Our
own log calls pass only counts, names and classes. Third-party loggers that
print request bodies at DEBUG (httpx, httpcore, openai, ollama, aiohttp) are
pinned to WARNING and pass through :class:`ScrubFilter`, which strips the
message arguments and exception text of any record that is not ours.
"""
from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

# Loggers known to print bodies or headers at DEBUG, or exception text that can
# carry upstream bodies.
NOISY_LOGGERS = ("httpx", "httpcore", "openai", "ollama", "aiohttp", "aiohttp.client",
                 "aiosqlite", "urllib3", "asyncio", "sanic.error", "sanic.server",
                 "sanic.root", "sanic.access", "hpack", "llama_cpp", "uvicorn", "multipart")

_OURS = "privatai"


def describe_error(exc: BaseException) -> str:
    """How an exception may appear in a log: its class and status, never its text."""
    status = getattr(exc, "status", None) or getattr(exc, "status_code", None)
    return f"{type(exc).__name__}" + (f" (status {status})" if status is not None else "")


class ScrubFilter(logging.Filter):
    """Third-party records keep their fixed message only: no args, no traceback text."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == _OURS or record.name.startswith(_OURS + "."):
            return True
        if record.args:
            record.msg = f"{record.msg if isinstance(record.msg, str) else type(record.msg).__name__} [arguments removed]"
            record.args = None
        elif not isinstance(record.msg, str):
            record.msg = type(record.msg).__name__
        if record.exc_info and record.exc_info[1] is not None:
            record.msg = f"{record.msg} [{describe_error(record.exc_info[1])}]"
        record.exc_info = None
        record.exc_text = None
        record.stack_info = None
        return True


class JSONFormatter(logging.Formatter):
    """One JSON object a line, for journald and log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + "Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            data.update(extra)
        return orjson.dumps(data).decode()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            line += " " + " ".join(f"{k}={v}" for k, v in extra.items())
        return line

    def formatException(self, ei: Any) -> str:  # noqa: N802 - logging's name
        # Tracebacks can quote local values; ours are logged by class only.
        return ""


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Install our handler on the root logger, scrubbing every record."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(ScrubFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in NOISY_LOGGERS:
        noisy = logging.getLogger(name)
        noisy.setLevel(max(logging.WARNING, logging.getLevelName(level)))
        # Drop handlers a library may have attached itself, so every record
        # goes through the root handler and its filter.
        for old in list(noisy.handlers):
            noisy.removeHandler(old)
        noisy.propagate = True


access_log = logging.getLogger("privatai.access")
