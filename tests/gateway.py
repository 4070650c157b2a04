"""The real gateway for tests, on a real socket: as its own process
(:class:`Gateway`, `python -m privatai serve`) or served by ``create_app`` in
the test's own event loop (:class:`LocalGateway`, no process to start).

A process is what signals, start-up, logging set-up, the sandbox and the
privacy audit need; everything else that only needs the HTTP surface runs on a
LocalGateway, which starts in milliseconds. Both write their configuration to
``backends.yaml`` in their work directory and create keys with the real
``privatai keys create``, run in this process.
"""
from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator, TypeVar

import httpx
import pytest
import yaml
from sanic import Sanic
from sanic.application.constants import ServerStage
from sanic.application.state import ApplicationServerInfo
from sanic.server.async_server import AsyncioServer

from privatai.app import create_app
from privatai.config import load_config
from privatai.ops import cli
from tests.fakes import FAKES, FakeBackend

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
# One client for every start's /healthz polls: httpx.get builds a client, and
# with it an SSL context (~70 ms of CPU), per poll, which starves the process
# that is starting. No keep-alive: a poll leaves no idle connection behind.
_HEALTH_POLL = httpx.Client(timeout=1, limits=httpx.Limits(max_keepalive_connections=0))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def embedded_backend(**overrides: Any) -> dict[str, Any]:
    backend = {"name": "embedded", "kind": "embedded", "models": ["smollm2-135m"],
               "n_ctx": 2048, "n_threads": 1, "max_concurrency": 4}
    backend.update(overrides)
    return backend


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``privatai <args>`` run in this process: the same entry point as the
    console script, without a Python start-up per call. It runs its own event
    loop (asyncio.run), so it runs in a thread of its own; its output is
    captured by swapping sys.stdout and sys.stderr meanwhile."""
    out, err = io.StringIO(), io.StringIO()
    result: dict[str, int] = {}
    failure: list[BaseException] = []

    def run() -> None:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                result["code"] = cli.main(list(args))
            except SystemExit as exc:
                result["code"] = 0 if exc.code is None else exc.code if isinstance(exc.code, int) else 1
            except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread
                failure.append(exc)

    worker = threading.Thread(target=run, name="privatai-cli")
    worker.start()
    worker.join()
    if failure:
        raise failure[0]
    return subprocess.CompletedProcess(["privatai", *args], result["code"], out.getvalue(), err.getvalue())


class _Configured:
    """A work directory with backends.yaml (its own database, this port)."""

    def __init__(self, workdir: Path, config: dict[str, Any], port: int) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port
        config = dict(config)
        config.setdefault("store", {}).setdefault("path", str(workdir / "privatai.db"))
        server = config.setdefault("server", {})
        server.update({"host": HOST, "port": self.port})
        self.config = config
        self.config_path = workdir / "backends.yaml"
        self.write_config(config)
        self._accounts: set[str] = set()

    def write_config(self, config: dict[str, Any]) -> None:
        self.config_path.write_text(yaml.safe_dump(config))

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def create_key(self, account: str = "test", *extra: str) -> str:
        """A fresh API key for ``account`` (created if missing), via the real CLI."""
        if account not in self._accounts:
            created = run_cli("accounts", "create", account, "--config", str(self.config_path))
            assert created.returncode == 0 or "already exists" in created.stderr, created.stderr
            self._accounts.add(account)
        created = run_cli("keys", "create", account, *extra, "--config", str(self.config_path))
        assert created.returncode == 0, created.stderr
        return created.stdout.strip()


class Gateway(_Configured):
    """A gateway process with its own config, database and captured output."""

    def __init__(self, workdir: Path, config: dict[str, Any], env: dict[str, str] | None = None,
                 launcher: list[str] | None = None) -> None:
        super().__init__(workdir, config, free_port())
        # How `privatai serve ...` is started (e.g. inside a sandbox).
        self.launcher = launcher or [sys.executable, "-m", "privatai"]
        self.output_path = workdir / "gateway.log"
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a `privatai` subcommand as its own process, with this gateway's
        config and environment."""
        return subprocess.run([sys.executable, "-m", "privatai", *args, "--config", str(self.config_path)],
                              capture_output=True, text=True, timeout=120, cwd=ROOT, env=self.env,
                              check=check)

    def start(self, timeout: float = 120.0, attempts: int = 3) -> "Gateway":
        # A second start would leave the first process running, unseen (`with
        # gateway.start():` starts twice: __enter__ starts too).
        assert self.proc is None or self.proc.poll() is not None, "this gateway is already running"
        out = self.output_path.open("ab")
        self.proc = subprocess.Popen(
            [*self.launcher, "serve", "--config", str(self.config_path)],
            stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                if attempts > 1 and "address already in use" in self.output().lower():
                    # The free port was taken between our look and the bind
                    # (another test, another pytest worker): take another.
                    self.proc = None
                    self.port = free_port()
                    self.config["server"]["port"] = self.port
                    self.write_config(self.config)
                    return self.start(timeout, attempts - 1)
                raise RuntimeError(f"gateway exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if _HEALTH_POLL.get(f"{self.url}/healthz").status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
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


@contextlib.asynccontextmanager
async def local_gateway_on_fake(kind: str, workdir: Path, model: str = "chat-model"
                                ) -> AsyncIterator[tuple[FakeBackend, "LocalGateway"]]:
    """A fake backend of ``kind`` serving ``model`` (upstream ``fake-model``)
    behind a started :class:`LocalGateway`; as :func:`gateway_on_fake` in the
    test's own loop. Create keys with ``await gateway.key()``."""
    fake = FAKES[kind](api_key=UPSTREAM_KEY) if kind == "openai" else FAKES[kind]()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("UPSTREAM_API_KEY", UPSTREAM_KEY)
        async with fake:
            backend: dict[str, Any] = {"name": f"{kind}-1", "kind": kind, "url": fake.url,
                                       "models": [{"name": model, "upstream": "fake-model"}]}
            if kind == "openai":
                backend["api_key_env"] = "UPSTREAM_API_KEY"
            async with LocalGateway(workdir, {"backends": [backend]}) as gateway:
                yield fake, gateway


_app_names = itertools.count(1)


class LocalGateway(_Configured):
    """``create_app(config)`` served in the running event loop on a real port,
    with the listeners `privatai serve` runs (store, tokenizer, router, probes)
    and Sanic's graceful stop. Logging is pytest's (caplog), not set up here.

    Use it from async tests (``async with LocalGateway(...) as gateway``),
    once; clients must be async too (``openai.AsyncOpenAI``,
    ``httpx.AsyncClient``), since the server shares the test's loop.
    """

    def __init__(self, workdir: Path, config: dict[str, Any]) -> None:
        # Bound now, listening once started: the port cannot be taken meanwhile.
        self._sock = socket.socket()
        self._sock.bind((HOST, 0))
        super().__init__(workdir, config, self._sock.getsockname()[1])
        self.app: Sanic | None = None
        self._server: AsyncioServer | None = None
        self._signals: dict[int, Any] = {}

    def create_key(self, account: str = "test", *extra: str) -> str:
        assert self.app is None, "the server shares this loop: use `await gateway.key(...)` while it runs"
        return super().create_key(account, *extra)

    async def key(self, account: str = "test", *extra: str) -> str:
        """:meth:`create_key` while the server runs: in a thread, so that the
        loop can finish what the database waits for (a usage flush)."""
        return await asyncio.to_thread(super().create_key, account, *extra)

    async def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``privatai <args> --config <this config>`` in a thread of this process."""
        return await asyncio.to_thread(run_cli, *args, "--config", str(self.config_path))

    async def start(self) -> "LocalGateway":
        # Sanic's test mode, as sanic-testing's clients set it: Sanic then
        # rewrites its own methods (touchup) from the originals for every app
        # in the process, not from the first app's rewrite.
        Sanic.test_mode = True
        app = create_app(load_config(self.config_path), name=f"privatai-local-{next(_app_names)}")
        # A serving stage, as sanic-testing's ReusableClient sets it: Sanic
        # names background tasks (the first probe) only in a running app.
        info = ApplicationServerInfo(settings={"version": "1.1", "ssl": None, "unix": None, "sock": None,
                                               "loop": None, "host": HOST, "port": self.port})
        info.stage = ServerStage.SERVING
        app.state.server_info.append(info)
        self._signals = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        # The listen backlog `privatai serve` uses: with Sanic's default of 100,
        # hundreds of clients connecting at once get connections reset.
        server = await app.create_server(sock=self._sock, return_asyncio_server=True, access_log=False,
                                         backlog=cli.LISTEN_BACKLOG, asyncio_server_kwargs={"start_serving": False})
        assert server is not None
        self.app, self._server = app, server
        try:
            await server.startup()
            await server.before_start()
            await server.after_start()
            await server.start_serving()
        except BaseException:
            await self.stop()
            raise
        return self

    async def stop(self) -> None:
        """As Sanic stops a server: stop listening, let open responses finish
        (up to ``grace_period``), then the shutdown listeners (usage flush)."""
        app, server = self.app, self._server
        if app is None or server is None or server.server is None:
            self._sock.close()  # never started: the bound socket is all there is
            return
        self.app = self._server = None
        try:
            await server.before_stop()
            server.server.close()
            for connection in list(server.connections):
                connection.close_if_idle()
            deadline = time.monotonic() + app.config.GRACEFUL_SHUTDOWN_TIMEOUT
            while server.connections and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            for connection in list(server.connections):
                connection.abort()
            tasks = [task for task in app.tasks if not task.done()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await server.after_stop()
        finally:
            # The app's signal handling belongs to a server process, not to pytest.
            loop = asyncio.get_running_loop()
            loop.remove_signal_handler(signal.SIGHUP)
            for sig, handler in self._signals.items():
                signal.signal(sig, handler)
            Sanic.unregister_app(app)

    async def __aenter__(self) -> "LocalGateway":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def eventually(check: Callable[[], Awaitable[T]], timeout: float = 10.0, what: str = "condition") -> T:
    """Poll ``check`` until it returns something truthy, and return that; a
    condition that is polled, not slept for, costs only the time it takes."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {timeout} s (last: {result!r})")
        await asyncio.sleep(0.02)
