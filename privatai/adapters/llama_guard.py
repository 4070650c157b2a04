"""Two guards around llama.cpp for the embedded adapter.

llama-cpp-python installs a llama.cpp log callback that prints the raw text to
stderr, past Python's logging and our filter. When a grammar does not parse,
llama.cpp logs the whole grammar, and the grammar is built from the client's
JSON schema (``response_format``, or the parameters of the tool named in
``tool_choice``): property names and constant values of a request would reach
the journal. :func:`quiet_llama_log` replaces that callback with one that says
only that llama.cpp reported a warning or an error.

A grammar that does not parse also crashes the process: llama-cpp-python adds
the NULL sampler llama.cpp returns to its sampler chain (SIGSEGV in 0.3.x).
:func:`check_grammars` builds each grammar the request will need and asks
llama.cpp to parse it first, so such a request gets a 400 instead. The parser
prints its error and the grammar with ``fprintf(stderr)``, not through the log
callback, so the check runs with file descriptor 2 pointed at /dev/null.
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
from typing import Any, Iterator

from privatai.errors import UpstreamRejected

log = logging.getLogger("privatai.llama")

# ggml_log_level: 2 WARN, 3 ERROR; INFO, DEBUG and continuation lines are
# dropped. Its warnings (a few on every model load) were silent before too.
_LEVELS = {2: (logging.DEBUG, "a warning"), 3: (logging.ERROR, "an error")}
# The ctypes callback must outlive the call that installs it.
_callback: Any = None


def quiet_llama_log() -> None:
    """Route llama.cpp's log through ours, without its text."""
    global _callback
    import llama_cpp

    if _callback is not None:
        return

    @llama_cpp.llama_log_callback
    def callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        known = _LEVELS.get(level)
        if known is not None:
            log.log(known[0], "llama.cpp reported %s (text withheld: it can quote a request)", known[1])

    _callback = callback
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))


def grammar_schemas(kwargs: dict[str, Any]) -> list[Any]:
    """The JSON schemas llama-cpp-python turns into grammars for these arguments."""
    schemas = []
    response_format = kwargs.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") == "json_object" \
            and "schema" in response_format:
        schemas.append(response_format["schema"])
    tool_choice = kwargs.get("tool_choice")
    if isinstance(tool_choice, dict):
        name = (tool_choice.get("function") or {}).get("name")
        for tool in kwargs.get("tools") or ():
            if (tool.get("function") or {}).get("name") == name:
                schemas.append(tool["function"].get("parameters"))
    return schemas


@contextlib.contextmanager
def _stderr_discarded() -> Iterator[None]:
    """fd 2 to /dev/null for a moment, with our log handlers held so that no
    log line of another thread is lost meanwhile."""
    handlers = list(logging.getLogger().handlers)
    for handler in handlers:
        handler.acquire()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
        for handler in reversed(handlers):
            handler.release()


def check_grammars(llm: Any, kwargs: dict[str, Any]) -> None:
    """Raise UpstreamRejected if llama.cpp cannot parse a grammar this request needs."""
    import llama_cpp
    from llama_cpp import llama_grammar

    for schema in grammar_schemas(kwargs):
        try:
            text = llama_grammar.json_schema_to_gbnf(json.dumps(schema))
        except Exception:  # noqa: BLE001 - llama-cpp-python then falls back to plain JSON
            continue
        with _stderr_discarded():
            sampler = llama_cpp.llama_sampler_init_grammar(llm._model.vocab, text.encode("utf-8"), b"root")
        if not sampler:
            raise UpstreamRejected("The embedded model cannot follow this JSON schema "
                                   "(property names and constants must not contain quotes or backslashes).",
                                   param="response_format")
        llama_cpp.llama_sampler_free(sampler)
