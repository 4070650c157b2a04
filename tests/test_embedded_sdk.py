"""The official openai SDK against a live gateway on the real embedded model."""
from __future__ import annotations

import threading

import httpx
import openai
import pytest

from tests.gateway import Gateway

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m"


@pytest.fixture(scope="module")
def client(embedded_gateway: Gateway, api_key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=embedded_gateway.base_url, api_key=api_key, max_retries=0, timeout=120)


def test_non_streaming_completion(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=12, temperature=0, seed=1)
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == MODEL
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content and choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    usage = completion.usage
    assert usage is not None and usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_streaming_reassembles_text_with_finish_and_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Count from one to five."}],
        max_tokens=16, temperature=0, stream=True)
    chunks = list(stream)
    assert len(chunks) >= 3, "tokens must arrive one by one, not in one piece"
    assert len({c.id for c in chunks}) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes in (["stop"], ["length"])
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1 and usage_chunks[0].choices[0].finish_reason in ("stop", "length")
    assert usage_chunks[0].usage.completion_tokens > 0


def test_stream_options_include_usage_gives_separate_chunk(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hi."}], max_tokens=5, stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert all(c.usage is None for c in chunks[:-1])


def test_same_answer_streamed_and_not_with_seed(client: openai.OpenAI) -> None:
    args = dict(model=MODEL, messages=[{"role": "user", "content": "Name a color."}],
                max_tokens=8, temperature=0, seed=3)
    whole = client.chat.completions.create(**args).choices[0].message.content
    streamed = "".join(c.choices[0].delta.content or "" for c in
                       client.chat.completions.create(stream=True, **args) if c.choices)
    assert whole == streamed



def test_a_request_without_seed_is_not_decided_by_the_previous_requests_seed(client: openai.OpenAI) -> None:
    """llama-cpp-python derives an unseeded request's seed from the previous
    request's on the shared model: after a client's seed=7, the next
    client's "random" answer was the same every time."""
    seeded = dict(model=MODEL, messages=[{"role": "user", "content": "Name a color."}],
                  max_tokens=4, temperature=0, seed=7)
    unseeded = dict(model=MODEL, messages=[{"role": "user", "content": "Tell me a short story."}],
                    max_tokens=24, temperature=1.0, top_p=1.0)
    answers = []
    for _ in range(2):
        client.chat.completions.create(**seeded)
        answers.append(client.chat.completions.create(**unseeded).choices[0].message.content)
    assert answers[0] != answers[1]

def test_models_list_and_get(client: openai.OpenAI) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_unknown_model_is_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "x"}])
    assert info.value.body["code"] == "model_not_found"


def test_bad_body_is_bad_request(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=[])
    assert info.value.body["param"] == "messages"
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}],
                                       temperature="warm")  # type: ignore[arg-type]
    assert info.value.body["param"] == "temperature"


@pytest.mark.parametrize("options", [
    {"presence_penalty": 0.5, "frequency_penalty": 0.5},
    {"logit_bias": {"1": -100}},
    {"extra_body": {"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.2}},
], ids=["penalties", "logit_bias", "samplers"])
def test_sampling_parameters_the_model_honours_are_accepted(client: openai.OpenAI, options: dict) -> None:
    completion = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hi."}], max_tokens=4, seed=1, **options)
    assert completion.choices[0].message.content is not None
    assert completion.usage is not None and completion.usage.completion_tokens > 0


@pytest.mark.parametrize("options, param", [
    ({"n": 2}, "n"),
    ({"logprobs": True}, "logprobs"),
    ({"extra_body": {"chat_template_kwargs": {"enable_thinking": False}}}, "chat_template_kwargs"),
    ({"messages": [{"role": "user", "content": "Hi", "name": "alice"}]}, "name"),
    ({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}]}, "image_url"),
], ids=["n", "logprobs", "chat_template_kwargs", "name", "image"])
def test_parameters_the_model_cannot_honour_are_refused(client: openai.OpenAI, options: dict,
                                                        param: str) -> None:
    arguments = {"messages": [{"role": "user", "content": "Hi"}], **options}
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, max_tokens=4, **arguments)
    assert info.value.body["param"] == param
    assert "embedded" in info.value.body["message"]


def test_both_prefixes_and_default_model(embedded_gateway: Gateway, api_key: str) -> None:
    headers = {"Authorization": f"Bearer {api_key}"}
    for prefix in ("/api/v1", "/v1"):
        response = httpx.post(f"{embedded_gateway.url}{prefix}/chat/completions", headers=headers, timeout=120,
                              json={"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4})
        assert response.status_code == 200, response.text
        assert response.json()["model"] == MODEL


def test_malformed_json_and_oversized_body(embedded_gateway: Gateway, api_key: str) -> None:
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    bad = httpx.post(f"{embedded_gateway.base_url}/chat/completions", content=b'{"messages": [',
                     headers=headers, timeout=30)
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    huge = httpx.post(f"{embedded_gateway.base_url}/chat/completions", headers=headers, timeout=30,
                      content=b'{"messages": [{"role": "user", "content": "' + b"a" * 5_000_000 + b'"}]}')
    assert huge.status_code == 413
    assert huge.json()["error"]["code"] == "request_too_large"


def test_models_answer_while_a_generation_runs(embedded_gateway: Gateway, api_key: str) -> None:
    headers = {"Authorization": f"Bearer {api_key}"}
    first_token = threading.Event()
    asked = threading.Event()
    finished = threading.Event()

    def generate() -> None:
        with httpx.stream("POST", f"{embedded_gateway.base_url}/chat/completions", headers=headers, timeout=120,
                          json={"messages": [{"role": "user", "content": "Write a long story about a cat."}],
                                "max_tokens": 300, "stream": True}) as response:
            for line in response.iter_lines():
                if '"content"' in line:
                    first_token.set()
                if asked.is_set():
                    return  # leave: the model stops within a token, for the next test
        finished.set()

    thread = threading.Thread(target=generate)
    thread.start()
    assert first_token.wait(60)
    answered = httpx.get(f"{embedded_gateway.base_url}/models", headers=headers, timeout=30)
    health = httpx.get(f"{embedded_gateway.url}/healthz", timeout=30)
    generation_still_running = not finished.is_set()
    asked.set()
    thread.join(120)
    assert answered.status_code == 200 and health.status_code == 200
    assert generation_still_running, "the generation ended before /models was asked; make it longer"
