"""The adapter for upstreams with OpenAI's ``/chat/completions`` API
(llama.cpp's llama-server, vLLM, any other OpenAI-compatible API).

A streamed client request is streamed upstream: the SSE body is read
incrementally (``data: <chunk JSON>`` lines, blank lines between events,
``data: [DONE]`` at the end) so each token is passed on as soon as it
arrives. A client that asked for a non-streamed answer gets the upstream's
non-streamed answer, read as one ``chat.completion`` JSON body (parsing SSE
token by token was a fifth of the gateway's CPU on such requests) and turned
into the same events. Legacy text completions (``/completions``) take the
same two paths, and embeddings are one ``/embeddings`` call. The wire mapping
lives in :mod:`privatai.adapters.openai_wire` and
:mod:`privatai.adapters.text_wire`, the HTTP plumbing in
:mod:`privatai.adapters.transport`.

Timeouts come from the backend's config: ``connect_timeout`` for the TCP
connect, ``first_token_timeout`` from sending the request to the first event
(prompt processing can be slow), then ``idle_timeout`` between reads. A
non-streamed answer arrives only when generation ends, so
``first_token_timeout`` bounds the whole call.
"""
from __future__ import annotations

from typing import Any, AsyncIterator, Callable, ClassVar

import orjson

from privatai.config import BackendConfig
from privatai.errors import BackendUnavailable
from privatai.core.completions import CompletionRequest
from privatai.core.embeddings import EmbeddingResult, EmbeddingsRequest
from privatai.core.events import Event
from privatai.core.protocol import ChatRequest
from privatai.core.validation import refuse
from privatai.adapters.base import Adapter
from privatai.adapters.params import OPENAI_PARAMS, SELF_HOSTED_EXTRAS, refuse_unsupported
from privatai.adapters.openai_wire import (
    DONE,
    ChunkMapper,
    UpstreamStreamError,
    add_reasoning_switches,
    build_body,
    sse_chat_payload,
    sse_payload,
)
from privatai.adapters.transport import (
    TRANSPORT_ERRORS,
    UNFINISHED,
    Upstream,
    WireError,
    auth_headers,
    transport_failure,
    unreadable,
)
from privatai.adapters.text_wire import as_chat_chunk, completion_body, embeddings_body, parse_embeddings
from privatai.adapters.upstream_errors import classify, error_details, parse_error_body


class OpenAICompatibleAdapter(Adapter):
    """Base adapter for OpenAI-compatible upstreams. Subclasses set where the
    API lives (:meth:`api_base`), how to probe, and request-body extras."""

    # Path under the server root answering 200 when the backend can serve;
    # None probes ``GET {api_base}/models`` instead.
    health_path: ClassVar[str | None] = None
    # Whether ``/embeddings`` takes ``dimensions`` (vLLM and OpenAI do; llama-server does not).
    embedding_dimensions: ClassVar[bool] = True
    # The optional parameters this kind honours, and its name for the
    # repetition penalty (see :mod:`privatai.adapters.params`).
    params: ClassVar[frozenset[str]] = OPENAI_PARAMS
    repetition_key: ClassVar[str] = "repetition_penalty"

    def __init__(self, config: BackendConfig) -> None:
        super().__init__(config)
        assert config.url, "config validation requires a url for this kind"
        self.base_url = self.api_base(config.url)
        self._headers = {"Content-Type": "application/json", "Accept": "text/event-stream",
                         **auth_headers(config)}
        self._json_headers = {**self._headers, "Accept": "application/json"}
        self._upstream = Upstream(config)

    @classmethod
    def api_base(cls, url: str) -> str:
        """The OpenAI API root for the configured ``url``: the server root plus ``/v1``
        (a ``url`` that already ends in ``/v1`` is accepted as well)."""
        url = url.rstrip("/")
        return url if url.endswith("/v1") else url + "/v1"

    def server_root(self) -> str:
        return self.base_url.removesuffix("/v1")

    def build_body(self, request: ChatRequest, model: str) -> dict[str, Any]:
        """The upstream body, once the request asks for nothing this kind cannot
        honour; subclasses add their kind's reasoning switches."""
        refuse_unsupported(request, self.kind, self.params)
        return build_body(request, model, self.repetition_key)

    # -- lifecycle ----------------------------------------------------------

    async def start(self) -> None:
        self._upstream.session()

    async def close(self) -> None:
        await self._upstream.close()

    # -- chat, text completions, embeddings ---------------------------------

    def complete(self, request: ChatRequest, model: str) -> AsyncIterator[Event]:
        """A non-streamed upstream call for a non-streamed client request."""
        mapper = ChunkMapper(self.config.think_tags)
        return self._whole("/chat/completions", self.build_body(request, model), mapper,
                           mapper.feed_completion)

    def stream_tokens(self, request: ChatRequest, model: str) -> AsyncIterator[Event]:
        mapper = ChunkMapper(self.config.think_tags)
        return self._streamed("/chat/completions", self.build_body(request, model), mapper, mapper.feed,
                              sse_chat_payload)

    def complete_text(self, request: CompletionRequest, prompt: str, model: str) -> AsyncIterator[Event]:
        # Raw text: think tags in it are the client's business, not split off.
        mapper = ChunkMapper()
        body = completion_body(request, prompt, model)

        def feed(chunk: Any) -> list[Event]:
            return mapper.feed(as_chat_chunk(chunk))

        if request.stream:
            return self._streamed("/completions", body, mapper, feed)
        return self._whole("/completions", body, mapper, feed)

    async def embed(self, request: EmbeddingsRequest, texts: list[str], model: str) -> EmbeddingResult:
        if request.dimensions is not None and not self.embedding_dimensions:
            raise refuse("dimensions", f"the '{self.kind}' backend returns the model's own vector size.")
        body = await self._upstream.fetch(self.base_url + "/embeddings",
                                          embeddings_body(request, texts, model), self._json_headers)
        try:
            answer = orjson.loads(body)
            if isinstance(answer, dict) and (answer.get("error") or answer.get("object") == "error"):
                raise UpstreamStreamError(answer)
            return parse_embeddings(answer, len(texts))
        except UpstreamStreamError as exc:
            raise classify(None, error_details(exc.payload), started=False) from None
        except (KeyError, IndexError, AttributeError, TypeError, ValueError):
            raise transport_failure(unreadable("embeddings"), started=False) from None

    async def _whole(self, path: str, body: dict[str, Any], mapper: ChunkMapper,
                     feed: Callable[[Any], list[Event]]) -> AsyncIterator[Event]:
        """One non-streamed upstream answer as events.

        Every failure happens before the first event: BackendUnavailable or
        UpstreamRejected, never BackendError.
        """
        answer = await self._upstream.fetch(self.base_url + path, orjson.dumps(body), self._json_headers)
        try:
            events = feed(orjson.loads(answer))
        except UpstreamStreamError as exc:
            raise classify(None, error_details(exc.payload), started=False) from None
        except (KeyError, IndexError, AttributeError, TypeError, ValueError):
            # Not JSON (orjson's error is a ValueError), or not the expected object.
            raise transport_failure(unreadable("an answer"), started=False) from None
        events.extend(mapper.finish())
        for event in events:
            yield event

    async def _streamed(self, path: str, body: dict[str, Any], mapper: ChunkMapper,
                        feed: Callable[[Any], list[Event]],
                        decode: Callable[[bytes], Any] = sse_payload) -> AsyncIterator[Event]:
        """A streamed upstream answer (SSE) as events, each as it arrives;
        ``decode`` reads one line for ``feed``."""
        reader = await self._upstream.open_stream(self.base_url + path, orjson.dumps(body), self._headers)
        started = False
        try:
            while True:
                try:
                    lines = await reader.read(started)
                except TRANSPORT_ERRORS as exc:
                    # A connection lost after the finish reason lost nothing.
                    if mapper.finish_reason is not None:
                        break
                    raise transport_failure(exc, started=started) from None
                if lines is None:
                    if mapper.finish_reason is None:
                        raise transport_failure(WireError(UNFINISHED), started=started)
                    break
                done = False
                for line in lines:
                    if not line:
                        continue  # the blank line that ends each event
                    try:
                        chunk = decode(line)
                        if chunk is None:
                            continue
                        if chunk is DONE:
                            done = True
                            break
                        events = feed(chunk)
                    except UpstreamStreamError as exc:
                        raise classify(None, error_details(exc.payload), started=started) from None
                    except (AttributeError, TypeError, ValueError):
                        # Not JSON, or valid JSON but not the shape of a chunk.
                        raise transport_failure(unreadable("a chunk"), started=started) from None
                    for event in events:
                        started = True
                        yield event
                if done:
                    break
            for event in mapper.finish():
                yield event
        finally:
            reader.close()

    # -- discovery and health -----------------------------------------------

    async def list_models(self) -> list[str]:
        status, body = await self._get(self.base_url + "/models")
        if status != 200:
            raise classify(status, parse_error_body(body), started=False)
        try:
            data = orjson.loads(body).get("data")
        except (orjson.JSONDecodeError, AttributeError):
            data = None
        if not isinstance(data, list):
            raise BackendUnavailable("The backend's model list has an unexpected shape.")
        return [str(m["id"]) for m in data if isinstance(m, dict) and "id" in m]

    async def probe(self) -> None:
        if self.health_path is not None:
            status, body = await self._get(self.server_root() + self.health_path)
            # A server without a health route (llama-cpp-python's
            # llama_cpp.server) answers 404: the model list decides then.
            if status != 404:
                if status != 200:
                    raise classify(status, parse_error_body(body), started=False)
                return
        await self.list_models()

    async def _get(self, url: str) -> tuple[int, bytes]:
        headers = {k: v for k, v in self._headers.items() if k != "Content-Type"}
        headers["Accept"] = "application/json"
        return await self._upstream.get(url, headers)


class SelfHostedOpenAIAdapter(OpenAICompatibleAdapter):
    """An inference server of our own with an OpenAI API under ``/v1``
    (llama-server, vLLM): ``url`` is the server root, health is ``/health``,
    and the request carries the reasoning switches these servers accept."""

    health_path = "/health"
    params = OPENAI_PARAMS | SELF_HOSTED_EXTRAS

    def build_body(self, request: ChatRequest, model: str) -> dict[str, Any]:
        body = super().build_body(request, model)
        add_reasoning_switches(body, request)
        return body
