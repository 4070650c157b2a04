"""Legacy text completions (``POST /completions``): validation and encoders.

A completion continues raw text: backends are asked through their own
prompt-based endpoint (``/v1/completions``, Ollama's ``/api/generate`` with
``raw``, llama.cpp's ``create_completion``), never through chat with the prompt
as a user message, whose chat template would change what the model sees.

One prompt per request (a string, a list of one, or one token array): OpenAI
answers a list of prompts with one choice each, which would hold a backend
for several generations in one request; such a batch is refused by name, as
is every option that no backend here can honour.
"""
from __future__ import annotations

import secrets
from typing import Annotated, Any, Literal

import msgspec

from privatai.core.events import Event, TextDelta, Usage
from privatai.core.json_bounds import INT64_MAX, Int64
from privatai.core.encoders import DONE
from privatai.core.protocol import StreamOptions
from privatai.core.text_input import text_inputs, texts_of
from privatai.core.validation import decode, refuse
from privatai.errors import InvalidRequest

Penalty = Annotated[float, msgspec.Meta(ge=-2, le=2)]
# A list holds strings, or as one token array up to a long context's tokens.
Prompt = text_inputs(1 << 17)


class CompletionRequest(msgspec.Struct, kw_only=True):
    """A validated ``POST /completions`` body."""

    prompt: Prompt
    model: str | None = None
    # OpenAI's default for this endpoint; vLLM's too.
    max_tokens: Annotated[int, msgspec.Meta(ge=1, le=INT64_MAX)] | None = 16
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    stop: str | Annotated[list[str], msgspec.Meta(max_length=4)] | None = None
    seed: Int64 | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Annotated[int, msgspec.Meta(ge=1, le=128)] | None = None
    best_of: Annotated[int, msgspec.Meta(ge=1, le=20)] | None = None
    echo: bool | None = None
    suffix: str | None = None
    logprobs: Annotated[int, msgspec.Meta(ge=0, le=5)] | None = None
    logit_bias: dict[str, int] | None = None
    # An end-user id for abuse monitoring at OpenAI; nothing here keeps it.
    user: str | None = None

    def text(self) -> str:
        """The one prompt, as text (a token array decoded)."""
        prompts = texts_of(self.prompt, "prompt")
        if len(prompts) != 1:
            raise refuse("prompt", "one prompt per request; send one request for each prompt.")
        return prompts[0]

    @property
    def stop_list(self) -> list[str] | None:
        if self.stop is None:
            return None
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def sampling_options(self, max_tokens_key: str = "max_tokens") -> dict[str, Any]:
        """The options the client set, under OpenAI's names (the output limit
        under ``max_tokens_key``); unset ones are left out so the model's own
        defaults apply."""
        options: dict[str, Any] = {}
        if self.max_tokens is not None:
            options[max_tokens_key] = self.max_tokens
        for name in ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if value is not None:
                options[name] = value
        if self.stop is not None:
            options["stop"] = self.stop_list
        return options


def parse_completion_request(body: bytes) -> CompletionRequest:
    request = decode(body, CompletionRequest, "'prompt'")
    if request.n not in (None, 1):
        raise refuse("n", "one completion per prompt; send the request again for another.")
    if request.best_of not in (None, 1):
        raise refuse("best_of", "the backends return one completion per prompt.")
    if request.echo:
        raise refuse("echo", "the prompt is not sent back.")
    if request.suffix is not None:
        raise refuse("suffix", "fill-in-the-middle is not offered.")
    if request.logprobs is not None:
        raise refuse("logprobs", "token log probabilities are not returned by this endpoint.")
    if request.logit_bias is not None:
        raise refuse("logit_bias", "token ids differ between the backends' models.")
    if request.stream_options is not None and not request.stream:
        raise InvalidRequest("'stream_options' is only allowed when 'stream' is true.", param="stream_options")
    request.text()  # a batch, or token arrays that do not decode, are a 400 before any routing
    return request


def new_completion_id() -> str:
    return "cmpl-" + secrets.token_hex(12)


class CompletionUsage(msgspec.Struct):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionChoice(msgspec.Struct):
    index: int
    text: str
    # Null until a choice's last chunk when streamed.
    finish_reason: Literal["stop", "length", "content_filter"] | None
    logprobs: None = None


class TextCompletion(msgspec.Struct):
    """A whole completion, and (the same shape, as at OpenAI) each streamed chunk."""

    id: str
    created: int
    model: str
    choices: list[CompletionChoice]
    object: Literal["text_completion"] = "text_completion"
    usage: CompletionUsage | None = None


def usage_of(usage: Usage) -> CompletionUsage:
    return CompletionUsage(usage.prompt_tokens, usage.completion_tokens, usage.total_tokens)


def finish_reason(reason: str | None) -> Literal["stop", "length", "content_filter"]:
    """The backend's reason as one this endpoint knows ("tool_calls" cannot
    happen without tools; anything unknown is a stop)."""
    return reason if reason in ("length", "content_filter") else "stop"  # type: ignore[return-value]


def completion_body(completion_id: str, created: int, model: str, text: str, reason: str | None,
                    usage: Usage) -> bytes:
    """The non-streamed ``text_completion``."""
    return msgspec.json.encode(TextCompletion(
        id=completion_id, created=created, model=model, usage=usage_of(usage),
        choices=[CompletionChoice(index=0, text=text, finish_reason=finish_reason(reason))]))


class CompletionChunkEncoder:
    """``text_completion`` chunks as SSE frames for one response.

    Usage follows the chat endpoint's rule: on the finish chunk, or with
    ``stream_options.include_usage`` in one ``choices: []`` chunk before
    ``[DONE]``, never both.
    """

    def __init__(self, completion_id: str, created: int, model: str, *, include_usage: bool = False) -> None:
        self._id = completion_id
        self._created = created
        self._model = model
        self._include_usage = include_usage

    def _frame(self, choices: list[CompletionChoice], usage: Usage | None = None) -> bytes:
        chunk = TextCompletion(id=self._id, created=self._created, model=self._model, choices=choices,
                               usage=usage_of(usage) if usage is not None else None)
        return b"data: " + msgspec.json.encode(chunk) + b"\n\n"

    def encode(self, event: Event) -> bytes:
        """A text delta as a chunk (a raw continuation has no other content)."""
        if type(event) is not TextDelta:
            raise TypeError(f"not text: {type(event).__name__}")
        return self._frame([CompletionChoice(index=0, text=event.text, finish_reason=None)])  # type: ignore[union-attr]

    def finish(self, reason: str | None, usage: Usage) -> bytes:
        """The finish chunk, the usage (placed per the rule above), then ``[DONE]``."""
        last = self._frame([CompletionChoice(index=0, text="", finish_reason=finish_reason(reason))],
                           None if self._include_usage else usage)
        return last + (self._frame([], usage) if self._include_usage else b"") + DONE
