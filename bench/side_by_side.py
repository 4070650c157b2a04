"""The side-by-side table: each gateway with each upstream flavour, in one run.

Rows are the numbers an operator compares gateways by (added latency at
concurrency 1, requests/s and CPU per request at concurrency 64, added time
to the first token, CPU per paced chunk); columns are PrivatAI with its
``vllm``-kind backend and with its ``ollama``-kind backend, and, with
``--with-litellm``, LiteLLM's proxy with the same two upstreams
(:mod:`bench.litellm`). Every column runs against the same fake upstream in
the same minutes as the direct baseline it is compared with.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from bench.run import Bench, Load

# (column, public model for non-streamed requests, for the paced first token, for paced chunks)
FLAVOURS = {
    "vllm": ("bench", "bench-ttft", "bench-chunks"),
    "ollama": ("ollama-bench", "ollama-ttft", "ollama-chunks"),
}


def litellm_models(plan: Any) -> dict[str, str]:
    """The same public names the gateway serves, for LiteLLM's config."""
    ttft, chunk = f"bench@{plan.ttft_rate:g}", f"bench@{plan.chunk_rate:g}"
    return {"bench": "bench", "bench-ttft": ttft, "bench-chunks": chunk,
            "ollama-bench": "bench", "ollama-ttft": ttft, "ollama-chunks": chunk}


def measure(bench: Bench, load: Load, process: str, flavour: str) -> dict[str, Any]:
    """The four scenarios for one gateway process and one upstream flavour."""
    from bench.run import chat_body

    p = bench.plan
    plain, ttft_model, chunk_model = FLAVOURS[flavour]
    out: dict[str, Any] = {}
    out["latency_c1"] = load.requests(chat_body(plain, tokens=p.response_tokens), concurrency=1,
                                      duration=p.latency_seconds, warmup=p.warmup_seconds)
    out["throughput_c64"] = load.requests(chat_body(plain, tokens=p.response_tokens),
                                          concurrency=p.concurrency, duration=p.throughput_seconds,
                                          warmup=p.warmup_seconds)
    out["ttft_c1"] = load.loadgen(chat_body(ttft_model, stream=True, tokens=p.ttft_tokens), concurrency=1,
                                  duration=p.ttft_seconds, warmup=p.warmup_seconds / 2, stream=True)
    with bench.meter.measure() as cpu:
        # A gateway that cannot keep up is cut off 10 s after the run (its
        # streams count as errors, the chunks it delivered still count).
        out["chunks_c64"] = load.loadgen(chat_body(chunk_model, stream=True, tokens=p.chunk_tokens),
                                         concurrency=p.concurrency, duration=p.chunk_seconds, stream=True,
                                         timeout=p.chunk_seconds + 10)
    out["chunks_c64"].update({k: round(v, 3) for k, v in cpu.items()})
    out["process"] = process
    return out


def run(bench: Bench) -> dict[str, Any]:
    """Measure every column, with the direct baseline before and after them (its mean is used)."""
    from bench.run import chat_body

    p = bench.plan
    columns: dict[str, Any] = {}
    direct: list[dict[str, Any]] = []
    targets = [("privatai", bench.via, "gateway")]
    if bench.litellm_load is not None:
        targets.append(("litellm", bench.litellm_load, "litellm"))

    def measure_direct() -> None:
        bench.log("side by side: direct")
        direct.append({
            "latency_c1": bench.direct.requests(chat_body("bench", tokens=p.response_tokens), concurrency=1,
                                                duration=p.latency_seconds / 2, warmup=p.warmup_seconds),
            "ttft_c1": bench.direct.loadgen(chat_body(f"bench@{p.ttft_rate:g}", stream=True, tokens=p.ttft_tokens),
                                            concurrency=1, duration=p.ttft_seconds / 2,
                                            warmup=p.warmup_seconds / 2, stream=True),
        })

    measure_direct()
    for name, load, process in targets:
        for flavour in FLAVOURS:
            bench.log(f"side by side: {name} {flavour}")
            columns[f"{name}_{flavour}"] = measure(bench, load, process, flavour)
    measure_direct()
    return {"columns": columns, "direct": direct}


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def table(result: dict[str, Any], fmt: Callable[[Any], str]) -> str:
    columns: dict[str, Any] = result["columns"]
    direct = result["direct"]
    direct_p50 = _mean([d["latency_c1"]["latency_ms"].get("p50") for d in direct])
    direct_p99 = _mean([d["latency_c1"]["latency_ms"].get("p99") for d in direct])
    direct_ttft = _mean([d["ttft_c1"]["ttft_ms"].get("p50") for d in direct])
    names = {"privatai_vllm": "PrivatAI, vLLM kind", "privatai_ollama": "PrivatAI, Ollama kind",
             "litellm_vllm": "LiteLLM proxy, hosted_vllm", "litellm_ollama": "LiteLLM proxy, ollama_chat"}
    keys = [k for k in names if k in columns]

    def added(value: float | None, base: float | None) -> float | None:
        return None if value is None or base is None else round(value - base, 3)

    def per_request(c: dict[str, Any]) -> float | None:
        t = c["throughput_c64"]
        cpu = t.get(f"{c['process']}_cpu_s")
        return round(cpu / t["ok"] * 1e6) if cpu is not None and t["ok"] else None

    def per_chunk(c: dict[str, Any]) -> float | None:
        t = c["chunks_c64"]
        cpu = t.get(f"{c['process']}_cpu_s")
        return round(cpu / t["frames"] * 1e6, 1) if cpu is not None and t.get("frames") else None

    def errors(c: dict[str, Any]) -> int:
        return sum(c[s]["errors"] for s in ("latency_c1", "throughput_c64", "ttft_c1", "chunks_c64"))

    rows = [
        ("added latency p50, concurrency 1 (ms)", lambda c: added(c["latency_c1"]["latency_ms"].get("p50"), direct_p50)),
        ("added latency p99, concurrency 1 (ms)", lambda c: added(c["latency_c1"]["latency_ms"].get("p99"), direct_p99)),
        ("throughput, concurrency 64 (req/s)", lambda c: c["throughput_c64"]["rps"]),
        ("server CPU per request, concurrency 64 (µs)", per_request),
        ("added time to first token p50, concurrency 1 (ms)",
         lambda c: added(c["ttft_c1"]["ttft_ms"].get("p50"), direct_ttft)),
        ("server CPU per chunk, 64 streams at 200 tokens/s (µs)", per_chunk),
        ("chunks received in that run", lambda c: c["chunks_c64"].get("frames")),
        ("errors in all of the above", errors),
    ]
    lines = ["| measure | " + " | ".join(names[k] for k in keys) + " |",
             "|---|" + "---:|" * len(keys)]
    for label, get in rows:
        lines.append(f"| {label} | " + " | ".join(fmt(get(columns[k])) for k in keys) + " |")
    lines.append(f"\nDirect to the fake in the same run (mean of a measurement before and after): "
                 f"p50 {fmt(direct_p50)} ms, p99 {fmt(direct_p99)} ms, first token p50 {fmt(direct_ttft)} ms.")
    return "\n".join(lines)
