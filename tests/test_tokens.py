"""Offline cl100k_base token counts."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from privatai.core.protocol import parse_chat_request
from privatai.core.tokens import (
    CL100K_SHA256,
    bpe_file,
    count_completion,
    count_prompt,
    count_text,
)

ROOT = Path(__file__).resolve().parents[1]


def _request(body: dict) -> object:
    return parse_chat_request(json.dumps(body).encode())


def test_shipped_file_is_the_official_cl100k_base() -> None:
    digest = hashlib.sha256(bpe_file().read_bytes()).hexdigest()
    assert digest == CL100K_SHA256
    assert digest.startswith("223921b7") and digest.endswith("b2a7")


def test_known_counts() -> None:
    assert count_text("") == 0
    assert count_text("hello world") == 2
    assert count_text("tiktoken is great!") == 6  # OpenAI cookbook's example
    # Special-token text from a user is plain text, not a control token.
    assert count_text("<|endoftext|>") > 1


def test_prompt_count_matches_openai_cookbook() -> None:
    # The cookbook's example conversation: 129 prompt tokens on cl100k chat models.
    messages = [
        {"role": "system", "content": "You are a helpful, pattern-following assistant that translates "
                                      "corporate jargon into plain English."},
        {"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."},
        {"role": "system", "name": "example_assistant",
         "content": "Things working well together will increase revenue."},
        {"role": "system", "name": "example_user", "content": "Let's circle back when we have more bandwidth "
                                                              "to touch base on opportunities for increased leverage."},
        {"role": "system", "name": "example_assistant",
         "content": "Let's talk later when we're less busy about how to do better."},
        {"role": "user", "content": "This late pivot means we don't have time to boil the ocean for the "
                                    "client deliverable."},
    ]
    assert count_prompt(_request({"messages": messages})) == 129


def test_prompt_counts_tools_and_tool_traffic() -> None:
    base = {"messages": [{"role": "user", "content": "What is the weather in Berlin?"}]}
    plain = count_prompt(_request(base))
    assert plain == 3 + count_text("user") + count_text("What is the weather in Berlin?") + 3

    tools = [{"type": "function", "function": {
        "name": "get_weather", "description": "Get the current weather for a city",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}}}]
    with_tools = count_prompt(_request({**base, "tools": tools}))
    # Counted as their JSON (OpenAI's own tool formatting is unpublished).
    as_sent = count_text(json.dumps(tools, separators=(",", ":")))
    assert as_sent - 5 <= with_tools - plain <= as_sent + 10

    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"location": "Berlin"}'}}
    replay = count_prompt(_request({"messages": base["messages"] + [
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "12 degrees"},
    ]}))
    assert replay - plain == (3 + count_text("assistant") + count_text("get_weather")
                              + count_text('{"location": "Berlin"}')
                              + 3 + count_text("tool") + count_text("call_1") + count_text("12 degrees"))


def test_completion_counts_text_thinking_and_arguments() -> None:
    assert count_completion("hello world") == 2
    assert count_completion("hello world", "hello world", '{"a": 1}') == 4 + count_text('{"a": 1}')


def test_loading_never_touches_the_network(tmp_path: Path) -> None:
    # A fresh process where any socket connection fails and tiktoken's cache is empty.
    code = (
        "import socket\n"
        "def refuse(*a, **k): raise RuntimeError('network used')\n"
        "socket.socket.connect = refuse\n"
        "socket.create_connection = refuse\n"
        "from privatai.core.tokens import count_text\n"
        "print(count_text('hello world'))\n"
    )
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(tmp_path / "empty-cache")}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "2"
