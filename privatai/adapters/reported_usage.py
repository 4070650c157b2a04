"""Token counts a backend reports, checked before anyone believes them.

Every adapter builds its :class:`~privatai.core.events.Usage` here and nowhere
else. A misbehaving upstream once reported more than 2^63 tokens, which no
SQLite integer holds (every later usage flush failed), and negative counts,
which lowered a key's totals. So a count that is not a plain non-negative
integer (a float, a string, a bool, a negative number) makes the whole report
"not reported", and the meter counts the request with tiktoken instead; a
count above :data:`MAX_REPORTED_TOKENS` is clamped to it.
"""
from __future__ import annotations

from typing import Any

from privatai.core.events import Usage

# No model reads or writes 2^31 tokens in one request; a larger count is a
# broken upstream, and this keeps a day's sum per key far from SQLite's 2^63.
MAX_REPORTED_TOKENS = 2**31 - 1


def reported_usage(prompt: Any, completion: Any, *, cached: Any = None, reasoning: Any = None) -> Usage | None:
    """The usage an upstream reported, or None when it reported none we can use.

    A count that is absent (None) while the other is present is 0, as
    upstreams leave out a count they did not spend (Ollama omits
    ``prompt_eval_count`` for a prompt it had cached). A detail (``cached``
    prompt tokens, ``reasoning`` completion tokens) is kept only when it is a
    count within its total; otherwise it is left out, the totals stay.
    """
    if prompt is None and completion is None:
        return None
    counts = []
    for value in (prompt, completion):
        if value is None:
            value = 0
        # bool is an int subclass; True is not a token count.
        if type(value) is not int or value < 0:
            return None
        counts.append(min(value, MAX_REPORTED_TOKENS))
    return Usage(counts[0], counts[1], _detail(cached, counts[0]), _detail(reasoning, counts[1]))


def _detail(value: Any, total: int) -> int | None:
    return value if type(value) is int and 0 <= value <= total else None
