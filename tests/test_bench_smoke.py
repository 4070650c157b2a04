"""The benchmark's CI smoke run: `bench/run.py --quick` works end to end.

It starts the fake upstream, the bare relay and the real gateway (auth and
metering on), runs every scenario with tiny loads and writes its JSON. Speed
is not asserted: CI machines are shared and noisy; docs/BENCHMARKS.md says
where real numbers come from.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SUMMARY_KEYS = {
    "added_p50_ms_c1", "added_p99_ms_c1", "added_p50_ms_c64", "added_p99_ms_c64",
    "direct_rps_c64", "relay_rps_c64", "gateway_rps_c64", "gateway_rps_c64_ollama",
    "gateway_cpu_us_per_request_c64", "ttft_added_p50_ms_c1", "ttft_added_p99_ms_c1",
    "cpu_us_per_chunk", "relay_cpu_us_per_chunk", "cpu_us_per_chunk_ollama",
    "cpu_us_per_chunk_streams", "streams", "streams_ok", "streams_errors", "rss_kib_per_stream",
    "tokenize_rps_c64_backend_usage", "tokenize_rps_c64_counted", "tokenize_added_p50_ms_c1", "targets",
}
SCENARIOS = {"setup", "latency_c1", "throughput_c64", "ttft_c1", "ttft_c64", "stream_chunks_c64",
             "stream_instant_c64", "stream_chunks_c64_ollama", "throughput_c64_ollama", "side_by_side",
             "streams", "tokenize"}


def test_quick_benchmark_run_writes_a_complete_result(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "bench/run.py", "--quick", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "| measure |" in done.stdout

    files = list(tmp_path.glob("bench-*-quick.json"))
    assert len(files) == 1
    result = json.loads(files[0].read_text())

    assert result["quick"] is True
    assert {"nproc", "cpu_model", "ram_gib", "python", "versions"} <= result["machine"].keys()
    assert len(result["git"]["commit"]) == 40
    assert SUMMARY_KEYS <= result["summary"].keys()
    assert SCENARIOS <= result["results"].keys()
    assert result["results"]["setup"]["auth"] is True
    # Every stream of the small stream test completed through the gateway,
    # and requests went through it at all (not how fast).
    assert result["summary"]["streams_ok"] == result["plan"]["streams"]
    assert result["results"]["throughput_c64"]["gateway"]["ok"] > 0
    assert result["results"]["stream_chunks_c64"]["gateway"]["frames"] > 0
    # The side-by-side table has both upstream flavours through the gateway.
    columns = result["results"]["side_by_side"]["columns"]
    assert {"privatai_vllm", "privatai_ollama"} <= columns.keys()
    assert all(columns[c]["chunks_c64"]["frames"] > 0 for c in ("privatai_vllm", "privatai_ollama"))
    assert "PrivatAI, Ollama kind" in done.stdout
