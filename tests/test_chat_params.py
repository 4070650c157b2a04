"""Every Chat Completions parameter either reaches the backend or is refused.

One row per parameter: what the official SDK sends, and for each backend kind
either where the fake (on a real socket, speaking that kind's wire format)
found it in the upstream body, or :data:`REFUSED`: a 400 naming the parameter
and the kind, with nothing sent upstream.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import httpx
import openai
import pytest

from privatai.core.events import TextDelta, ThinkingDelta
from tests.fakes import FAKES, FakeBackend
from tests.gateway import UPSTREAM_KEY, Gateway

KINDS = ["ollama", "llamacpp", "vllm", "openai"]
REFUSED = object()
PIXEL = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}},
         {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}]
USER = [{"role": "user", "content": "Hi"}]


def image_message(url: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                         {"type": "image_url", "image_url": {"url": url}}]}]


def same(path: str, value: Any) -> dict[str, tuple[str, Any]]:
    """The same field and value upstream for the three OpenAI-wire kinds."""
    return {kind: (path, value) for kind in ("llamacpp", "vllm", "openai")}


# (row id, create() arguments, expectation per kind: (path in the upstream body, value) or REFUSED;
# for a refusal the 400's param).
ROWS: list[tuple[str, dict[str, Any], dict[str, Any], str]] = [
    ("presence_penalty", {"presence_penalty": 0.5},
     {"ollama": ("options.presence_penalty", 0.5), **same("presence_penalty", 0.5)}, ""),
    ("frequency_penalty", {"frequency_penalty": -0.5},
     {"ollama": ("options.frequency_penalty", -0.5), **same("frequency_penalty", -0.5)}, ""),
    ("logit_bias", {"logit_bias": {"50256": -100}},
     {"ollama": REFUSED, **same("logit_bias", {"50256": -100})}, "logit_bias"),
    ("parallel_tool_calls", {"tools": TOOLS, "parallel_tool_calls": False},
     {"ollama": REFUSED, **same("parallel_tool_calls", False)}, "parallel_tool_calls"),
    ("top_k", {"extra_body": {"top_k": 40}},
     {"ollama": ("options.top_k", 40), "llamacpp": ("top_k", 40), "vllm": ("top_k", 40), "openai": REFUSED},
     "top_k"),
    ("min_p", {"extra_body": {"min_p": 0.05}},
     {"ollama": ("options.min_p", 0.05), "llamacpp": ("min_p", 0.05), "vllm": ("min_p", 0.05),
      "openai": REFUSED}, "min_p"),
    ("repetition_penalty", {"extra_body": {"repetition_penalty": 1.1}},
     {"ollama": ("options.repeat_penalty", 1.1), "llamacpp": ("repeat_penalty", 1.1),
      "vllm": ("repetition_penalty", 1.1), "openai": REFUSED}, "repetition_penalty"),
    ("chat_template_kwargs", {"extra_body": {"chat_template_kwargs": {"custom": 1}}},
     {"ollama": REFUSED, "llamacpp": ("chat_template_kwargs", {"custom": 1}),
      "vllm": ("chat_template_kwargs", {"custom": 1}), "openai": REFUSED}, "chat_template_kwargs"),
    ("n", {"n": 2}, {kind: REFUSED for kind in KINDS}, "n"),
    ("logprobs", {"logprobs": True, "top_logprobs": 2},
     {"ollama": REFUSED, **same("top_logprobs", 2)}, "logprobs"),
    ("message_name", {"messages": [{"role": "user", "content": "Hi", "name": "alice"}]},
     {"ollama": REFUSED, **same("messages.0.name", "alice")}, "name"),
    ("image_data_url", {"messages": image_message(f"data:image/png;base64,{PIXEL}")},
     {"ollama": ("messages.0.images", [PIXEL]),
      **same("messages.0.content.1.image_url.url", f"data:image/png;base64,{PIXEL}")}, ""),
    ("image_remote_url", {"messages": image_message("https://example.com/cat.png")},
     {"ollama": REFUSED, **same("messages.0.content.1.image_url.url", "https://example.com/cat.png")},
     "messages[0].content"),
    ("tool_choice_required", {"tools": TOOLS, "tool_choice": "required"},
     {"ollama": REFUSED, **same("tool_choice", "required")}, "tool_choice"),
    ("tool_choice_named", {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "get_time"}}},
     {"ollama": ("tools.*.function.name", ["get_time"]),
      **same("tool_choice", {"type": "function", "function": {"name": "get_time"}})}, ""),
    ("legacy_functions", {"functions": [t["function"] for t in TOOLS], "function_call": {"name": "get_time"}},
     {"ollama": ("tools.*.function.name", ["get_time"]),
      **same("tool_choice", {"type": "function", "function": {"name": "get_time"}})}, ""),
    ("reasoning_object", {"extra_body": {"reasoning": {"effort": "low"}}},
     {"ollama": ("think", "low"), **same("reasoning_effort", "low")}, ""),
]


def model(fake: FakeBackend) -> str:
    """The gateway's name for the model of ``fake``'s backend."""
    return f"chat-model-{fake.kind}"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, FakeBackend], Gateway, str]]:
    """One gateway process in front of one fake of each kind, a backend and
    model each: a request reaches exactly its kind's fake."""
    with contextlib.ExitStack() as stack:
        fakes = {kind: stack.enter_context(FAKES[kind](api_key=UPSTREAM_KEY) if kind == "openai" else FAKES[kind]())
                 for kind in KINDS}
        backends = [{"name": f"{kind}-1", "kind": kind, "url": fake.url,
                     "models": [{"name": model(fake), "upstream": "fake-model"}],
                     **({"api_key_env": "UPSTREAM_API_KEY"} if kind == "openai" else {})}
                    for kind, fake in fakes.items()]
        gateway = Gateway(tmp_path_factory.mktemp("gw-params"), {"backends": backends},
                          env={"UPSTREAM_API_KEY": UPSTREAM_KEY})
        key = gateway.create_key()
        yield fakes, stack.enter_context(gateway), key


@pytest.fixture(scope="module", params=KINDS)
def served(request: pytest.FixtureRequest,
           gateway: tuple[dict[str, FakeBackend], Gateway, str]) -> tuple[FakeBackend, openai.OpenAI]:
    fakes, running, key = gateway
    return fakes[request.param], openai.OpenAI(base_url=running.base_url, api_key=key, max_retries=0, timeout=30)


def dig(body: Any, path: str) -> Any:
    """``a.0.b`` indexes into the body; ``*`` collects over a list."""
    parts = path.split(".")
    for i, part in enumerate(parts):
        if part == "*":
            rest = ".".join(parts[i + 1:])
            return [dig(item, rest) for item in body]
        body = body[int(part)] if isinstance(body, list) else body[part]
    return body


@pytest.mark.parametrize("row", ROWS, ids=[row[0] for row in ROWS])
def test_parameter_reaches_the_backend_or_is_refused(served: tuple[FakeBackend, openai.OpenAI],
                                                     row: tuple[str, dict[str, Any], dict[str, Any], str]) -> None:
    fake, client = served
    _, arguments, expected, refused_param = row
    arguments = {"messages": USER, **arguments}
    sent_before = len(fake.chat_bodies)
    want = expected[fake.kind]
    if want is REFUSED:
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model=model(fake), **arguments)
        error = caught.value.body
        assert isinstance(error, dict)
        assert error["param"] == refused_param
        assert fake.kind in error["message"]
        assert len(fake.chat_bodies) == sent_before
        return
    fake.reply(TextDelta("ok"))
    completion = client.chat.completions.create(model=model(fake), **arguments)
    assert completion.choices[0].message.content == "ok"
    path, value = want
    assert dig(fake.last_body, path) == value


def test_streamed_request_gets_the_same_mapping(served: tuple[FakeBackend, openai.OpenAI]) -> None:
    fake, client = served
    fake.reply(TextDelta("ok"))
    chunks = list(client.chat.completions.create(model=model(fake), messages=USER, stream=True,
                                                 presence_penalty=1.5))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "ok"
    body = fake.last_body
    assert (body["options"] if fake.kind == "ollama" else body)["presence_penalty"] == 1.5


def test_refusal_of_a_streamed_request_is_a_real_400(served: tuple[FakeBackend, openai.OpenAI]) -> None:
    fake, client = served
    sent_before = len(fake.chat_bodies)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=model(fake), messages=USER, stream=True, n=3)
    assert caught.value.status_code == 400 and caught.value.body["param"] == "n"
    assert len(fake.chat_bodies) == sent_before


def test_usage_details_the_backend_reports_reach_the_client(served: tuple[FakeBackend, openai.OpenAI]) -> None:
    """Cached prompt tokens and reasoning tokens as the upstream reports them;
    the metered totals are the upstream's totals, details or not."""
    fake, client = served
    usage_url = f"{str(client.base_url).rstrip('/')}/usage"
    headers = {"Authorization": f"Bearer {client.api_key}"}
    before = httpx.get(usage_url, headers=headers, timeout=10).json()
    reply = fake.reply(ThinkingDelta("Hmm."), TextDelta("ok"), usage=(30, 12))
    reply.cached_tokens, reply.reasoning_tokens = 20, 8
    whole = client.chat.completions.create(model=model(fake), messages=USER).usage
    reply = fake.reply(ThinkingDelta("Hmm."), TextDelta("ok"), usage=(30, 12))
    reply.cached_tokens, reply.reasoning_tokens = 20, 8
    chunks = list(client.chat.completions.create(model=model(fake), messages=USER, stream=True,
                                                 stream_options={"include_usage": True}))
    (streamed,) = [c.usage for c in chunks if c.usage]
    for usage in (whole, streamed):
        assert usage is not None and (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (30, 12, 42)
        if fake.kind == "ollama":  # Ollama's counts have no such breakdown
            assert usage.prompt_tokens_details is None and usage.completion_tokens_details is None
        else:
            assert usage.prompt_tokens_details and usage.prompt_tokens_details.cached_tokens == 20
            assert usage.completion_tokens_details and usage.completion_tokens_details.reasoning_tokens == 8
    after = httpx.get(usage_url, headers=headers, timeout=10).json()
    assert (after["prompt_tokens"] - before["prompt_tokens"], after["completion_tokens"] - before["completion_tokens"],
            after["requests"] - before["requests"]) == (60, 24, 2)


def test_implausible_usage_details_are_left_out(served: tuple[FakeBackend, openai.OpenAI]) -> None:
    fake, client = served
    reply = fake.reply(TextDelta("ok"), usage=(30, 12))
    reply.cached_tokens, reply.reasoning_tokens = 31, -1
    usage = client.chat.completions.create(model=model(fake), messages=USER).usage
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (30, 12)
    assert usage.prompt_tokens_details is None and usage.completion_tokens_details is None


def test_content_filter_finish_reaches_the_client(served: tuple[FakeBackend, openai.OpenAI]) -> None:
    fake, client = served
    if fake.kind == "ollama":
        pytest.skip("Ollama's done_reason is only stop or length")
    fake.reply(TextDelta("I can"), finish="content_filter")
    assert client.chat.completions.create(model=model(fake), messages=USER).choices[0].finish_reason \
        == "content_filter"
    fake.reply(TextDelta("I can"), finish="content_filter")
    chunks = list(client.chat.completions.create(model=model(fake), messages=USER, stream=True))
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] \
        == ["content_filter"]


def test_logprobs_come_back_whole_and_streamed(served: tuple[FakeBackend, openai.OpenAI]) -> None:
    fake, client = served
    if fake.kind == "ollama":
        pytest.skip("refused on Ollama (see the parameter table)")
    fake.reply(TextDelta("Hel"), TextDelta("lo"))
    choice = client.chat.completions.create(model=model(fake), messages=USER, logprobs=True,
                                            top_logprobs=2).choices[0]
    assert choice.message.content == "Hello"
    assert choice.logprobs is not None and choice.logprobs.content is not None
    assert [(t.token, t.logprob) for t in choice.logprobs.content] == [("Hel", -0.25), ("lo", -0.25)]
    assert [a.token for a in choice.logprobs.content[0].top_logprobs] == ["alt0", "alt1"]

    fake.reply(TextDelta("Hel"), TextDelta("lo"))
    chunks = list(client.chat.completions.create(model=model(fake), messages=USER, stream=True, logprobs=True))
    streamed = [t.token for c in chunks if c.choices and c.choices[0].logprobs
                for t in c.choices[0].logprobs.content or []]
    assert streamed == ["Hel", "lo"]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello"


def test_no_logprobs_unless_asked(served: tuple[FakeBackend, openai.OpenAI]) -> None:
    fake, client = served
    fake.reply(TextDelta("Hello"))
    assert client.chat.completions.create(model=model(fake), messages=USER).choices[0].logprobs is None


def test_system_fingerprint_reaches_the_client(served: tuple[FakeBackend, openai.OpenAI]) -> None:
    fake, client = served
    if fake.kind == "ollama":
        pytest.skip("Ollama reports no fingerprint")
    fake.reply(TextDelta("ok")).system_fingerprint = "fp_b4567"
    assert client.chat.completions.create(model=model(fake), messages=USER).system_fingerprint == "fp_b4567"
    fake.reply(TextDelta("o"), TextDelta("k")).system_fingerprint = "fp_b4567"
    chunks = list(client.chat.completions.create(model=model(fake), messages=USER, stream=True,
                                                 stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "ok"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert {c.system_fingerprint for c in chunks} == {"fp_b4567"}


def test_no_fingerprint_when_the_upstream_sends_none(served: tuple[FakeBackend, openai.OpenAI]) -> None:
    fake, client = served
    fake.reply(TextDelta("ok"))
    # llama-server names its build in every whole answer; the others send none (or null).
    expected = "b6000-fake" if fake.kind == "llamacpp" else None
    assert client.chat.completions.create(model=model(fake), messages=USER).system_fingerprint == expected
