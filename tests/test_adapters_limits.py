"""What a misbehaving upstream cannot do to the gateway, through every adapter
kind on a real socket: make us buffer a runaway line or body, turn its 429
into our 503, or report token counts that would poison the usage store."""
from __future__ import annotations

import time
from email.utils import formatdate
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from privatai.adapters.base import Adapter
from privatai.adapters.reported_usage import MAX_REPORTED_TOKENS
from privatai.adapters.upstream_errors import DEFAULT_RETRY_AFTER
from privatai.config import BackendConfig, parse_config
from privatai.core.events import TextDelta, Usage
from privatai.core.routing import RouteInfo, Router
from privatai.errors import BackendError, BackendRateLimited, BackendUnavailable
from tests.adapter_helpers import backend_config, chat, collect, started_adapter, text_of, usage_of
from tests.fakes import FakeBackend, FakeVLLM, Hang, Raw
from tests.fakes.llama import FakeLlama

CAP = 4096


def unterminated_line(fake: FakeBackend, size: int) -> Raw:
    """The start of one chunk or line of the kind's stream that never ends."""
    head = (b'{"message": {"role": "assistant", "content": "' if fake.kind == "ollama"
            else b'data: {"choices": [{"index": 0, "delta": {"content": "')
    return Raw(head + b"a" * size)


@pytest.fixture
async def capped(pair: tuple[FakeBackend, Adapter]) -> AsyncIterator[tuple[FakeBackend, Adapter]]:
    """The kind's fake with an adapter whose caps are a few KB."""
    fake, _ = pair
    adapter = await started_adapter(backend_config(fake, max_line_bytes=CAP, max_response_bytes=CAP))
    yield fake, adapter
    await adapter.close()


# -- caps on what is buffered -------------------------------------------------


async def test_a_runaway_line_mid_stream_is_an_in_band_error_and_the_upstream_is_closed(
        capped: tuple[FakeBackend, Adapter]) -> None:
    fake, adapter = capped
    fake.reply(TextDelta("ok"), unterminated_line(fake, 64 * CAP), Hang())
    stream = adapter.stream(chat("hi"), "m")
    assert await anext(stream) == TextDelta("ok")
    with pytest.raises(BackendError) as caught:
        await anext(stream)
    assert not isinstance(caught.value, BackendUnavailable)
    assert f"longer than this gateway's limit of {CAP} bytes" in caught.value.message
    # We stopped reading: the fake, still sending, sees the connection go.
    await fake.wait_closed(1.0)


async def test_a_runaway_line_before_the_first_event_is_a_502(capped: tuple[FakeBackend, Adapter]) -> None:
    fake, adapter = capped
    fake.reply(unterminated_line(fake, 64 * CAP), Hang())
    with pytest.raises(BackendUnavailable) as caught:
        await collect(adapter.stream(chat("hi"), "m"))
    assert caught.value.status == 502
    assert "longer than" in caught.value.message
    await fake.wait_closed(1.0)


async def test_lines_within_the_cap_pass(capped: tuple[FakeBackend, Adapter]) -> None:
    fake, adapter = capped
    text = "b" * (CAP - 1024)
    fake.reply(TextDelta(text), TextDelta(text))
    events = await collect(adapter.stream(chat("hi"), "m"))
    assert text_of(events) == text * 2


async def test_a_whole_answer_over_the_cap_is_a_502(capped: tuple[FakeBackend, Adapter]) -> None:
    """The fake declares the answer's Content-Length: nothing of it is read."""
    fake, adapter = capped
    fake.reply(TextDelta("c" * 4 * CAP))
    with pytest.raises(BackendUnavailable) as caught:
        await collect(adapter.stream(chat("hi", stream=False), "m"))
    assert caught.value.status == 502
    assert f"larger than this gateway's limit of {CAP} bytes" in caught.value.message


async def test_a_chunked_whole_answer_over_the_cap_is_a_502(capped: tuple[FakeBackend, Adapter]) -> None:
    """No Content-Length: the body is read only up to the cap."""
    fake, adapter = capped
    fake.reply(Raw(b'{"message": "' + b"d" * 16 * CAP + b'"}'))
    with pytest.raises(BackendUnavailable) as caught:
        await collect(adapter.stream(chat("hi", stream=False), "m"))
    assert caught.value.status == 502
    # The adapter still serves after dropping that connection.
    fake.reply(TextDelta("fine"))
    assert text_of(await collect(adapter.stream(chat("hi", stream=False), "m"))) == "fine"


async def test_caps_are_validated_config() -> None:
    backend = {"name": "b", "kind": "vllm", "url": "http://127.0.0.1:1", "models": ["m"]}
    config = parse_config({"backends": [backend]})
    assert (config.backends[0].max_line_bytes, config.backends[0].max_response_bytes) == (1024 * 1024,
                                                                                          8 * 1024 * 1024)
    with pytest.raises(Exception, match=r"backends\[0\]\.max_line_bytes"):
        parse_config({"backends": [{**backend, "max_line_bytes": 0}]})


# -- an upstream 429 ------------------------------------------------------------


async def test_upstream_429_is_a_429_with_its_retry_after(pair: tuple[FakeBackend, Adapter]) -> None:
    fake, adapter = pair
    fake.fail(429, "slow down", headers={"Retry-After": "7"})
    with pytest.raises(BackendRateLimited) as caught:
        await collect(adapter.stream(chat("hi"), "m"))
    error = caught.value
    assert (error.status, error.type, error.code) == (429, "rate_limit_error", "rate_limit_exceeded")
    assert error.headers == {"Retry-After": "7"}
    assert error.retryable  # another backend may serve it
    assert "slow down" in error.message
    fake.fail(429, "slow down", headers={"Retry-After": "7"})
    with pytest.raises(BackendRateLimited) as whole:
        await collect(adapter.stream(chat("hi", stream=False), "m"))
    assert whole.value.headers == {"Retry-After": "7"}


@pytest.mark.parametrize(("header", "expected"), [
    (None, DEFAULT_RETRY_AFTER), ("soon", DEFAULT_RETRY_AFTER), ("-3", DEFAULT_RETRY_AFTER),
    ("2.2", 3), ("86400", 600)])
async def test_retry_after_default_rounding_and_ceiling(header: str | None, expected: int) -> None:
    async with FakeVLLM() as fake:
        adapter = await started_adapter(backend_config(fake))
        try:
            fake.fail(429, "busy", headers={"Retry-After": header} if header is not None else None)
            with pytest.raises(BackendRateLimited) as caught:
                await collect(adapter.stream(chat("hi"), "m"))
        finally:
            await adapter.close()
    assert caught.value.headers == {"Retry-After": str(expected)}


async def test_retry_after_as_an_http_date() -> None:
    async with FakeVLLM() as fake:
        adapter = await started_adapter(backend_config(fake))
        try:
            fake.fail(429, "busy", headers={"Retry-After": formatdate(time.time() + 30, usegmt=True)})
            with pytest.raises(BackendRateLimited) as caught:
                await collect(adapter.stream(chat("hi"), "m"))
        finally:
            await adapter.close()
    assert 28 <= caught.value.retry_after <= 31


async def test_router_tries_another_replica_after_a_429_and_passes_the_last_one_on() -> None:
    async with FakeVLLM() as a, FakeVLLM() as b:
        # Equally loaded replicas are chosen by weight: a's makes it the first choice.
        backends = [{"name": name, "kind": "vllm", "url": fake.url, "models": [{"name": "m", "upstream": "x"}],
                     "weight": weight} for name, fake, weight in (("a", a, 1e9), ("b", b, 1e-9))]
        router = Router(parse_config({"backends": backends, "routing": {"health_interval": 60}}))
        await router.start()
        try:
            a.fail(429, "busy", headers={"Retry-After": "5"})
            b.reply(TextDelta("served"))
            info = RouteInfo()
            events = await collect(router.stream(chat("hi"), "m", info))
            assert text_of(events) == "served"
            assert (info.attempts, info.backend, len(a.chat_bodies)) == (2, "b", 1)
            # Both refuse: the client gets the 429 and its Retry-After.
            for fake in (a, b):
                fake.fail(429, "busy", headers={"Retry-After": "5"})
            info = RouteInfo()
            with pytest.raises(BackendRateLimited) as caught:
                await collect(router.stream(chat("hi"), "m", info))
            assert info.attempts == 2
            assert caught.value.headers == {"Retry-After": "5"}
        finally:
            await router.close()


async def test_429s_do_not_open_the_circuit() -> None:
    """A backend that answers 429 is up: past failure_threshold 429s its
    clients still get its 429 and Retry-After (not a 503 "no healthy backend"),
    and it serves again as soon as it can."""
    async with FakeVLLM() as a:
        backends = [{"name": "a", "kind": "vllm", "url": a.url, "models": [{"name": "m", "upstream": "x"}]}]
        router = Router(parse_config({"backends": backends,
                                      "routing": {"health_interval": 60, "failure_threshold": 2}}))
        await router.start()
        try:
            for _ in range(4):
                a.fail(429, "busy", headers={"Retry-After": "3"})
                with pytest.raises(BackendRateLimited) as caught:
                    await collect(router.stream(chat("hi"), "m", RouteInfo()))
                assert caught.value.headers == {"Retry-After": "3"}
            assert router.health(router.backends["a"]) == "up"
            a.reply(TextDelta("served"))
            assert text_of(await collect(router.stream(chat("hi"), "m", RouteInfo()))) == "served"
        finally:
            await router.close()


# -- reported usage -------------------------------------------------------------


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "whole"])
async def test_an_absurd_usage_is_clamped(pair: tuple[FakeBackend, Adapter], stream: bool) -> None:
    fake, adapter = pair
    fake.reply(TextDelta("hi"), usage=(2**63, 4))
    events = await collect(adapter.stream(chat("hi", stream=stream), "m"))
    assert usage_of(events) == Usage(MAX_REPORTED_TOKENS, 4)


@pytest.mark.parametrize("usage", [(-5, 3), (7, -1), ("12", 3), (1.5, 2), (True, 1), (2**64 + 1, 1), (4, [1])],
                         ids=["negative-prompt", "negative-completion", "string", "float", "bool", "over-2^64",
                              "list"])
@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "whole"])
async def test_a_nonsense_usage_is_not_reported(pair: tuple[FakeBackend, Adapter], usage: tuple[Any, Any],
                                                stream: bool) -> None:
    """Then the meter counts the request with tiktoken, as for an upstream that reports none."""
    fake, adapter = pair
    fake.reply(TextDelta("hi"), usage=usage)
    events = await collect(adapter.stream(chat("hi", stream=stream), "m"))
    assert text_of(events) == "hi"
    assert usage_of(events) is None


@pytest.mark.parametrize(("usage", "expected"), [
    ({"prompt_tokens": 2**63, "completion_tokens": 2}, Usage(MAX_REPORTED_TOKENS, 2)),
    ({"prompt_tokens": -1, "completion_tokens": 2}, None),
    ({"prompt_tokens": 5, "completion_tokens": 2}, Usage(5, 2)),
])
async def test_embedded_usage_goes_through_the_same_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          usage: dict[str, Any], expected: Usage | None) -> None:
    """llama-cpp-python's streamed chunks carry no usage today; if a version
    adds it, it is checked like every other backend's."""
    llama_cpp = pytest.importorskip("llama_cpp")
    fake = FakeLlama()
    monkeypatch.setattr(llama_cpp, "Llama", fake.load)
    model = tmp_path / "fake.gguf"
    model.write_bytes(b"GGUF")
    adapter = await started_adapter(BackendConfig(name="embedded", kind="embedded", models=["m"],
                                                  model_path=str(model)))
    try:
        fake.reply(TextDelta("hi"), extra={"usage": usage})
        events = await collect(adapter.stream(chat("hi"), "m"))
    finally:
        await adapter.close()
    assert usage_of(events) == expected
