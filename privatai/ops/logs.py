"""Logging owned by the project: content-free records only.

Nothing with a prompt, completion, tool argument or key may reach a log. Our
own log calls pass only counts, names and classes. Every other record (httpx,
httpcore, openai, ollama, aiohttp, sanic, asyncio, aiosqlite, llama.cpp...) is
emitted at ``logging.third_party_level`` and passes through
:class:`ScrubFilter`, which keeps only the static part of its message: the
arguments, the exception text and the stack are dropped, and messages a
library formatted itself (httpcore's ``name key=value``, asyncio's
``exception=ValueError('...')``) are cut before their first detail.

The interpreter's own last-resort printers (``sys.excepthook``,
``threading.excepthook``, ``sys.unraisablehook``, ``warnings.showwarning``)
print exception text, object reprs and source lines straight to stderr; they
are replaced by hooks that log the class only.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import secrets
import sys
import threading
import time
import warnings
from types import TracebackType
from typing import Any, TextIO

import orjson

# Loggers known to print bodies or headers at DEBUG, or exception text that can
# carry upstream bodies. They are pinned to ``third_party_level`` explicitly so
# a library that sets its own level cannot open them up.
NOISY_LOGGERS = ("httpx", "httpcore", "openai", "ollama", "aiohttp", "aiohttp.client",
                 "aiohttp.access", "aiohttp.server", "aiosqlite", "urllib3", "asyncio",
                 "sanic.error", "sanic.server", "sanic.root", "sanic.access", "sanic.websockets",
                 "hpack", "h11", "h2", "llama_cpp", "llama-cpp-python", "uvicorn", "multipart",
                 "py.warnings", "stripe")

_OURS = "privatai"

# Where a message a library formatted itself starts carrying details: a new
# line, ``key=value``, a repr ('...', (...), [...], {...}, <...>), a quote, a
# colon before a value, or the end of a first sentence.
_DETAIL = re.compile(r"""[\r\n=(\[{<'"`]|:\s|:$|\.\s""")
_MAX_STATIC = 120
_MAX_WORDS = 10
_MAX_TOKEN = 40
REMOVED = "[details removed]"


def describe_error(exc: BaseException | None) -> str:
    """How an exception may appear in a log: its class and status, never its text."""
    if exc is None:
        return "no exception"
    status = getattr(exc, "status", None) or getattr(exc, "status_code", None)
    # Only a number: some libraries keep a reason phrase or body in `status`.
    shown = status if isinstance(status, int) and not isinstance(status, bool) else None
    return f"{type(exc).__name__}" + (f" (status {shown})" if shown is not None else "")


# A dotted name such as "http11.send_request_headers.started": digits only at
# the end of a part.
_NAME = re.compile(r"[A-Za-z_]+[0-9]*(?:\.[A-Za-z_]+[0-9]*)*[.,;:!?]?")


def _is_data(word: str) -> bool:
    """A word that is a value rather than prose: a number, an id, an address, a
    blob (anything with a digit that is not a dotted name, or very long)."""
    return len(word) > _MAX_TOKEN or (any(ch.isdigit() for ch in word) and not _NAME.fullmatch(word))


def static_part(text: str) -> str:
    """The fixed start of a message a library formatted itself.

    ``"connect_tcp.started host='10.0.0.5' port=11434"`` becomes
    ``"connect_tcp.started [details removed]"``; ``"Task exception was never
    retrieved\\nfuture: <Task ... exception=ValueError('...')>"`` keeps its first
    line. Long messages are cut too (at 120 characters or ten words), and so
    is a message at its first word that is a value (a number, an id, a blob).
    What survives is the library's fixed wording.
    """
    match = _DETAIL.search(text)
    cut = match.start() if match is not None else len(text)
    if match is not None and text[cut] == "=":
        # Drop the key name as well: "host=" says nothing without its value.
        cut = text.rfind(" ", 0, cut) + 1
    if cut > _MAX_STATIC:
        cut = text.rfind(" ", 0, _MAX_STATIC) + 1 or _MAX_STATIC
    for number, word in enumerate(re.finditer(r"\S+", text[:cut])):
        if number >= _MAX_WORDS or _is_data(word.group()):
            cut = word.start()
            break
    head = text[:cut].rstrip(" .,;:")
    if cut >= len(text):
        return head
    return f"{head} {REMOVED}" if head else REMOVED


def _is_ours(name: str) -> bool:
    return name == _OURS or name.startswith(_OURS + ".")


class ScrubFilter(logging.Filter):
    """Records of other libraries keep their static message only.

    Our own records keep message and arguments (our code passes only counts,
    names and classes); every record loses its traceback and stack, replaced by
    the exception's class.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not _is_ours(record.name):
            msg = record.msg if isinstance(record.msg, str) else type(record.msg).__name__
            if record.args:
                # A template with %-placeholders comes from the library's
                # source: keep its first line, drop what was filled in.
                template = msg.splitlines()[0] if msg else ""
                if len(template) > _MAX_STATIC:
                    template = static_part(template)
                msg = f"{template} [arguments removed]"
            else:
                msg = static_part(msg)
            record.msg = msg
            record.args = None
            # Extra attributes are the library's; only ours are printed.
            record.__dict__.pop("fields", None)
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
        return orjson.dumps(data, default=str).decode()


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

    def formatStack(self, stack_info: str) -> str:  # noqa: N802 - logging's name
        return ""


# -- the interpreter's last-resort printers ---------------------------------

_hooks_log = logging.getLogger("privatai.errors")


def _excepthook(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    _hooks_log.critical("unhandled exception: %s", describe_error(exc))


def _thread_excepthook(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    _hooks_log.error("unhandled exception in a thread: %s", describe_error(args.exc_value))


def _unraisablehook(unraisable: Any) -> None:
    # The default prints repr(object), which can be a coroutine holding a prompt.
    _hooks_log.warning("exception ignored (unraisable): %s", describe_error(unraisable.exc_value))


def _showwarning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: TextIO | None = None, line: str | None = None) -> None:
    # The default prints the warning's text and the source line; the text can
    # quote a value. Category and location are enough to find it.
    logging.getLogger("privatai.warnings").warning("%s at %s:%d", category.__name__, filename, lineno)


def loop_exception_handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """asyncio's exception handler without reprs.

    The default one logs every context value's repr (a Task's repr names its
    exception with its text; ``Exception in callback ...`` prints the callback's
    arguments, which can be a chunk of a completion).
    """
    message = static_part(str(context.get("message") or "event loop error"))
    exc = context.get("exception")
    if isinstance(exc, BaseException):
        logging.getLogger("privatai.loop").error("%s: %s", message, describe_error(exc))
    else:
        logging.getLogger("privatai.loop").error("%s", message)


def setup_logging(level: str = "INFO", fmt: str = "text", third_party_level: str = "WARNING",
                  stream: TextIO | None = None) -> None:
    """Install our scrubbing handler on the root logger and the content-free hooks.

    ``level`` applies to PrivatAI's own loggers, ``third_party_level`` to every
    other library's (DEBUG helps with connection problems; content stays out
    either way).
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(ScrubFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(third_party_level)
    logging.getLogger(_OURS).setLevel(level)
    for name in NOISY_LOGGERS:
        noisy = logging.getLogger(name)
        noisy.setLevel(third_party_level)
        # Drop handlers a library may have attached itself, so every record
        # goes through the root handler and its filter.
        for old in list(noisy.handlers):
            noisy.removeHandler(old)
        noisy.propagate = True
    sys.excepthook = _excepthook
    threading.excepthook = _thread_excepthook
    sys.unraisablehook = _unraisablehook
    warnings.showwarning = _showwarning
    # Python's default, also under -X dev or PYTHONWARNINGS: at interpreter
    # shutdown a ResourceWarning is printed by C code that bypasses the hook
    # above, with the object's repr (a socket's repr holds the client address).
    warnings.simplefilter("ignore", ResourceWarning)


# A key for this process only: a client's hash is stable while the server
# runs (enough to see one address flooding) and cannot be reversed by hashing
# all IPv4 addresses, since the key is never written anywhere.
_CLIENT_KEY = secrets.token_bytes(32)


def hash_client(address: str) -> str:
    """A keyed, truncated hash of a client address for the access line."""
    return hmac.new(_CLIENT_KEY, address.encode("utf-8", "replace"), hashlib.sha256).hexdigest()[:16]


access_log = logging.getLogger("privatai.access")
