"""The benchmark: one command, one report.

    python -m bench.run            # the full run (about two minutes)
    python -m bench.run --quick    # a few seconds of tiny loads (CI smoke run)
    python -m bench.run --workers-only   # 1 and 2 gateway workers side by side (bench/workers.py)

It starts three kinds of process on 127.0.0.1, each in its own process so
they compete for the CPU as a real deployment would, not inside one event
loop: the fake upstream (``bench/fake_upstream.py``), the gateway with
production settings (``privatai serve``, one worker, API-key auth and usage
metering on, a generated backends.yaml pointing at the fake), and the load
generator (wrk for plain POSTs when installed, ``bench/loadgen.py`` for
everything else). Every scenario runs twice, against the fake directly and
through the gateway, so the report shows what the gateway adds.

The report is a Markdown table on stdout and a JSON file under
``bench/results/`` with the machine, the git commit, the settings and every
number. See ``docs/BENCHMARKS.md`` for how to read it.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import orjson
import psutil
import yaml

if __package__ in (None, ""):
    # `python bench/run.py` as well as `python -m bench.run`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import litellm, side_by_side  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
KEY_PATTERN = re.compile(r"\bprivat_[A-Za-z0-9_\-]+")

TARGETS = {
    "added_p50_ms_c1": 0.4,          # at most (issue 18)
    "gateway_rps_c64": 2000.0,       # at least
    "cpu_us_per_chunk": 45.0,        # at most: the bare relay's on the reference machine (issue 18)
    "streams_errors": 0,             # exactly
    "rss_kib_per_stream": 64.0,      # at most
}


@dataclass
class Plan:
    """How long and how hard each scenario runs."""

    latency_seconds: float = 5.0        # non-streaming, concurrency 1
    throughput_seconds: float = 5.0     # non-streaming, concurrency 64
    warmup_seconds: float = 1.0
    concurrency: int = 64
    response_tokens: int = 16           # tokens of a non-streaming answer
    ttft_seconds: float = 4.0
    ttft_rate: float = 200.0            # tokens/s of the stream whose first token is timed
    ttft_tokens: int = 4
    chunk_seconds: float = 5.0          # streams for the CPU-per-chunk figure
    chunk_rate: float = 200.0
    chunk_tokens: int = 200
    streams: int = 1000                 # concurrent long streams
    stream_tokens: int = 200
    stream_rate: float = 20.0
    stream_ramp: float = 2.0            # seconds over which the streams open
    tokenize_prompt_chars: int = 16000  # prompt of the counted-by-us scenario
    tokenize_seconds: float = 3.0
    use_wrk: bool = True
    settle_seconds: float = 0.5         # pause before measuring idle memory


# No warm-up runs in the smoke run: the set-up's check request already warmed
# the path, and a warm-up is one more load-generator process per scenario.
QUICK = Plan(latency_seconds=0.3, throughput_seconds=0.3, warmup_seconds=0.0, concurrency=8,
             ttft_seconds=0.3, chunk_seconds=0.3, chunk_tokens=20, streams=20, stream_tokens=6,
             stream_rate=20.0, stream_ramp=0.1, tokenize_prompt_chars=2000, tokenize_seconds=0.3,
             use_wrk=False, settle_seconds=0.1)


# --------------------------------------------------------------------------
# processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def raise_nofile() -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def wait_http(port: int, path: str, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    """Until GET path answers 200 (or the process dies, or time is up)."""
    deadline = time.monotonic() + timeout
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode}")
        with contextlib.suppress(OSError):
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(request)
                if sock.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        time.sleep(0.05)
    raise RuntimeError(f"nothing answered on port {port}{path} within {timeout} s")


class Process:
    """A child process with its output in a file, stopped with SIGTERM."""

    def __init__(self, name: str, argv: list[str], workdir: Path, cwd: Path,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log_path = workdir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, cwd=cwd,
                                     env={**os.environ, **(env or {})})
        self.ps = psutil.Process(self.proc.pid)

    def cpu_seconds(self) -> float:
        """User and system CPU of the process and of its living children (a
        server that runs its worker in a child, as LiteLLM's proxy may)."""
        total = 0.0
        for process in [self.ps, *self.ps.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                total += times.user + times.system
        return total

    def rss(self) -> int:
        return self.ps.memory_info().rss

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


class Meter:
    """CPU seconds a process used between ``start`` and ``stop``."""

    def __init__(self, *processes: Process) -> None:
        self.processes = processes

    @contextlib.contextmanager
    def measure(self) -> Iterator[dict[str, float]]:
        out: dict[str, float] = {}
        before = [p.cpu_seconds() for p in self.processes]
        started = time.perf_counter()
        yield out
        out["wall_s"] = time.perf_counter() - started
        for process, cpu in zip(self.processes, before):
            out[f"{process.name}_cpu_s"] = process.cpu_seconds() - cpu


# --------------------------------------------------------------------------
# load


class Load:
    """Runs the load generator against one target (the fake, or the gateway)."""

    def __init__(self, port: int, headers: list[str], workdir: Path, use_wrk: bool,
                 meter: "Meter") -> None:
        self.meter = meter
        self.port = port
        self.headers = headers
        self.workdir = workdir
        self.wrk = shutil.which("wrk") if use_wrk else None

    def loadgen(self, body: dict[str, Any], *, concurrency: int, duration: float, warmup: float = 0.0,
                stream: bool = False, requests: int | None = None, ramp: float = 0.0,
                timeout: float = 60.0, on_plateau: Any = None) -> dict[str, Any]:
        argv = [sys.executable, "-m", "bench.loadgen", "--port", str(self.port),
                "--body", orjson.dumps(body).decode(), "--concurrency", str(concurrency),
                "--duration", str(duration), "--warmup", str(warmup), "--ramp", str(ramp),
                "--timeout", str(timeout)]
        for header in self.headers:
            argv += ["--header", header]
        if stream:
            argv.append("--stream")
        if requests is not None:
            argv += ["--requests", str(requests)]
        if on_plateau is not None:
            argv.append("--plateau-signal")
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
        assert proc.stdout is not None
        result: dict[str, Any] | None = None

        limit = warmup + duration + ramp + timeout + 30
        timer = threading.Timer(limit, proc.kill)
        timer.start()
        try:
            for line in proc.stdout:
                if line.strip() == b"PLATEAU" and on_plateau is not None:
                    on_plateau()
                elif line.startswith(b"{"):
                    result = orjson.loads(line)
            proc.wait()
        finally:
            timer.cancel()
        if result is None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise RuntimeError(f"load generator failed (exit {proc.returncode}): {err[-2000:]}")
        result["client"] = "loadgen"
        return result

    def requests(self, body: dict[str, Any], *, concurrency: int, duration: float,
                 warmup: float) -> dict[str, Any]:
        """Non-streaming POSTs: wrk when available, else the Python load generator.

        The warmup is a run of its own, so that the CPU measured (and kept in
        the result) belongs to the measured requests only."""
        if warmup:
            if self.wrk is None:
                self.loadgen(body, concurrency=concurrency, duration=warmup)
            else:
                self._wrk(body, concurrency, warmup)
        with self.meter.measure() as cpu:
            if self.wrk is None:
                result = self.loadgen(body, concurrency=concurrency, duration=duration)
            else:
                result = self._wrk(body, concurrency, duration)
        result.update({k: round(v, 3) for k, v in cpu.items()})
        return result

    def _wrk(self, body: dict[str, Any], concurrency: int, duration: float) -> dict[str, Any]:
        script = self.workdir / "post.lua"
        headers = "".join(f'wrk.headers["{h.split(":", 1)[0]}"] = "{h.split(":", 1)[1].strip()}"\n'
                          for h in self.headers)
        script.write_text(WRK_SCRIPT.replace("--HEADERS--", headers)
                          .replace("--BODY--", orjson.dumps(body).decode().replace("\\", "\\\\")
                                   .replace("'", "\\'")))
        seconds = max(1, int(round(duration)))
        argv = [self.wrk, "-t1", f"-c{concurrency}", f"-d{seconds}s", "--timeout", "10s",
                "-s", str(script), f"http://127.0.0.1:{self.port}/v1/chat/completions"]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, check=True).stdout
        line = next(line for line in out.splitlines() if line.startswith("{"))
        raw = orjson.loads(line)
        errors = sum(raw["errors"].values())
        ok = raw["requests"] - raw["errors"]["status"]
        us = raw["latency_us"]
        return {"concurrency": concurrency, "ok": ok, "errors": errors,
                "error_kinds": {k: v for k, v in raw["errors"].items() if v},
                "elapsed_s": raw["duration_us"] / 1e6, "rps": round(ok / (raw["duration_us"] / 1e6), 1),
                "latency_ms": {k: round(v / 1000, 3) for k, v in us.items()},
                "client": "wrk"}


WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = '--BODY--'
wrk.headers["Content-Type"] = "application/json"
--HEADERS--
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"mean":%d}}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean))
end
"""


def chat_body(model: str, *, stream: bool = False, tokens: int | None = None,
              prompt: str = "Say hello to the benchmark.") -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": prompt}]}
    if tokens is not None:
        body["max_tokens"] = tokens
    if stream:
        body["stream"] = True
    return body


# --------------------------------------------------------------------------
# the run


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {}
    for package in ("sanic", "uvloop", "aiohttp", "orjson", "msgspec", "httptools", "ollama",
                    "tiktoken", "psutil"):
        with contextlib.suppress(Exception):
            from importlib import metadata
            versions[package] = metadata.version(package)
    wrk = shutil.which("wrk")
    if wrk:
        with contextlib.suppress(Exception):
            out = subprocess.run([wrk, "--version"], capture_output=True, text=True, timeout=5)
            versions["wrk"] = (out.stdout or out.stderr).split()[1]
    return {
        "hostname_hash": format(abs(hash(platform.node())) % 10**6, "06d"),
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def git_info(src: Path) -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(src), *args], capture_output=True, text=True,
                              timeout=10).stdout.strip()
    return {"commit": git("rev-parse", "HEAD"), "branch": git("rev-parse", "--abbrev-ref", "HEAD"),
            "subject": git("log", "-1", "--format=%s"), "dirty": bool(git("status", "--porcelain"))}


def write_config(path: Path, fake_port: int, gateway_port: int, plan: Plan, log_level: str) -> None:
    url = f"http://127.0.0.1:{fake_port}"
    chunk = f"bench@{plan.chunk_rate:g}"
    config = {
        "default_model": "bench",
        "backends": [
            {"name": "fake-vllm", "kind": "vllm", "url": url,
             # Enough slots for every stream of the largest scenario: the
             # benchmark measures the gateway, not the router's queue.
             "max_concurrency": plan.streams + 64,
             "models": ["bench",
                        {"name": "bench-ttft", "upstream": f"bench@{plan.ttft_rate:g}"},
                        {"name": "bench-chunks", "upstream": chunk},
                        {"name": "bench-paced", "upstream": f"bench@{plan.stream_rate:g}"},
                        {"name": "bench-nousage", "upstream": "bench+nousage"}]},
            {"name": "fake-ollama", "kind": "ollama", "url": url,
             "max_concurrency": plan.streams + 64,
             "models": [{"name": "ollama-bench", "upstream": "bench"},
                        {"name": "ollama-ttft", "upstream": f"bench@{plan.ttft_rate:g}"},
                        {"name": "ollama-chunks", "upstream": chunk}]},
        ],
        "server": {"host": "127.0.0.1", "port": gateway_port},
        "store": {"path": str(path.parent / "privatai.db")},
        "logging": {"level": log_level},
        "routing": {"max_queue": max(1000, plan.streams * 2)},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def create_key(src: Path, config: Path, workdir: Path) -> str | None:
    """An account and a key through the admin CLI, as an operator makes them."""
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "privatai", *args, "--config", str(config)],
                              capture_output=True, text=True, timeout=60, cwd=src)
    created = cli("accounts", "create", "bench")
    if created.returncode != 0:
        (workdir / "cli.log").write_text(created.stdout + created.stderr)
        return None
    made = cli("keys", "create", "bench", "--label", "benchmark")
    match = KEY_PATTERN.search(made.stdout)
    return match.group(0) if match else None


def pct(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else round(a / b, 2)


def diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 3)


class Bench:
    def __init__(self, args: argparse.Namespace, plan: Plan) -> None:
        self.args = args
        self.plan = plan
        self.src = Path(args.src).resolve()
        self.workdir = Path(tempfile.mkdtemp(prefix="privatai-bench-"))
        self.results: dict[str, Any] = {}
        self.notes: list[str] = []

    def log(self, text: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    # -- setup -----------------------------------------------------------------

    def start(self) -> None:
        nofile = raise_nofile()
        self.fake_port = free_port()
        self.fake = Process("fake", [sys.executable, "-m", "bench.fake_upstream", "--port", str(self.fake_port),
                                     "--tokens", str(self.plan.response_tokens)], self.workdir, ROOT)
        wait_http(self.fake_port, "/health", 15, self.fake.proc)
        self.relay_port = free_port()
        self.relay = Process("relay", [sys.executable, "-m", "bench.relay", "--port", str(self.relay_port),
                                       "--upstream", f"http://127.0.0.1:{self.fake_port}"], self.workdir, ROOT)
        self.gateway_port = free_port()
        self.config_path = self.workdir / "backends.yaml"
        write_config(self.config_path, self.fake_port, self.gateway_port, self.plan, self.args.log_level)
        key = create_key(self.src, self.config_path, self.workdir)
        self.auth = key is not None
        if not self.auth:
            self.notes.append("auth off: the admin CLI could not create a key (see cli.log)")
        self.gateway = Process("gateway", [sys.executable, "-m", "privatai", "serve", "--config",
                                           str(self.config_path)], self.workdir, self.src)
        wait_http(self.gateway_port, "/healthz", 60, self.gateway.proc)
        wait_http(self.relay_port, "/healthz", 60, self.relay.proc)
        headers = [f"Authorization: Bearer {key}"] if key else []
        self.litellm_load: Load | None = None
        processes = [self.gateway, self.fake, self.relay]
        if getattr(self.args, "with_litellm", False):
            processes.append(self.start_litellm())
        self.meter = Meter(*processes)
        if getattr(self.args, "with_litellm", False):
            self.litellm_load = Load(self.litellm_port, [f"Authorization: Bearer {litellm.MASTER_KEY}"],
                                     self.workdir, self.plan.use_wrk, self.meter)
        self.direct = Load(self.fake_port, [], self.workdir, self.plan.use_wrk, self.meter)
        self.floor = Load(self.relay_port, [], self.workdir, self.plan.use_wrk, self.meter)
        self.via = Load(self.gateway_port, headers, self.workdir, self.plan.use_wrk, self.meter)
        limits = self.gateway.ps.rlimit(psutil.RLIMIT_NOFILE)
        self.results["setup"] = {
            "auth": self.auth, "metering": True, "workers": 1, "log_level": self.args.log_level,
            "runner_nofile": list(nofile), "gateway_nofile": list(limits),
            "gateway_nofile_enough": limits[0] >= 2 * self.plan.streams + 100,
            "load_generator": "wrk" if self.direct.wrk else "bench/loadgen.py",
        }
        if not self.results["setup"]["gateway_nofile_enough"]:
            self.notes.append(f"gateway RLIMIT_NOFILE {limits[0]} is below 2 x {self.plan.streams} streams")
        # Prove the path works (and warm it) before measuring anything.
        check = self.via.loadgen(chat_body("bench", tokens=4), concurrency=1, duration=0.3)
        if check["ok"] == 0:
            raise RuntimeError(f"the gateway does not answer chat requests: {check}\n{self.gateway.output()[-3000:]}")

    def start_litellm(self) -> Process:
        command = litellm.install(self.log)
        config = self.workdir / "litellm.yaml"
        litellm.write_config(config, self.fake_port, side_by_side.litellm_models(self.plan))
        self.litellm_port = free_port()
        self.litellm = Process("litellm", litellm.argv(command, config, self.litellm_port), self.workdir,
                               self.workdir, env=litellm.env())
        # Its start-up takes minutes on a loaded 2-core machine.
        wait_http(self.litellm_port, "/health/liveliness", 400, self.litellm.proc)
        return self.litellm

    def stop(self) -> None:
        for process in ("gateway", "relay", "fake", "litellm"):
            if hasattr(self, process):
                getattr(self, process).stop()

    # -- scenarios ---------------------------------------------------------------

    def pair(self, name: str, run: Any, relay: bool = True) -> dict[str, Any]:
        """Run one scenario directly against the fake, through the bare relay
        (the floor), then through the gateway."""
        out: dict[str, Any] = {}
        sides = [("direct", self.direct)] + ([("relay", self.floor)] if relay else []) + [("gateway", self.via)]
        for side, load in sides:
            self.log(f"{name}: {side}")
            with self.meter.measure() as cpu:
                result = run(load, side)
            for key, value in cpu.items():
                result.setdefault(key, round(value, 3))
            out[side] = result
        self.results[name] = out
        return out

    def non_streaming(self) -> None:
        p = self.plan
        self.pair("latency_c1", lambda load, side: load.requests(
            chat_body("bench", tokens=p.response_tokens), concurrency=1,
            duration=p.latency_seconds, warmup=p.warmup_seconds))
        self.pair("throughput_c64", lambda load, side: load.requests(
            chat_body("bench", tokens=p.response_tokens), concurrency=p.concurrency,
            duration=p.throughput_seconds, warmup=p.warmup_seconds))

    def ttft(self) -> None:
        p = self.plan
        for concurrency, name in ((1, "ttft_c1"), (p.concurrency, "ttft_c64")):
            self.pair(name, lambda load, side, c=concurrency: load.loadgen(
                chat_body("bench-ttft" if side == "gateway" else f"bench@{p.ttft_rate:g}",
                          stream=True, tokens=p.ttft_tokens),
                concurrency=c, duration=p.ttft_seconds, warmup=p.warmup_seconds / 2, stream=True))

    def chunks(self) -> None:
        p = self.plan
        model = {"direct": f"bench@{p.chunk_rate:g}", "relay": f"bench@{p.chunk_rate:g}",
                 "gateway": "bench-chunks"}
        self.pair("stream_chunks_c64", lambda load, side: load.loadgen(
            chat_body(model[side], stream=True, tokens=p.chunk_tokens), concurrency=p.concurrency,
            duration=p.chunk_seconds, stream=True))
        # Same, instant: every chunk arrives in one read from upstream.
        self.pair("stream_instant_c64", lambda load, side: load.loadgen(
            chat_body("bench", stream=True, tokens=p.chunk_tokens), concurrency=p.concurrency,
            duration=p.chunk_seconds, stream=True))

    def many_streams(self) -> None:
        p = self.plan
        seconds = p.stream_tokens / p.stream_rate
        paced = f"bench@{p.stream_rate:g}"
        for side, load, model, process in (("direct", self.direct, paced, self.fake),
                                           ("relay", self.floor, paced, self.relay),
                                           ("gateway", self.via, "bench-paced", self.gateway)):
            self.log(f"streams_{p.streams}: {side} ({p.streams} x {p.stream_tokens} tokens at "
                     f"{p.stream_rate:g}/s)")
            time.sleep(p.settle_seconds)
            idle = process.rss()
            samples: list[tuple[float, int]] = []
            connections: list[int] = []
            plateau: list[float] = []
            stop = threading.Event()

            def sample() -> None:
                # RSS all along; the figure is taken from the samples after
                # every stream got its first frame (the plateau), while the
                # streams last.
                while not stop.is_set():
                    with contextlib.suppress(psutil.Error):
                        samples.append((time.monotonic(), process.rss()))
                        if plateau:
                            connections.append(len(process.ps.net_connections(kind="tcp")))
                    stop.wait(0.2)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            try:
                with self.meter.measure() as cpu:
                    result = load.loadgen(chat_body(model, stream=True, tokens=p.stream_tokens),
                                          concurrency=p.streams, duration=seconds * 3 + 30, requests=1,
                                          ramp=p.stream_ramp, stream=True, timeout=seconds * 3 + 30,
                                          on_plateau=lambda: plateau.append(time.monotonic()))
            finally:
                stop.set()
                sampler.join(timeout=5)
            result.update({k: round(v, 3) for k, v in cpu.items()})
            if plateau:
                # While the streams last: from the plateau for at most 60 % of a stream's time.
                window = [rss for at, rss in samples if plateau[0] <= at <= plateau[0] + seconds * 0.6]
                peak = max(window) if window else None
            else:
                peak = None
            highest = max((rss for _, rss in samples), default=None)
            result.update({
                "plateau_reached": bool(plateau),
                "rss_idle_mib": round(idle / 2**20, 2),
                "rss_plateau_mib": round(peak / 2**20, 2) if peak else None,
                "rss_max_mib": round(highest / 2**20, 2) if highest else None,
                "rss_kib_per_stream": round((peak - idle) / 1024 / p.streams, 2) if peak else None,
                "open_tcp_connections_max": max(connections) if connections else None,
            })
            self.results[f"streams_{side}"] = result
        self.results["streams"] = {side: self.results.pop(f"streams_{side}")
                                   for side in ("direct", "relay", "gateway")}

    def tokenizing(self) -> None:
        """The path where the backend reports no usage and we count with tiktoken."""
        p = self.plan
        words = ("privacy first gateway benchmark tokens counted locally with tiktoken "
                 "when the backend reports no usage ")
        prompt = (words * (p.tokenize_prompt_chars // len(words) + 1))[:p.tokenize_prompt_chars]
        out: dict[str, Any] = {}
        for name, model in (("backend_usage", "bench"), ("counted", "bench-nousage")):
            self.log(f"tokenize: {name}")
            for concurrency in (1, p.concurrency):
                result = self.via.requests(chat_body(model, tokens=p.response_tokens, prompt=prompt),
                                           concurrency=concurrency, duration=p.tokenize_seconds,
                                           warmup=p.warmup_seconds / 2)
                out[f"{name}_c{1 if concurrency == 1 else 64}"] = result
        out["prompt_chars"] = p.tokenize_prompt_chars
        self.results["tokenize"] = out

    # -- report ------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        r = self.results
        p = self.plan

        def lat(name: str, side: str, q: str) -> float | None:
            return r[name][side]["latency_ms"].get(q)

        def ttft(name: str, side: str, q: str) -> float | None:
            return r[name][side]["ttft_ms"].get(q)

        def per_chunk(name: str, side: str) -> float | None:
            entry = r[name].get(side)
            if not entry or not entry.get("frames"):
                return None
            return round(entry[f"{side}_cpu_s"] / entry["frames"] * 1e6, 2)

        def per_request(name: str, side: str) -> float | None:
            entry = r[name][side]
            return round(entry[f"{side}_cpu_s"] / entry["ok"] * 1e6, 1) if entry["ok"] else None

        s: dict[str, Any] = {
            "added_p50_ms_c1": diff(lat("latency_c1", "gateway", "p50"), lat("latency_c1", "direct", "p50")),
            "added_p99_ms_c1": diff(lat("latency_c1", "gateway", "p99"), lat("latency_c1", "direct", "p99")),
            "added_p50_ms_c64": diff(lat("throughput_c64", "gateway", "p50"), lat("throughput_c64", "direct", "p50")),
            "added_p99_ms_c64": diff(lat("throughput_c64", "gateway", "p99"), lat("throughput_c64", "direct", "p99")),
            "relay_added_p50_ms_c1": diff(lat("latency_c1", "relay", "p50"), lat("latency_c1", "direct", "p50")),
            "direct_rps_c64": r["throughput_c64"]["direct"]["rps"],
            "relay_rps_c64": r["throughput_c64"]["relay"]["rps"],
            "gateway_rps_c64": r["throughput_c64"]["gateway"]["rps"],
            "gateway_rps_c64_ollama": r["throughput_c64_ollama"]["gateway"]["rps"],
            "gateway_vs_relay_rps_c64": pct(r["throughput_c64"]["gateway"]["rps"], r["throughput_c64"]["relay"]["rps"]),
            "gateway_cpu_us_per_request_c1": per_request("latency_c1", "gateway"),
            "gateway_cpu_us_per_request_c64": per_request("throughput_c64", "gateway"),
            "relay_cpu_us_per_request_c64": per_request("throughput_c64", "relay"),
            "ttft_added_p50_ms_c1": diff(ttft("ttft_c1", "gateway", "p50"), ttft("ttft_c1", "direct", "p50")),
            "ttft_added_p99_ms_c1": diff(ttft("ttft_c1", "gateway", "p99"), ttft("ttft_c1", "direct", "p99")),
            "ttft_added_p50_ms_c64": diff(ttft("ttft_c64", "gateway", "p50"), ttft("ttft_c64", "direct", "p50")),
            "cpu_us_per_chunk": per_chunk("stream_chunks_c64", "gateway"),
            "relay_cpu_us_per_chunk": per_chunk("stream_chunks_c64", "relay"),
            "cpu_us_per_chunk_instant": per_chunk("stream_instant_c64", "gateway"),
            "cpu_us_per_chunk_ollama": per_chunk("stream_chunks_c64_ollama", "gateway"),
            "cpu_us_per_chunk_streams": per_chunk("streams", "gateway"),
            "relay_cpu_us_per_chunk_streams": per_chunk("streams", "relay"),
            "streams": p.streams,
            "streams_ok": r["streams"]["gateway"]["ok"],
            "streams_errors": r["streams"]["gateway"]["errors"],
            "streams_direct_errors": r["streams"]["direct"]["errors"],
            "streams_relay_errors": r["streams"]["relay"]["errors"],
            "rss_kib_per_stream": r["streams"]["gateway"]["rss_kib_per_stream"],
            "relay_rss_kib_per_stream": r["streams"]["relay"]["rss_kib_per_stream"],
            "tokenize_rps_c64_backend_usage": r["tokenize"]["backend_usage_c64"]["rps"],
            "tokenize_rps_c64_counted": r["tokenize"]["counted_c64"]["rps"],
            "tokenize_added_p50_ms_c1": diff(r["tokenize"]["counted_c1"]["latency_ms"]["p50"],
                                             r["tokenize"]["backend_usage_c1"]["latency_ms"]["p50"]),
        }
        s["targets"] = {key: _check(s[key], TARGETS[key], "min" if key == "gateway_rps_c64" else "max")
                        for key in TARGETS}
        return s

    def report(self, summary: dict[str, Any]) -> str:
        r = self.results
        p = self.plan
        t = summary["targets"]
        c = p.concurrency

        def mark(key: str, text: str) -> str:
            return f"{text}: " + {True: "met", False: "**missed**", None: "n/a"}[t[key]]

        rows: list[list[str]] = []

        def row(label: str, direct: Any, relay: Any, gateway: Any, compare: str = "", target: str = "") -> None:
            rows.append([label, fmt(direct), fmt(relay), fmt(gateway), compare, target])

        def sides(name: str, *path: str) -> tuple[Any, Any, Any]:
            def get(side: str) -> Any:
                value: Any = r[name].get(side)
                for key in path:
                    value = None if value is None else value.get(key)
                return value
            return get("direct"), get("relay"), get("gateway")

        for name, label in (("latency_c1", "concurrency 1"), ("throughput_c64", f"concurrency {c}")):
            for q in ("p50", "p99"):
                d, f, g = sides(name, "latency_ms", q)
                target = mark("added_p50_ms_c1", "added ≤ 0.4 ms") if name == "latency_c1" and q == "p50" else ""
                row(f"non-streaming latency {q}, {label} (ms)", d, f, g, f"+{fmt(diff(g, d))} ms", target)
        d, f, g = sides("throughput_c64", "rps")
        row(f"non-streaming throughput, concurrency {c} (req/s)", d, f, g,
            f"{fmt(pct(g, f))}× relay, {fmt(pct(g, d))}× direct", mark("gateway_rps_c64", "≥ 2,000"))
        og = r["throughput_c64_ollama"]["gateway"]["rps"]
        row("same, Ollama upstream (req/s)", None, None, og, f"{fmt(pct(og, f))}× relay")
        f, g = summary["relay_cpu_us_per_request_c64"], summary["gateway_cpu_us_per_request_c64"]
        row(f"server CPU per request, concurrency {c} (µs)", None, f, g, f"{fmt(pct(g, f))}× relay")
        errors = [sum(r[n][side]["errors"] for n in ("latency_c1", "throughput_c64")) for side in ("direct", "relay", "gateway")]
        row("errors in the above", *errors)
        for name, label in (("ttft_c1", "concurrency 1"), ("ttft_c64", f"concurrency {c}")):
            for q in ("p50", "p99"):
                d, f, g = sides(name, "ttft_ms", q)
                row(f"time to first token {q}, {label} (ms)", d, f, g, f"+{fmt(diff(g, d))} ms")
        for name, label in (("stream_chunks_c64", f"{c} streams paced at {p.chunk_rate:g} tokens/s"),
                            ("stream_instant_c64", f"{c} streams, instant upstream"),
                            ("stream_chunks_c64_ollama", f"{c} streams, Ollama upstream, {p.chunk_rate:g} tokens/s")):
            f = None
            if "relay" in r[name] and r[name]["relay"].get("frames"):
                f = round(r[name]["relay"]["relay_cpu_s"] / r[name]["relay"]["frames"] * 1e6, 2)
            g = r[name]["gateway"]
            per = round(g["gateway_cpu_s"] / g["frames"] * 1e6, 2) if g.get("frames") else None
            target = mark("cpu_us_per_chunk", "≤ 45 µs") if name == "stream_chunks_c64" else ""
            row(f"server CPU per chunk, {label} (µs)", None, f, per,
                f"{fmt(pct(per, f))}× relay; {fmt(g.get('frames'))} chunks", target)
        n = f"{p.streams} streams × {p.stream_tokens} tokens at {p.stream_rate:g}/s"
        row(f"{n}: completed", *sides("streams", "ok"))
        row(f"{n}: errors", *sides("streams", "errors"), "", mark("streams_errors", "0"))
        g = r["streams"]["gateway"]
        row(f"{n}: resident memory per open stream (KiB)", *sides("streams", "rss_kib_per_stream"),
            f"gateway RSS {fmt(g['rss_idle_mib'])} → {fmt(g['rss_plateau_mib'])} MiB",
            mark("rss_kib_per_stream", "≤ 64 KiB"))
        row(f"{n}: server CPU per chunk (µs)", None, summary["relay_cpu_us_per_chunk_streams"],
            summary["cpu_us_per_chunk_streams"],
            f"{fmt(pct(summary['cpu_us_per_chunk_streams'], summary['relay_cpu_us_per_chunk_streams']))}× relay")
        row(f"{n}: time to first token p99 (ms)", *sides("streams", "ttft_ms", "p99"))
        tk = r["tokenize"]
        row(f"no usage from the backend, {tk['prompt_chars']:,}-char prompt, p50 at concurrency 1 (ms): "
            "with usage → counted", tk["backend_usage_c1"]["latency_ms"]["p50"], None,
            tk["counted_c1"]["latency_ms"]["p50"], f"+{fmt(summary['tokenize_added_p50_ms_c1'])} ms to count")
        row(f"same, throughput at concurrency {c} (req/s): with usage → counted",
            tk["backend_usage_c64"]["rps"], None, tk["counted_c64"]["rps"],
            f"{fmt(pct(tk['counted_c64']['rps'], tk['backend_usage_c64']['rps']))}×")
        lines = ["| measure | direct to fake | bare relay (floor) | PrivatAI gateway | gateway vs others | target |",
                 "|---|---:|---:|---:|---|---|"]
        lines += ["| " + " | ".join(cells) + " |" for cells in rows]
        return "\n".join(lines)

    def run(self) -> dict[str, Any]:
        started = time.time()
        machine_info = machine()
        try:
            self.start()
            self.non_streaming()
            self.ttft()
            self.chunks()
            self.results["side_by_side"] = side_by_side.run(self)
            # The main table's Ollama rows are the side-by-side table's measurements.
            ollama = self.results["side_by_side"]["columns"]["privatai_ollama"]
            self.results["stream_chunks_c64_ollama"] = {"gateway": ollama["chunks_c64"]}
            self.results["throughput_c64_ollama"] = {"gateway": ollama["throughput_c64"]}
            self.many_streams()
            self.tokenizing()
        except BaseException:
            self.log(f"failed; logs in {self.workdir}")
            raise
        finally:
            self.stop()
        summary = self.summary()
        gateway_log = self.gateway.output()
        if "Traceback" in gateway_log or " ERROR " in gateway_log:
            self.notes.append("the gateway logged errors during the run (see gateway.log)")
        document = {
            "schema": 1,
            "started": dt.datetime.fromtimestamp(started, dt.timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(time.time() - started, 1),
            "quick": self.args.quick,
            "machine": machine_info,
            "git": git_info(self.src),
            "plan": asdict(self.plan),
            "targets": TARGETS,
            "summary": summary,
            "results": self.results,
            "notes": self.notes,
        }
        document["table"] = self.report(summary)
        document["side_by_side_table"] = side_by_side.table(self.results["side_by_side"], fmt)
        return document


def fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.3f}".rstrip("0").rstrip(".") if abs(v) < 100 else f"{v:,.0f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def _check(value: float | None, target: float, kind: str) -> bool | None:
    if value is None:
        return None
    return value <= target if kind == "max" else value >= target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds of tiny loads (CI smoke run)")
    parser.add_argument("--out", default=str(RESULTS), help="directory for the JSON result")
    parser.add_argument("--src", default=str(ROOT), help="checkout whose gateway is measured")
    parser.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="gateway log level; WARNING leaves out the one-line access log (default)")
    parser.add_argument("--no-wrk", action="store_true", help="use bench/loadgen.py even if wrk is installed")
    parser.add_argument("--streams", type=int, help="concurrent long streams (default 1000)")
    parser.add_argument("--workers-only", action="store_true",
                        help="only the workers scenario: 1 and 2 gateway workers side by side (bench/workers.py)")
    parser.add_argument("--with-litellm", action="store_true",
                        help="also measure LiteLLM's proxy (installed once into its own venv, see bench/litellm.py)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the work directory (config, database, process logs) after a successful run")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else Plan()
    if args.no_wrk:
        plan.use_wrk = False
    if args.streams:
        plan.streams = args.streams
    if plan.use_wrk and not shutil.which("wrk"):
        print("bench: wrk is not installed (apt-get install wrk); using bench/loadgen.py for plain POSTs",
              file=sys.stderr)
    if args.workers_only:
        return run_workers(args, plan)
    bench = Bench(args, plan)
    document = bench.run()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = out / f"bench-{stamp}{'-quick' if args.quick else ''}.json"
    path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
    m = document["machine"]
    print(f"\nPrivatAI benchmark, {document['started']}, commit {document['git']['commit'][:10]}"
          f"{' (dirty)' if document['git']['dirty'] else ''}{' QUICK' if args.quick else ''}")
    print(f"{m['nproc']} × {m['cpu_model']}, {m['ram_gib']} GiB, Python {m['python']}, "
          f"load average at start {m['load_average_at_start']}; gateway: 1 worker, "
          f"auth {'on' if bench.auth else 'OFF'}, metering on, log level {args.log_level}\n")
    print(document["table"])
    print("\nSide by side (same fake upstream, same run):\n")
    print(document["side_by_side_table"])
    for note in document["notes"]:
        print(f"\nnote: {note}")
    print(f"\nresults: {path}")
    if args.keep:
        print(f"work directory: {bench.workdir}")
    else:
        shutil.rmtree(bench.workdir, ignore_errors=True)
    # The full run ends with the workers scenario; the CI smoke run leaves it out.
    return 0 if args.quick else run_workers(args, plan)


def run_workers(args: argparse.Namespace, plan: Plan) -> int:
    """``--workers-only``: the scenario of bench/workers.py, its table and JSON."""
    from bench import workers

    workdir = Path(tempfile.mkdtemp(prefix="privatai-bench-workers-"))
    started = time.time()
    machine_info = machine()
    results = workers.run(workdir, Path(args.src).resolve(), plan, args.log_level,
                          lambda text: print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr,
                                             flush=True))
    document = {"schema": 1, "scenario": "workers", "quick": args.quick, "machine": machine_info,
                "git": git_info(Path(args.src).resolve()), "plan": asdict(plan),
                "seconds": round(time.time() - started, 1), "results": results,
                "table": workers.table(results, plan)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"bench-workers-{time.strftime('%Y%m%d-%H%M%S')}{'-quick' if args.quick else ''}.json"
    path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
    print(f"\nPrivatAI workers benchmark, commit {document['git']['commit'][:10]}, {machine_info['nproc']} CPUs, "
          f"load average at start {machine_info['load_average_at_start']}\n")
    print(document["table"])
    print(f"\nresults: {path}")
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
