"""The router in process, through its API (``Router(config)``, ``resolve``,
``stream``, ``backends``), over scripted backends: failover, the circuit
breaker, the bounded queue, load spreading and reload, without HTTP.

The same behaviours through the gateway's HTTP API are in test_routing.py.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from privatai.config import parse_config
from privatai.core.events import Event, Finish, TextDelta
from privatai.core.routing import RouteInfo, Router
from privatai.errors import BackendError, BackendUnavailable, CapacityExceeded, ModelNotFound, UpstreamRejected
from tests.adapter_helpers import chat, text_of
from tests.fakes import Drop, Hang, Sleep
from tests.scripted import ScriptedBackends

MODEL = "m"


async def started_router(backends: list[dict[str, Any]], **routing: Any) -> Router:
    # No health rounds during a test unless it asks for them.
    router = Router(parse_config({"backends": backends, "routing": {"health_interval": 3600, **routing}}))
    await router.start()
    return router


async def events_of(router: Router, info: RouteInfo | None = None, **fields: Any) -> list[Event]:
    return [event async for event in router.stream(chat("Hi", **fields), MODEL, info or RouteInfo())]


async def hold(router: Router, started: asyncio.Event, info: RouteInfo | None = None) -> list[Event]:
    """A stream that says when its first event arrived, then reads to its end."""
    received = []
    async for event in router.stream(chat("Hi"), MODEL, info or RouteInfo()):
        received.append(event)
        started.set()
    return received


async def test_retryable_failure_before_the_first_event_fails_over(scripted: ScriptedBackends,
                                                                   routers: list[Router]) -> None:
    a, b = scripted.backend("a"), scripted.backend("b")
    routers.append(router := await started_router([a.entry(MODEL, weight=100), b.entry(MODEL, weight=0.01)],
                                                  failure_threshold=10))
    a.fail(500, "boom")
    b.reply(TextDelta("from b"))
    info = RouteInfo()
    assert text_of(await events_of(router, info)) == "from b"
    assert (info.attempts, info.backend) == (2, "b")
    assert router.backends["a"].failures == 1 and router.backends["b"].failures == 0


async def test_no_retry_after_the_first_event(scripted: ScriptedBackends, routers: list[Router]) -> None:
    a, b = scripted.backend("a"), scripted.backend("b")
    routers.append(router := await started_router([a.entry(MODEL, weight=100), b.entry(MODEL, weight=0.01)]))
    a.reply(TextDelta("Hello"), Drop())
    received: list[Event] = []
    info = RouteInfo()
    with pytest.raises(BackendError) as failed:
        async for event in router.stream(chat("Hi"), MODEL, info):
            received.append(event)
    assert not isinstance(failed.value, BackendUnavailable)
    assert received == [TextDelta("Hello")]
    assert not b.asked and (info.attempts, info.backend) == (1, "a")


async def test_a_rejected_request_is_not_retried_and_opens_no_circuit(scripted: ScriptedBackends,
                                                                      routers: list[Router]) -> None:
    a, b = scripted.backend("a"), scripted.backend("b")
    routers.append(router := await started_router([a.entry(MODEL, weight=100), b.entry(MODEL, weight=0.01)],
                                                  failure_threshold=1))
    a.fail(400, "context too long", error_type="exceed_context_size_error")
    with pytest.raises(UpstreamRejected) as rejected:
        await events_of(router)
    assert rejected.value.code == "context_length_exceeded"
    assert not b.asked
    # The client's request was bad, not the backend: it stays in rotation.
    assert router.backends["a"].failures == 0 and router.ready()


async def test_failover_stops_after_max_attempts(scripted: ScriptedBackends, routers: list[Router]) -> None:
    names = ["a", "b", "c", "d"]
    backends = [scripted.backend(name) for name in names]
    routers.append(router := await started_router([b.entry(MODEL) for b in backends], max_attempts=3,
                                                  failure_threshold=10))
    for backend in backends:
        backend.fail(503, f"{backend.name} is busy")
    info = RouteInfo()
    with pytest.raises(BackendUnavailable):
        await events_of(router, info)
    assert info.attempts == 3 and sum(len(b.asked) for b in backends) == 3


async def test_circuit_opens_at_the_threshold_and_half_opens_after_recovery(scripted: ScriptedBackends,
                                                                            routers: list[Router]) -> None:
    a = scripted.backend("a")
    routers.append(router := await started_router([a.entry(MODEL)], failure_threshold=2, recovery_time=0.3))
    for _ in range(2):
        a.fail(500, "boom")
        with pytest.raises(BackendUnavailable):
            await events_of(router)
    assert not router.ready()
    # Open: refused at once, the backend is not asked.
    with pytest.raises(BackendUnavailable):
        await events_of(router)
    assert len(a.asked) == 2
    await asyncio.sleep(0.35)
    # Half-open: one trial request; it succeeds and closes the circuit.
    a.reply(TextDelta("back"))
    assert text_of(await events_of(router)) == "back"
    assert router.backends["a"].failures == 0 and router.ready()


async def test_a_failing_probe_opens_the_circuit_and_a_good_one_closes_it(scripted: ScriptedBackends,
                                                                           routers: list[Router]) -> None:
    a = scripted.backend("a")
    routers.append(router := await started_router([a.entry(MODEL)], failure_threshold=2, recovery_time=60))
    backend = router.backends["a"]
    a.healthy = False
    assert not await router.probe(backend)
    assert not router.ready()  # failing: still routed to, but not "ready"
    assert not await router.probe(backend)
    with pytest.raises(BackendUnavailable):
        await events_of(router)
    a.healthy = True
    assert await router.probe(backend)
    assert text_of(await events_of(router)) == "Hello from the fake backend."


async def test_requests_wait_in_arrival_order_for_a_free_slot(scripted: ScriptedBackends,
                                                              routers: list[Router]) -> None:
    a = scripted.backend("a")
    routers.append(router := await started_router([a.entry(MODEL, max_concurrency=1)], queue_timeout=5))
    a.reply(TextDelta("first"), Sleep(0.2))
    for n in range(1, 5):
        a.reply(TextDelta(f"queued {n}"))
    first_started = asyncio.Event()
    first = asyncio.create_task(hold(router, first_started))
    await first_started.wait()
    queued = []
    for _ in range(4):
        queued.append(asyncio.create_task(events_of(router)))
        await asyncio.sleep(0.01)  # a definite arrival order
    assert router.queue_depth == 4
    results = await asyncio.gather(first, *queued)
    assert [text_of(events) for events in results] == ["first", "queued 1", "queued 2", "queued 3", "queued 4"]
    assert a.peak_in_flight == 1 and router.queue_depth == 0


async def test_a_full_queue_and_a_long_wait_are_429s_with_retry_after(scripted: ScriptedBackends,
                                                                      routers: list[Router]) -> None:
    a = scripted.backend("a")
    routers.append(router := await started_router([a.entry(MODEL, max_concurrency=1)], queue_timeout=0.3,
                                                  max_queue=1))
    a.reply(TextDelta("busy"), Sleep(0.6))
    busy = asyncio.Event()
    running = asyncio.create_task(hold(router, busy))
    await busy.wait()
    waiting = asyncio.create_task(events_of(router))
    await asyncio.sleep(0.01)
    began = time.monotonic()
    with pytest.raises(CapacityExceeded) as full:
        await events_of(router)
    assert time.monotonic() - began < 0.1, "a full queue answers at once"
    assert full.value.headers == {"Retry-After": "1"} and full.value.status == 429
    with pytest.raises(CapacityExceeded):
        await waiting  # waited queue_timeout for a slot that stayed taken
    assert time.monotonic() - began >= 0.25
    await running
    assert len(a.asked) == 1


async def test_the_least_loaded_backend_relative_to_its_capacity_is_picked(scripted: ScriptedBackends,
                                                                           routers: list[Router]) -> None:
    big, small = scripted.backend("big"), scripted.backend("small")
    routers.append(router := await started_router([big.entry(MODEL, max_concurrency=4),
                                                   small.entry(MODEL, max_concurrency=2)]))
    for backend in (big, small):
        for _ in range(4):
            backend.reply(TextDelta(backend.name), Hang())
    streams = []
    for _ in range(5):
        started = asyncio.Event()
        streams.append(asyncio.create_task(hold(router, started)))
        await started.wait()
    # Each pick takes the lowest in_flight / max_concurrency (a tie goes by
    # weight): whatever the ties chose, five streams end as 3 of 4 and 2 of 2.
    assert (router.backends["big"].in_flight, router.backends["small"].in_flight) == (3, 2)
    for stream in streams:
        stream.cancel()
    await asyncio.gather(*streams, return_exceptions=True)
    assert big.in_flight == small.in_flight == 0
    assert all(record.client_closed for record in big.streams + small.streams)


async def test_reload_keeps_open_streams_and_switches_new_ones(scripted: ScriptedBackends,
                                                               routers: list[Router]) -> None:
    a, b = scripted.backend("a"), scripted.backend("b")
    routers.append(router := await started_router([a.entry(MODEL)]))
    a.reply(TextDelta("old "), Sleep(0.3), TextDelta("stream"))
    started = asyncio.Event()
    open_stream = asyncio.create_task(hold(router, started))
    await started.wait()
    old = router.backends["a"]
    # a only serves another model now; b serves this one.
    await router.reload(parse_config({"backends": [a.entry("other"), b.entry(MODEL)],
                                      "routing": {"health_interval": 3600}}))
    assert router.backends["a"] is not old
    b.reply(TextDelta("from b"))
    assert text_of(await events_of(router)) == "from b"
    assert text_of(await open_stream) == "old stream"
    assert isinstance((await open_stream)[-2], Finish)
    with pytest.raises(ModelNotFound):
        router.resolve("gone")
    assert router.resolve("other") == "other"


async def test_discovered_models_are_routed(scripted: ScriptedBackends, routers: list[Router]) -> None:
    a = scripted.backend("a")
    a.discovered = ["found:latest"]
    routers.append(router := await started_router([a.entry(MODEL, discover_models=True)]))
    assert router.models() == [MODEL, "found:latest"]
    info = RouteInfo()
    await events_of(router, info)
    [asked] = a.asked
    assert asked.model == MODEL and info.backend == "a"
    assert router.resolve("found:latest") == "found:latest"
    a.reply(TextDelta("found"))
    found = [event async for event in router.stream(chat("Hi"), "found:latest", RouteInfo())]
    assert text_of(found) == "found" and a.asked[-1].model == "found:latest"
