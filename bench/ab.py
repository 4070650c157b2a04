"""Compare two checkouts' gateways on the CPU figures, alternating, with the relay in each round.

    python -m bench.ab --base /tmp/main-checkout [--src .] [--rounds 2]

A full ``bench.run`` takes minutes and its absolute numbers move with the
machine's load; a change to the hot path is judged by A/B rounds instead:
each round starts the fake upstream, the bare relay and one checkout's
gateway (``bench.run``'s setup), and measures relay and gateway back to
back: CPU per non-streaming request at concurrency 64, CPU per paced chunk
(64 streams at 200 tokens/s; the gateway also with its Ollama-kind
backend), the same from an instant upstream, and latency p50 at
concurrency 1. The checkouts alternate, so both see the same minutes of
machine load; the ratio to the relay of the same round is the figure to
read. ``--latency-runs N`` measures only latency, as the median of N short
runs with both checkouts' gateways started side by side.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from typing import Any

from bench.run import ROOT, Bench, Plan, chat_body


def cpu_us(entry: dict[str, Any], side: str, per: str) -> float | None:
    count = entry.get(per) or 0
    return round(entry[f"{side}_cpu_s"] / count * 1e6, 1) if count else None


def one_round(src: str, plan: Plan, seconds: float) -> dict[str, float | None]:
    args = argparse.Namespace(src=src, log_level="WARNING", quick=False)
    bench = Bench(args, plan)
    out: dict[str, float | None] = {}
    try:
        bench.start()
        for side, load in (("relay", bench.floor), ("gateway", bench.via)):
            requests = load.requests(chat_body("bench", tokens=plan.response_tokens), concurrency=64,
                                     duration=seconds, warmup=1.0)
            out[f"{side}_us_per_request"] = cpu_us(requests, side, "ok")
            with bench.meter.measure() as cpu:
                model = "bench-chunks" if side == "gateway" else f"bench@{plan.chunk_rate:g}"
                chunks = load.loadgen(chat_body(model, stream=True, tokens=plan.chunk_tokens),
                                      concurrency=64, duration=seconds, stream=True)
            chunks.update(cpu)
            out[f"{side}_us_per_chunk"] = cpu_us(chunks, side, "frames")
            with bench.meter.measure() as cpu:
                burst = load.loadgen(chat_body("bench", stream=True, tokens=plan.chunk_tokens),
                                     concurrency=64, duration=seconds, stream=True)
            burst.update(cpu)
            out[f"{side}_us_per_chunk_instant"] = cpu_us(burst, side, "frames")
            if side == "gateway":
                with bench.meter.measure() as cpu:
                    ollama = load.loadgen(chat_body("ollama-chunks", stream=True, tokens=plan.chunk_tokens),
                                          concurrency=64, duration=seconds, stream=True)
                ollama.update(cpu)
                out["gateway_us_per_chunk_ollama"] = cpu_us(ollama, side, "frames")
            latency = load.requests(chat_body("bench", tokens=plan.response_tokens), concurrency=1,
                                    duration=seconds, warmup=1.0)
            out[f"{side}_p50_ms_c1"] = latency["latency_ms"]["p50"]
    finally:
        bench.stop()
        shutil.rmtree(bench.workdir, ignore_errors=True)
    for figure in ("us_per_request", "us_per_chunk", "us_per_chunk_instant"):
        relay, gateway = out[f"relay_{figure}"], out[f"gateway_{figure}"]
        out[f"ratio_{figure}"] = round(gateway / relay, 2) if relay and gateway else None
    out["load_avg"] = round(os.getloadavg()[0], 1)
    return out


def latency_runs(base: str, src: str, plan: Plan, runs: int, seconds: float) -> None:
    """Latency p50 at concurrency 1, many short runs alternating between both
    checkouts' gateways (and the relay), all started once and side by side:
    wall-clock latency on a shared machine is read as the median of runs."""
    benches = {name: Bench(argparse.Namespace(src=path, log_level="WARNING", quick=False), plan)
               for name, path in (("base", base), ("src", src))}
    p50: dict[str, list[float]] = {"relay": [], "base": [], "src": []}
    try:
        for bench in benches.values():
            bench.start()
        body = chat_body("bench", tokens=plan.response_tokens)
        for _ in range(runs):
            for name, load in (("relay", benches["base"].floor), ("base", benches["base"].via),
                               ("src", benches["src"].via)):
                p50[name].append(load.requests(body, concurrency=1, duration=seconds, warmup=0.5)
                                 ["latency_ms"]["p50"])
            print(f"[ab {time.strftime('%H:%M:%S')}] load {os.getloadavg()[0]:.1f}: "
                  + ", ".join(f"{name} {values[-1]}" for name, values in p50.items()), file=sys.stderr, flush=True)
    finally:
        for bench in benches.values():
            bench.stop()
            shutil.rmtree(bench.workdir, ignore_errors=True)
    print("latency p50 ms at concurrency 1, median of runs:",
          {name: statistics.median(values) for name, values in p50.items()})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.split("\n")[0])
    parser.add_argument("--base", required=True, help="the checkout to compare against")
    parser.add_argument("--src", default=str(ROOT), help="the checkout under test")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--latency-runs", type=int, default=0,
                        help="instead: this many alternating latency-only runs (concurrency 1)")
    args = parser.parse_args(argv)
    plan = Plan()
    if args.latency_runs:
        latency_runs(args.base, args.src, plan, args.latency_runs, args.seconds)
        return 0
    rows: dict[str, list[dict[str, float | None]]] = {"base": [], "src": []}
    for number in range(args.rounds):
        for name in ("base", "src"):
            result = one_round(getattr(args, name), plan, args.seconds)
            rows[name].append(result)
            print(f"[ab {time.strftime('%H:%M:%S')}] round {number + 1} {name}: {result}", file=sys.stderr,
                  flush=True)
    for name, results in rows.items():
        medians = {key: statistics.median(r[key] for r in results if r[key] is not None)
                   for key in results[0] if any(r[key] is not None for r in results)}
        print(name, {key: round(value, 2) for key, value in medians.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
