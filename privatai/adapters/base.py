"""The interface every backend adapter implements.

An adapter translates one backend's protocol into normalized events and
nothing else: it knows nothing of our HTTP server, keys, metering or logging.

Error contract (the router and the stream writer rely on it):
- before the first event, raise :class:`BackendUnavailable` for anything worth
  trying on another backend (refused, timed out, 5xx; a 429 as its subclass
  :class:`BackendRateLimited`, which carries the upstream's Retry-After),
  :class:`UpstreamRejected` for a request the backend found invalid (400,
  context too long);
- after the first event, raise :class:`BackendError`; it goes to the client
  in-band.
Messages may contain upstream text (which may echo the prompt): they go to the
client, never to a log.
"""
from __future__ import annotations

import abc
from typing import AsyncIterator, ClassVar

from privatai.config import BackendConfig
from privatai.core.completions import CompletionRequest
from privatai.core.embeddings import EmbeddingResult, EmbeddingsRequest
from privatai.core.events import Event
from privatai.core.protocol import ChatRequest
from privatai.errors import NotOffered


class Adapter(abc.ABC):
    kind: ClassVar[str]

    def __init__(self, config: BackendConfig) -> None:
        self.config = config
        self.name = config.name

    async def start(self) -> None:
        """Open shared clients (called in ``before_server_start``)."""

    async def close(self) -> None:
        """Close them again (``after_server_stop``)."""

    def stream(self, request: ChatRequest, model: str) -> AsyncIterator[Event]:
        """Run one chat request against upstream model ``model``.

        An async iterator of events: text, thinking and tool-call deltas, then
        exactly one :class:`Finish`, and a :class:`Usage` when the backend
        reports one. Closing it must close the upstream request. A streamed
        client request streams from the upstream (:meth:`stream_tokens`); a
        non-streamed one asks it for one whole answer (:meth:`complete`).
        """
        if request.stream:
            return self.stream_tokens(request, model)
        return self.complete(request, model)

    @abc.abstractmethod
    def stream_tokens(self, request: ChatRequest, model: str) -> AsyncIterator[Event]:
        """The events of an answer streamed by the upstream, each as it arrives."""

    def complete(self, request: ChatRequest, model: str) -> AsyncIterator[Event]:
        """The events of one whole upstream answer. Backends without a cheaper
        non-streamed mode stream, and the handler gathers the events."""
        return self.stream_tokens(request, model)

    def complete_text(self, request: CompletionRequest, prompt: str, model: str) -> AsyncIterator[Event]:
        """Continue the raw text ``prompt`` (legacy completions): text deltas,
        one :class:`Finish`, a :class:`Usage` when reported. The backend's own
        prompt-based endpoint, never a chat template. Same error contract."""
        raise NotOffered(f"Text completions are not offered by the '{self.kind}' backend that serves "
                         "this model.")

    async def embed(self, request: EmbeddingsRequest, texts: list[str], model: str) -> EmbeddingResult:
        """The vectors of ``texts`` in order (errors as before the first event)."""
        raise NotOffered(f"Embeddings are not offered by the '{self.kind}' backend that serves this model.")

    async def list_models(self) -> list[str]:
        """Upstream model names this backend serves now (for discovery)."""
        return list(self.config.model_map().values())

    async def probe(self) -> None:
        """Raise :class:`BackendUnavailable` unless the backend can serve now."""
