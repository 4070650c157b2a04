"""`python -m bench.run --workers-only --quick` works end to end: two gateways
(1 and 2 workers) measured side by side, a table and a complete JSON. Speed is
not asserted here (a shared, noisy machine); docs/BENCHMARKS.md has numbers."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_workers_scenario_runs_both_worker_counts(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "bench.run", "--workers-only", "--quick", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "| measure | 1 worker | 2 workers |" in done.stdout
    (path,) = tmp_path.glob("bench-workers-*-quick.json")
    result = json.loads(path.read_text())
    for workers in ("1w", "2w"):
        run = result["results"][workers]
        assert run["throughput_c64"]["ok"] > 0
        assert run["streams"]["ok"] == result["plan"]["streams"] and run["streams"]["errors"] == 0
        # The same streams through the bare relay with as many workers: the floor beside it.
        relay = run["relay_streams"]
        assert relay["ok"] == result["plan"]["streams"] and relay["errors"] == 0
        assert relay["server_cpu_us_per_chunk"] > 0
    summary = result["results"]["summary"]
    assert summary["speedup"] is not None and summary["ttft_p99_ms_2w"] is not None
