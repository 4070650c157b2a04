"""Split ``<think>...</think>`` out of streamed content.

Some models (DeepSeek-R1 distills, QwQ, Qwen3 without a reasoning parser on the
server) write their reasoning into the content, wrapped in tags. For backends
configured with ``think_tags: true`` every content delta passes through a
:class:`ThinkTagSplitter`, which turns tagged text into thinking and the rest
into text. A tag may arrive split over several deltas (``<th`` + ``ink>``), so
a possible tag prefix at the end of a delta is held back until the next one.
"""
from __future__ import annotations

from privatai.core.events import TextDelta, ThinkingDelta

OPEN = "<think>"
CLOSE = "</think>"


def _partial_tag_length(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for length in range(min(len(text), len(tag) - 1), 0, -1):
        if text.endswith(tag[:length]):
            return length
    return 0


class ThinkTagSplitter:
    """Incremental splitter for one response: ``feed`` each content delta,
    ``flush`` at the end of the stream."""

    __slots__ = ("_inside", "_pending", "_strip")

    def __init__(self) -> None:
        self._inside = False
        self._pending = ""
        # Models put a newline after each tag; the client should not see the
        # answer start with blank lines.
        self._strip = False

    def feed(self, text: str) -> list[TextDelta | ThinkingDelta]:
        events: list[TextDelta | ThinkingDelta] = []
        buffer = self._pending + text
        while True:
            tag = CLOSE if self._inside else OPEN
            at = buffer.find(tag)
            if at < 0:
                keep = _partial_tag_length(buffer, tag)
                self._pending = buffer[len(buffer) - keep:] if keep else ""
                self._emit(buffer[:len(buffer) - keep], events)
                return events
            self._emit(buffer[:at], events)
            buffer = buffer[at + len(tag):]
            self._inside = not self._inside
            self._strip = True

    def flush(self) -> list[TextDelta | ThinkingDelta]:
        """Whatever was held back as a possible tag start is plain text after all."""
        events: list[TextDelta | ThinkingDelta] = []
        self._emit(self._pending, events)
        self._pending = ""
        return events

    def _emit(self, text: str, events: list[TextDelta | ThinkingDelta]) -> None:
        if self._strip:
            text = text.lstrip()
            if not text:
                return
            self._strip = False
        if text:
            events.append(ThinkingDelta(text) if self._inside else TextDelta(text))
