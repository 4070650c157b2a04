"""Load generator for the benchmark, run in its own process by ``bench/run.py``.

A raw asyncio client on uvloop with httptools' C response parser: each
connection sends a prebuilt HTTP/1.1 request, waits for the whole response
(keep-alive), and records the latency, the time to the first SSE ``data:``
frame, the number of frames and whether the stream ended with ``[DONE]``.
Written this way because an aiohttp or httpx client costs more CPU per request
than the gateway under test, on a machine where they share two cores.

One JSON object is printed on stdout at the end. With ``--plateau-signal`` a
line ``PLATEAU`` is printed once every connection has received its first
frame, so the caller can sample the server's memory while all streams are
open.

Every loop here is bounded: by ``--duration`` seconds, ``--requests`` per
connection, and ``--timeout`` per response.
"""
from __future__ import annotations

import argparse
import asyncio
import resource
import socket
import sys
import time
from typing import Any

import httptools
import orjson

DATA = b"data: "
DONE = b"data: [DONE]"
ERROR = b'data: {"error"'


class Exchange(asyncio.Protocol):
    """One keep-alive connection; one request in flight at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[None] | None = None
        # Set on the first body byte of a response, for callers that wait for it.
        self.on_first: asyncio.Future[None] | None = None
        self.lost = False
        self.reset()

    def reset(self) -> None:
        self.sent = 0.0
        self.first: float | None = None
        self.status = 0
        self.frames = 0
        self.done = False
        self.error = False
        self.bytes = 0
        self.carry = b""
        self.keep_alive = True

    # -- protocol ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._finish(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._finish(exc or ConnectionResetError("connection closed"))

    # -- httptools callbacks ---------------------------------------------------

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.bytes += len(body)
        data = self.carry + body
        if self.first is None:
            self.first = time.perf_counter()
            if self.on_first is not None and not self.on_first.done():
                self.on_first.set_result(None)
        # Frames whose marker lies wholly in the carry were counted last time.
        count = data.count(DATA) - self.carry.count(DATA)
        if count:
            self.frames += count
        if not self.done and DONE in data:
            self.done = True
        if not self.error and ERROR in data:
            self.error = True
        # A marker split across two reads is found in the next one.
        self.carry = data[-(len(ERROR) - 1):]

    def on_message_complete(self) -> None:
        self._finish(None)

    def _finish(self, exc: BaseException | None) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            if exc is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(exc)

    # -- use ---------------------------------------------------------------------

    async def request(self, data: bytes, timeout: float) -> None:
        self.reset()
        self.waiter = self.loop.create_future()
        self.sent = time.perf_counter()
        assert self.transport is not None
        self.transport.write(data)
        try:
            await asyncio.wait_for(self.waiter, timeout)
        finally:
            self.waiter = None


def build_request(host: str, port: int, path: str, body: bytes, headers: list[str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", "Content-Type: application/json",
             f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, int(round(q / 100 * (len(ordered) - 1)))))
    return ordered[index]


def raise_nofile(needed: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if soft < needed:
        raise SystemExit(f"loadgen: RLIMIT_NOFILE is {soft}, {needed} connections need more")
    return soft


class Stats:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.ttft: list[float] = []
        self.frames = 0
        self.ok = 0
        self.errors = 0
        self.error_kinds: dict[str, int] = {}
        self.bytes = 0

    def fail(self, kind: str) -> None:
        self.errors += 1
        self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1


async def worker(args: argparse.Namespace, request: bytes, stats: Stats, start_at: float,
                 measure_from: float, stop_at: float, first_frames: asyncio.Event | None,
                 firsts: list[int]) -> None:
    loop = asyncio.get_running_loop()
    delay = start_at - loop.time()
    if delay > 0:
        await asyncio.sleep(delay)
    conn: Exchange | None = None
    done = 0
    reported_first = False
    while done < args.requests and loop.time() < stop_at:
        if conn is None or conn.lost:
            try:
                _, conn = await asyncio.wait_for(
                    loop.create_connection(lambda: Exchange(loop), args.host, args.port), args.timeout)
            except (OSError, TimeoutError) as exc:
                stats.fail(f"connect:{type(exc).__name__}")
                await asyncio.sleep(0.05)
                done += 1
                continue
        measured = loop.time() >= measure_from
        try:
            if first_frames is not None and not reported_first:
                # The caller wants to know when every stream is open and flowing.
                conn.on_first = loop.create_future()
                task = asyncio.ensure_future(conn.request(request, args.timeout))
                await asyncio.wait((task, conn.on_first), return_when=asyncio.FIRST_COMPLETED)
                conn.on_first = None
                if conn.first is not None:
                    reported_first = True
                    firsts[0] += 1
                    if firsts[0] >= args.concurrency:
                        first_frames.set()
                await task
            else:
                await conn.request(request, args.timeout)
        except (OSError, httptools.HttpParserError, TimeoutError) as exc:
            if measured:
                stats.fail(type(exc).__name__)
                # Frames of a stream cut off still cost the server their CPU.
                stats.frames += conn.frames
            if conn.transport is not None:
                conn.transport.close()
            conn = None
            done += 1
            continue
        done += 1
        if not measured:
            continue
        end = time.perf_counter()
        if conn.status != 200:
            stats.fail(f"http_{conn.status}")
        elif args.stream and (not conn.done or conn.error):
            stats.fail("in_band_error" if conn.error else "no_done")
        else:
            stats.ok += 1
            stats.latencies.append(end - conn.sent)
            if conn.first is not None:
                stats.ttft.append(conn.first - conn.sent)
        stats.frames += max(0, conn.frames - (1 if conn.done else 0))
        stats.bytes += conn.bytes
        if not conn.keep_alive:
            conn.transport.close()  # type: ignore[union-attr]
            conn = None
    if conn is not None and conn.transport is not None:
        conn.transport.close()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    headers = [h for h in args.header]
    request = build_request(args.host, args.port, args.path, args.body.encode(), headers)
    stats = Stats()
    now = loop.time()
    measure_from = now + args.warmup
    stop_at = now + args.warmup + args.duration
    first_frames = asyncio.Event() if args.plateau_signal else None
    firsts = [0]
    ramp = args.ramp / max(1, args.concurrency)
    tasks = [asyncio.ensure_future(worker(args, request, stats, now + i * ramp, measure_from, stop_at,
                                          first_frames, firsts))
             for i in range(args.concurrency)]
    if first_frames is not None:
        async def announce() -> None:
            await first_frames.wait()
            print("PLATEAU", flush=True)
        announcer = asyncio.ensure_future(announce())
    started = time.perf_counter()
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - started
    if first_frames is not None and not announcer.done():
        announcer.cancel()
    measured_time = max(1e-9, elapsed - args.warmup)
    ms = lambda v: None if v is None else round(v * 1000, 3)  # noqa: E731
    return {
        "concurrency": args.concurrency,
        "ok": stats.ok,
        "errors": stats.errors,
        "error_kinds": stats.error_kinds,
        "elapsed_s": round(elapsed, 3),
        "rps": round(stats.ok / measured_time, 1),
        "latency_ms": {"p50": ms(percentile(stats.latencies, 50)), "p90": ms(percentile(stats.latencies, 90)),
                       "p99": ms(percentile(stats.latencies, 99)),
                       "mean": ms(sum(stats.latencies) / len(stats.latencies)) if stats.latencies else None},
        "ttft_ms": {"p50": ms(percentile(stats.ttft, 50)), "p99": ms(percentile(stats.ttft, 99))},
        "frames": stats.frames,
        "bytes": stats.bytes,
        "streams_first_frame": firsts[0],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="raw HTTP/1.1 load generator (see module doc)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/v1/chat/completions")
    parser.add_argument("--body", required=True, help="JSON request body")
    parser.add_argument("--header", action="append", default=[], help="extra 'Name: value' header")
    parser.add_argument("--stream", action="store_true", help="count SSE frames, require [DONE]")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds measured (after warmup)")
    parser.add_argument("--warmup", type=float, default=0.0, help="seconds not measured")
    parser.add_argument("--requests", type=int, default=10**9, help="at most this many per connection")
    parser.add_argument("--ramp", type=float, default=0.0, help="seconds over which connections start")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per response")
    parser.add_argument("--plateau-signal", action="store_true",
                        help="print PLATEAU once every connection got its first frame")
    args = parser.parse_args(argv)
    raise_nofile(args.concurrency + 64)
    import uvloop
    result = uvloop.run(run(args))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
