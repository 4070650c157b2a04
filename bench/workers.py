"""The workers scenario: the same gateway with 1 and with 2 worker processes.

    python -m bench.run --workers-only          # only this scenario
    python -m bench.run --workers-only --quick

For each worker count it starts the fake upstream and a gateway
(``server.workers: N``, auth and metering on) and measures what issue #14
asks for, side by side: non-streaming req/s at concurrency 64, and time to
first token while 1,000 streams at 20 tokens/s are open. Goals: 2 workers at
least 1.7 x one worker's req/s; TTFT p99 under 1 s at 1,000 streams.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import yaml

from bench.run import (ROOT, Load, Meter, Plan, Process, chat_body, create_key, free_port, raise_nofile,
                       wait_http, write_config)

COUNTS = (1, 2)
GOAL_SPEEDUP = 1.7
GOAL_TTFT_P99_MS = 1000.0


def _gateway(workdir: Path, src: Path, plan: Plan, workers: int, log_level: str
             ) -> tuple[Process, int, Process, Load]:
    fake_port, port = free_port(), free_port()
    fake = Process(f"fake-{workers}w", [sys.executable, "-m", "bench.fake_upstream", "--port", str(fake_port),
                                        "--tokens", str(plan.response_tokens)], workdir, ROOT)
    wait_http(fake_port, "/health", 15, fake.proc)
    config_path = workdir / f"backends-{workers}w.yaml"
    write_config(config_path, fake_port, port, plan, log_level)
    config = yaml.safe_load(config_path.read_text())
    config["server"]["workers"] = workers
    config["store"]["path"] = str(workdir / f"privatai-{workers}w.db")
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    key = create_key(src, config_path, workdir)
    gateway = Process(f"gateway-{workers}w", [sys.executable, "-m", "privatai", "serve",
                                              "--config", str(config_path)], workdir, src)
    wait_http(port, "/healthz", 60, gateway.proc)
    # /healthz answers as soon as one worker runs: wait for all of them.
    deadline = time.monotonic() + 60
    while workers > 1 and f"with {workers} workers" not in gateway.output():
        if time.monotonic() > deadline or gateway.proc.poll() is not None:
            raise RuntimeError(f"the gateway's {workers} workers did not start:\n{gateway.output()[-2000:]}")
        time.sleep(0.1)
    headers = [f"Authorization: Bearer {key}"] if key else []
    return fake, fake_port, gateway, Load(port, headers, workdir, plan.use_wrk, Meter(gateway, fake))


def _relay(workdir: Path, fake_port: int, workers: int) -> tuple[Process, Load]:
    port = free_port()
    relay = Process(f"relay-{workers}w", [sys.executable, "-m", "bench.relay", "--port", str(port), "--upstream",
                                          f"http://127.0.0.1:{fake_port}", "--workers", str(workers)], workdir, ROOT)
    wait_http(port, "/healthz", 60, relay.proc)
    time.sleep(1 + workers)  # /healthz answers once one worker runs
    return relay, Load(port, [], workdir, False, Meter(relay))


def _streams(load: Load, server: Process, model: str, plan: Plan) -> dict[str, Any]:
    """The long streams, opened over ``plan.stream_ramp`` seconds, with the server's CPU per chunk."""
    seconds = plan.stream_tokens / plan.stream_rate
    before = _cpu(server)
    result = load.loadgen(chat_body(model, stream=True, tokens=plan.stream_tokens), concurrency=plan.streams,
                          duration=seconds * 3 + 30, requests=1, ramp=plan.stream_ramp, stream=True,
                          timeout=seconds * 3 + 30)
    used = _cpu(server) - before
    result["server_cpu_us_per_chunk"] = round(used / result["frames"] * 1e6, 1) if result["frames"] else None
    return result


def _cpu(gateway: Process) -> float:
    """CPU seconds of the gateway's main process and all its workers."""
    total = gateway.cpu_seconds()
    for child in gateway.ps.children(recursive=True):
        times = child.cpu_times()
        total += times.user + times.system
    return total


def run(workdir: Path, src: Path, plan: Plan, log_level: str, log: Any) -> dict[str, Any]:
    """Both worker counts, one after the other (never at once: they share the CPU)."""
    raise_nofile()
    results: dict[str, Any] = {}
    for workers in COUNTS:
        fake, fake_port, gateway, load = _gateway(workdir, src, plan, workers, log_level)
        try:
            log(f"workers={workers}: throughput at concurrency {plan.concurrency}")
            before, started = _cpu(gateway), time.perf_counter()
            throughput = load.requests(chat_body("bench", tokens=plan.response_tokens),
                                       concurrency=plan.concurrency, duration=plan.throughput_seconds,
                                       warmup=plan.warmup_seconds)
            throughput["gateway_cpu_s"] = round(_cpu(gateway) - before, 3)
            throughput["wall_s"] = round(time.perf_counter() - started, 3)
            log(f"workers={workers}: {plan.streams} streams at {plan.stream_rate:g} tokens/s")
            streams = _streams(load, gateway, "bench-paced", plan)
            gateway.stop()
            # The floor for the same streams: the bare relay with as many workers.
            log(f"workers={workers}: the same streams through the bare relay")
            relay, relay_load = _relay(workdir, fake_port, workers)
            try:
                relay_streams = _streams(relay_load, relay, f"bench@{plan.stream_rate:g}", plan)
            finally:
                relay.stop()
        finally:
            gateway.stop()
            fake.stop()
        results[f"{workers}w"] = {"throughput_c64": throughput, "streams": streams, "relay_streams": relay_streams}
    one, two = results["1w"], results["2w"]
    speedup = (two["throughput_c64"]["rps"] / one["throughput_c64"]["rps"]
               if one["throughput_c64"].get("rps") else None)
    results["summary"] = {
        "rps_1w": one["throughput_c64"].get("rps"), "rps_2w": two["throughput_c64"].get("rps"),
        "speedup": round(speedup, 2) if speedup else None, "speedup_goal": GOAL_SPEEDUP,
        "ttft_p99_ms_1w": one["streams"]["ttft_ms"]["p99"], "ttft_p99_ms_2w": two["streams"]["ttft_ms"]["p99"],
        "ttft_p99_goal_ms": GOAL_TTFT_P99_MS,
        "stream_errors_1w": one["streams"]["errors"], "stream_errors_2w": two["streams"]["errors"],
    }
    return results


def table(results: dict[str, Any], plan: Plan) -> str:
    s = results["summary"]
    one, two = results["1w"], results["2w"]
    rows = [
        ("req/s, non-streaming, concurrency " + str(plan.concurrency), s["rps_1w"], s["rps_2w"],
         f"{s['speedup']}× (goal ≥ {GOAL_SPEEDUP}×)"),
        ("latency p99 at that load (ms)", one["throughput_c64"].get("latency_ms", {}).get("p99"),
         two["throughput_c64"].get("latency_ms", {}).get("p99"), ""),
        (f"TTFT p50 with {plan.streams} streams open (ms)", one["streams"]["ttft_ms"]["p50"],
         two["streams"]["ttft_ms"]["p50"], ""),
        (f"TTFT p99 with {plan.streams} streams open (ms)", s["ttft_p99_ms_1w"], s["ttft_p99_ms_2w"],
         f"goal < {GOAL_TTFT_P99_MS:g} ms"),
        ("stream errors", s["stream_errors_1w"], s["stream_errors_2w"], "goal 0"),
        ("server CPU per chunk, those streams (µs)", one["streams"].get("server_cpu_us_per_chunk"),
         two["streams"].get("server_cpu_us_per_chunk"), ""),
        ("bare relay, same workers and streams: TTFT p99 (ms)", one["relay_streams"]["ttft_ms"]["p99"],
         two["relay_streams"]["ttft_ms"]["p99"], "the floor for this machine"),
        ("bare relay: CPU per chunk (µs)", one["relay_streams"].get("server_cpu_us_per_chunk"),
         two["relay_streams"].get("server_cpu_us_per_chunk"), ""),
    ]
    lines = ["| measure | 1 worker | 2 workers | |", "|---|---:|---:|---|"]
    lines += [f"| {name} | {a} | {b} | {note} |" for name, a, b, note in rows]
    return "\n".join(lines)
