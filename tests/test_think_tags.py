"""The <think> splitter on its own: tags split anywhere across deltas."""
from __future__ import annotations

import pytest

from privatai.adapters.think_tags import ThinkTagSplitter
from privatai.core.events import TextDelta, ThinkingDelta

TEXT = "<think>\nPlan: add.\n</think>\n\nThe sum is 4 <b>bold</b> < 5."


def run(pieces: list[str]) -> tuple[str, str]:
    splitter = ThinkTagSplitter()
    events = [e for piece in pieces for e in splitter.feed(piece)] + splitter.flush()
    thinking = "".join(e.text for e in events if isinstance(e, ThinkingDelta))
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    return thinking, text


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 100])
def test_any_split_gives_the_same_result(size: int) -> None:
    pieces = [TEXT[i:i + size] for i in range(0, len(TEXT), size)]
    assert run(pieces) == ("Plan: add.\n", "The sum is 4 <b>bold</b> < 5.")


def test_text_without_tags_passes_through_and_partial_tag_at_end_is_flushed() -> None:
    assert run(["Hello ", "<thi"]) == ("", "Hello <thi")


def test_unclosed_think_is_all_thinking() -> None:
    assert run(["<think>still going"]) == ("still going", "")


def test_nothing_is_held_back_without_a_tag_prefix() -> None:
    splitter = ThinkTagSplitter()
    assert splitter.feed("abc") == [TextDelta("abc")]
    assert splitter.feed("x<") == [TextDelta("x")]
    assert splitter.feed("p>") == [TextDelta("<p>")]
