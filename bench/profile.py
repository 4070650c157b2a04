"""Profile the gateway under one benchmark load with py-spy.

    python -m bench.profile requests      # non-streaming POSTs, concurrency 64
    python -m bench.profile latency       # non-streaming POSTs, concurrency 1 (the added-latency path)
    python -m bench.profile streams       # 64 streams paced at 200 tokens/s
    python -m bench.profile many          # 1000 streams at 20 tokens/s
    python -m bench.profile ollama        # 64 streams from the Ollama (NDJSON) flavour

Starts the fake upstream and the gateway exactly as ``bench/run.py`` does,
runs the load while ``py-spy record`` samples the gateway process, and writes
a collapsed-stack file (py-spy's ``raw`` format, which flamegraph tools and
speedscope read) next to the benchmark results, then prints the top functions
by own and by inclusive time. Needs py-spy
(``pip install py-spy``) and permission to ptrace (root, or
``kernel.yama.ptrace_scope=0``).
"""
from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.run import RESULTS, Bench, Plan, chat_body


_LINE = re.compile(r":\d+\)$")


def top(collapsed: Path, n: int = 25) -> str:
    """Own and inclusive time share per function from py-spy's collapsed stacks."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        samples = int(count)
        total += samples
        # One entry per function, not per line.
        frames = [_LINE.sub(")", frame) for frame in stack.split(";")]
        own[frames[-1]] += samples
        for frame in set(frames):
            inclusive[frame] += samples
    total = max(1, total)
    lines = ["own time:"]
    lines += [f"{100 * c / total:5.1f}%  {frame}" for frame, c in own.most_common(n)]
    lines += ["", "inclusive time:"]
    lines += [f"{100 * c / total:5.1f}%  {frame}" for frame, c in inclusive.most_common(n)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n")[0])
    parser.add_argument("load", choices=["requests", "latency", "streams", "many", "ollama"])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--native", action="store_true", help="py-spy --native (C frames too)")
    parser.add_argument("--src", default=str(Path(__file__).resolve().parent.parent))
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        print("bench.profile: py-spy is not installed (pip install py-spy)", file=sys.stderr)
        return 2
    plan = Plan(use_wrk=False)
    args.quick = False
    bench = Bench(args, plan)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = RESULTS / f"profile-{args.load}-{stamp}"
    try:
        bench.start()
        pid = bench.gateway.proc.pid
        rate = ["--rate", "250"]
        spy = [py_spy, "record", "--pid", str(pid), "--duration", str(int(args.seconds)), *rate,
               "--nonblocking"] + (["--native"] if args.native else [])
        recorders = [subprocess.Popen(spy + ["--format", "raw", "--output", f"{base}.txt"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)]
        time.sleep(0.5)
        load_seconds = args.seconds + 1
        if args.load == "requests":
            result = bench.via.loadgen(chat_body("bench", tokens=plan.response_tokens),
                                       concurrency=plan.concurrency, duration=load_seconds)
        elif args.load == "latency":
            result = bench.via.loadgen(chat_body("bench", tokens=plan.response_tokens),
                                       concurrency=1, duration=load_seconds)
        elif args.load == "streams":
            result = bench.via.loadgen(chat_body("bench-chunks", stream=True, tokens=plan.chunk_tokens),
                                       concurrency=plan.concurrency, duration=load_seconds, stream=True)
        elif args.load == "ollama":
            result = bench.via.loadgen(chat_body("ollama-chunks", stream=True, tokens=plan.chunk_tokens),
                                       concurrency=plan.concurrency, duration=load_seconds, stream=True)
        else:
            result = bench.via.loadgen(chat_body("bench-paced", stream=True, tokens=plan.stream_tokens),
                                       concurrency=plan.streams, duration=load_seconds + 60, requests=1,
                                       ramp=plan.stream_ramp, stream=True, timeout=60)
        for recorder in recorders:
            recorder.wait(timeout=args.seconds + 30)
    finally:
        bench.stop()
        shutil.rmtree(bench.workdir, ignore_errors=True)
    print({k: result[k] for k in ("ok", "errors", "rps", "latency_ms", "frames")})
    collapsed = Path(f"{base}.txt")
    if collapsed.exists():
        print(f"\ncollapsed stacks: {collapsed}\n")
        print(top(collapsed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
