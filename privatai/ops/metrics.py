"""Prometheus metrics: one registry per app, request hooks, router gauges.

Content-free by construction: every label value is a route pattern, a status
code, a model name the router resolved, a backend name or a fixed word. Nothing
from a request body, header, query string or client address can become a label,
so cardinality is bounded by the configuration.

With one worker, plain in-process metrics are exact and the router's gauges
are read at scrape time. With several (``server.workers``), every worker
writes its counters and histograms to prometheus-client's multiprocess files
in the server's private runtime directory (:mod:`privatai.ops.runtime`), a
scrape answered by any worker sums them all, and the router's gauges become
multiprocess gauges that each worker refreshes every half second: summed
over live workers (streams, queue, in flight), and the minimum for
``privatai_backend_up`` (0 as soon as any worker finds the backend down).
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, values
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from privatai.core.events import Usage
    from privatai.core.routing import Router

# The *_created series (a start timestamp per labelled child) double the
# output and Prometheus' text format treats them as plain gauges nobody
# queries; process-wide, but this process exports only these metrics.
disable_created_metrics()

# From a cached 10 ms answer to minutes of a large model thinking before it
# writes; past 120 s only "+Inf" matters.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)


class RouterCollector(Collector):
    """Gauges read from the router at scrape time: nothing to do per request.

    It asks for the router on every scrape rather than holding one, so a
    router replaced by a config reload is what gets reported.
    """

    def __init__(self, router: Callable[[], Router]) -> None:
        self._router = router

    def describe(self) -> Iterable[Metric]:
        # Names only, so the registry can check for duplicates without a scrape.
        return self._families()

    def collect(self) -> Iterable[Metric]:
        router = self._router()
        families = self._families()
        streams, queue, up, in_flight = families
        total = 0
        for name, backend in router.backends.items():
            total += backend.in_flight
            up.add_metric([name], 1.0 if router.health(backend) == "up" else 0.0)
            in_flight.add_metric([name], backend.in_flight)
        streams.add_metric([], total)
        queue.add_metric([], router.queue_depth)
        return families

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, ...]:
        return (
            GaugeMetricFamily("privatai_streams_in_flight",
                              "Generations running on backends now (streamed or not).", labels=[]),
            GaugeMetricFamily("privatai_queue_depth",
                              "Requests waiting for a free backend slot.", labels=[]),
            GaugeMetricFamily("privatai_backend_up",
                              "1 when the backend's last request or probe succeeded, else 0.",
                              labels=["backend"]),
            GaugeMetricFamily("privatai_backend_in_flight",
                              "Generations running on this backend now.", labels=["backend"]),
        )


class SharedGauges:
    """The router's gauges as multiprocess gauges, set by each worker from its router."""

    def __init__(self, router: Callable[[], Router], registry: CollectorRegistry) -> None:
        self._router = router
        self.streams = Gauge("privatai_streams_in_flight", "Generations running on backends now "
                             "(streamed or not).", registry=registry, multiprocess_mode="livesum")
        self.queue = Gauge("privatai_queue_depth", "Requests waiting for a free backend slot.",
                           registry=registry, multiprocess_mode="livesum")
        self.up = Gauge("privatai_backend_up", "1 when the backend's last request or probe succeeded, "
                        "else 0.", ("backend",), registry=registry, multiprocess_mode="livemin")
        self.in_flight = Gauge("privatai_backend_in_flight", "Generations running on this backend now.",
                               ("backend",), registry=registry, multiprocess_mode="livesum")

    def refresh(self) -> None:
        router = self._router()
        total = 0
        for name, backend in router.backends.items():
            total += backend.in_flight
            self.up.labels(name).set(1.0 if router.health(backend) == "up" else 0.0)
            self.in_flight.labels(name).set(backend.in_flight)
        self.streams.set(total)
        self.queue.set(router.queue_depth)


class _Children:
    """The labelled children one (route, status, model, backend) combination uses.

    Token and TTFT children are made on first use, so that errors without a
    model or a stream do not export empty series.
    """

    __slots__ = ("requests", "duration", "tokens", "ttft")

    def __init__(self, requests: Counter, duration: Histogram) -> None:
        self.requests = requests
        self.duration = duration
        self.tokens: tuple[Counter, Counter] | None = None
        self.ttft: Histogram | None = None


class Metrics:
    """The gateway's metrics in a registry of their own, so that several apps in
    one process (tests) do not collide in prometheus-client's global one."""

    def __init__(self, router: Callable[[], Router], *, multiprocess_dir: str | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.multiprocess_dir = multiprocess_dir
        self.shared_gauges: SharedGauges | None = None
        if multiprocess_dir is not None:
            # Values made from now on live in files (the environment variable
            # that chooses this is read by prometheus-client at import time).
            values.ValueClass = values.MultiProcessValue()
        self.requests = Counter(
            "privatai_requests", "Requests answered, by route pattern, status, model and backend.",
            ("route", "status", "model", "backend"), registry=self.registry)
        self.tokens = Counter(
            "privatai_tokens", "Tokens metered: prompt (in) and completion (out).",
            ("model", "direction"), registry=self.registry)
        self.duration = Histogram(
            "privatai_request_duration_seconds", "Time from request to the end of the response.",
            ("route", "model"), buckets=LATENCY_BUCKETS, registry=self.registry)
        self.ttft = Histogram(
            "privatai_time_to_first_token_seconds",
            "Time from request to the first content event sent on a stream.",
            ("model", "backend"), buckets=LATENCY_BUCKETS, registry=self.registry)
        if multiprocess_dir is None:
            self.registry.register(RouterCollector(router))
            self.exposed = self.registry
        else:
            self.shared_gauges = SharedGauges(router, self.registry)
            # What a scrape shows: the files of every worker, summed.
            self.exposed = CollectorRegistry()
            MultiProcessCollector(self.exposed, multiprocess_dir)
        # labels() costs a lock, a tuple of str() calls and a dict lookup per
        # metric; one lookup here replaces five of them on the request path.
        # Bounded: every key part comes from the configuration or a status code.
        self._children: dict[tuple[str, int, str, str], _Children] = {}

    def observe(self, route: str, status: int, model: str | None, backend: str | None,
                duration: float | None, usage: Usage | None, ttft: float | None) -> None:
        """Record one finished request (called once per request, from :func:`privatai.api.access.write`)."""
        key = (route, status, model or "", backend or "")
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = self._labelled(*key)
        children.requests.inc()
        if duration is not None:
            children.duration.observe(duration)
        if usage is not None:
            tokens = children.tokens
            if tokens is None:
                tokens = children.tokens = (self.tokens.labels(key[2], "in"), self.tokens.labels(key[2], "out"))
            tokens[0].inc(usage.prompt_tokens)
            tokens[1].inc(usage.completion_tokens)
        if ttft is not None:
            if children.ttft is None:
                children.ttft = self.ttft.labels(key[2], key[3])
            children.ttft.observe(ttft)

    def _labelled(self, route: str, status: int, model: str, backend: str) -> _Children:
        return _Children(self.requests.labels(route, str(status), model, backend),
                         self.duration.labels(route, model))

    def refresh(self) -> None:
        """Bring this worker's gauges up to date (a scrape, and every half second)."""
        if self.shared_gauges is not None:
            self.shared_gauges.refresh()

    def worker_stopped(self) -> None:
        """Drop this worker's live gauges from the shared files (its counters stay)."""
        if self.multiprocess_dir is not None:
            mark_process_dead(os.getpid(), self.multiprocess_dir)
