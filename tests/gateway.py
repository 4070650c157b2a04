"""Run the real gateway (`python -m privatai serve`) on a real socket for tests."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import httpx
import yaml

from tests.fakes import FAKES, FakeBackend

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def embedded_backend(**overrides: Any) -> dict[str, Any]:
    backend = {"name": "embedded", "kind": "embedded", "models": ["smollm2-135m"],
               "n_ctx": 2048, "n_threads": 1, "max_concurrency": 4}
    backend.update(overrides)
    return backend


class Gateway:
    """A gateway process with its own config, database and captured output."""

    def __init__(self, workdir: Path, config: dict[str, Any], env: dict[str, str] | None = None,
                 launcher: list[str] | None = None) -> None:
        self.workdir = workdir
        # How `privatai serve ...` is started (e.g. inside a sandbox).
        self.launcher = launcher or [sys.executable, "-m", "privatai"]
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        config = dict(config)
        config.setdefault("store", {}).setdefault("path", str(workdir / "privatai.db"))
        server = config.setdefault("server", {})
        server.update({"host": "127.0.0.1", "port": self.port})
        self.config = config
        self.config_path = workdir / "backends.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.output_path = workdir / "gateway.log"
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a `privatai` subcommand against this gateway's config."""
        return subprocess.run([sys.executable, "-m", "privatai", *args, "--config", str(self.config_path)],
                              capture_output=True, text=True, timeout=120, cwd=ROOT, env=self.env,
                              check=check)

    def create_key(self, account: str = "test", *extra: str) -> str:
        """A fresh API key for ``account`` (created if missing), via the real CLI."""
        self.cli("accounts", "create", account, check=False)
        return self.cli("keys", "create", account, *extra).stdout.strip()

    def start(self, timeout: float = 120.0) -> "Gateway":
        out = self.output_path.open("ab")
        self.proc = subprocess.Popen(
            [*self.launcher, "serve", "--config", str(self.config_path)],
            stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"gateway did not start:\n{self.output()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        self.proc = None
        return code

    def output(self) -> str:
        return self.output_path.read_text(errors="replace") if self.output_path.exists() else ""

    def __enter__(self) -> "Gateway":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


UPSTREAM_KEY = "sk-upstream-secret"


@contextmanager
def gateway_on_fake(kind: str, workdir: Path, *, server: dict[str, Any] | None = None
                    ) -> Iterator[tuple[FakeBackend, Gateway, str]]:
    """A fake backend of ``kind`` serving ``chat-model`` (upstream ``fake-model``)
    behind a running gateway, and an API key for it. The ``openai`` kind's
    fake wants :data:`UPSTREAM_KEY`, which the gateway reads from its env."""
    fake = FAKES[kind](api_key=UPSTREAM_KEY) if kind == "openai" else FAKES[kind]()
    with fake:
        backend: dict[str, Any] = {"name": f"{kind}-1", "kind": kind, "url": fake.url,
                                   "models": [{"name": "chat-model", "upstream": "fake-model"}]}
        if kind == "openai":
            backend["api_key_env"] = "UPSTREAM_API_KEY"
        config: dict[str, Any] = {"backends": [backend]}
        if server:
            config["server"] = server
        gateway = Gateway(workdir, config, env={"UPSTREAM_API_KEY": UPSTREAM_KEY})
        key = gateway.create_key()
        with gateway:
            yield fake, gateway, key
