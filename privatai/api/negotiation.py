"""Whether a chat request without a ``stream`` field is answered as SSE.

OpenAI's default is a JSON answer, and the OpenAI SDKs say so with ``Accept:
application/json``. A client that names ``text/event-stream`` in ``Accept``
wants the stream; one that accepts anything (``*/*`` or no ``Accept``, as
curl, Python requests and fetch send) gets the stream only when the operator
chose ``server.stream_by_default``, for clients written against streaming
examples that never say ``"stream": true``.
"""
from __future__ import annotations

import functools

EVENT_STREAM = "text/event-stream"


def _media_ranges(accept: str) -> dict[str, float]:
    """Each media range of an ``Accept`` header with its quality (RFC 9110)."""
    ranges: dict[str, float] = {}
    for item in accept.split(","):
        media, *params = (part.strip() for part in item.split(";"))
        if not media:
            continue
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        ranges[media.lower()] = max(quality, ranges.get(media.lower(), 0.0))
    return ranges


@functools.lru_cache(maxsize=128)
def stream_default(accept: str | None, stream_by_default: bool) -> bool:
    """The answer format for a chat request that sent no ``stream`` field.

    Cached: a client sends the same ``Accept`` on every request (the SDKs'
    is constant), and parsing it was about 1 % of a request's CPU."""
    ranges = _media_ranges(accept or "*/*")
    if ranges.get(EVENT_STREAM, 0.0) > 0:
        return True
    accepts_anything = set(ranges) == {"*/*"} and ranges["*/*"] > 0
    return stream_by_default and accepts_anything
