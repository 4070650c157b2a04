"""Upstream error bodies -> our error classes, shared by every adapter.

The message may echo the prompt (a context-length error quotes token counts,
a schema error quotes the schema): it goes into the exception, which reaches
the client, and nowhere else.
"""
from __future__ import annotations

import math
import time
from email.utils import parsedate_to_datetime
from typing import Any

import orjson

from privatai.errors import BackendError, BackendRateLimited, BackendUnavailable, PrivatAIError, UpstreamRejected

# Seconds a client is told to wait after an upstream 429 that named no time
# (or an unreadable one), and the most we pass on: a longer wait is no retry.
DEFAULT_RETRY_AFTER = 2
MAX_RETRY_AFTER = 600

_MAX_MESSAGE = 2000

# llama.cpp sends an error ``type`` with an integer ``code``; without a code
# (in-band errors of some versions) the type alone tells the class.
_TYPE_STATUS = {
    "invalid_request_error": 400,
    "exceed_context_size_error": 400,
    "not_supported_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "unavailable_error": 503,
    "server_error": 500,
}


ErrorDetails = tuple[str, str | None, int | str | None]


def error_details(payload: Any) -> ErrorDetails:
    """(message, type, code) from any error shape we know:
    ``{"error": {...}}`` (OpenAI, llama.cpp, vLLM), ``{"error": "..."}``
    (Ollama), flat ``{"object": "error", ...}`` (older vLLM), FastAPI's
    ``{"detail": ...}``, or plain text."""
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict):
            payload = error
        elif isinstance(error, str):
            return _clip(error), None, None
        message = payload.get("message")
        if message is None and "detail" in payload:
            message = _detail_text(payload["detail"])
        kind = payload.get("type")
        code = payload.get("code")
        return (_clip(str(message)) if message else "unknown upstream error",
                kind if isinstance(kind, str) else None,
                code if isinstance(code, (int, str)) and not isinstance(code, bool) else None)
    text = str(payload).strip()
    return (_clip(text) or "unknown upstream error"), None, None


def parse_error_body(body: bytes) -> ErrorDetails:
    try:
        payload: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        payload = body.decode("utf-8", "replace")
    return error_details(payload)


def classify(status: int | None, details: ErrorDetails, *, started: bool,
             retry_after: str | None = None) -> PrivatAIError:
    """The error to raise for an upstream failure.

    ``status`` is the HTTP status, or None for an error that arrived inside a
    200 stream (then the error's own integer code, else its type, decides);
    ``retry_after`` the response's ``Retry-After`` header, for a 429.
    After the first event everything is a :class:`BackendError`, sent to the
    client in-band.
    """
    message, kind, code = details
    if started:
        return BackendError(f"The backend failed mid-response: {message}")
    if status is None:
        status = code if isinstance(code, int) else _TYPE_STATUS.get(kind or "", 500)
    if status in (401, 403):
        # Our credentials for the upstream, not the client's: an operator problem.
        return BackendUnavailable(f"The backend refused our credentials: {message}", status=502)
    if status == 404:
        # The configured upstream model or path does not exist there; another
        # backend may serve the model.
        return BackendUnavailable(f"The backend cannot serve this model: {message}", status=502)
    if status == 429:
        return BackendRateLimited(f"The backend is rate limiting requests: {message}",
                                  retry_after=retry_after_seconds(retry_after))
    if status == 408 or status >= 500:
        return BackendUnavailable(f"The backend is unavailable: {message}")
    if 400 <= status < 500:
        if _is_context_overflow(message, kind, code):
            return UpstreamRejected(f"The backend rejected the request: {message}",
                                    code="context_length_exceeded")
        return UpstreamRejected(f"The backend rejected the request: {message}")
    return BackendUnavailable(f"The backend answered HTTP {status}: {message}")


def retry_after_seconds(value: str | None) -> int:
    """Whole seconds from a ``Retry-After`` header (delta-seconds or an HTTP
    date), rounded up and kept within 1..MAX_RETRY_AFTER; the default when
    there is none or it cannot be read."""
    if not value:
        return DEFAULT_RETRY_AFTER
    try:
        seconds = float(value)
        if not 0 <= seconds < math.inf:  # negative, infinite or NaN
            return DEFAULT_RETRY_AFTER
    except ValueError:
        try:
            # A date in the past means "now": at least a second, below.
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, OverflowError):
            return DEFAULT_RETRY_AFTER
    return min(MAX_RETRY_AFTER, max(1, math.ceil(seconds)))


def _is_context_overflow(message: str, kind: str | None, code: int | str | None) -> bool:
    if kind == "exceed_context_size_error" or code == "context_length_exceeded":
        return True
    lowered = message.lower()
    return "maximum context length" in lowered or "exceeds the available context size" in lowered


def _detail_text(detail: Any) -> str:
    if isinstance(detail, list):
        return "; ".join(str(item.get("msg", item)) if isinstance(item, dict) else str(item)
                         for item in detail)
    return str(detail)


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_MESSAGE else text[:_MAX_MESSAGE] + "..."
