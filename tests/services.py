"""Throwaway services for tests: PostgreSQL and Redis servers from Debian's packages.

One server per test session, in a temporary directory, on a free loopback
port, with password authentication (so the store's ``password_env`` path is
the one tested). PostgreSQL refuses to run as root, so as root it runs as the
``postgres`` system user the Debian package creates. Each test gets its own
database, dropped afterwards. Without the package the tests that need it are
skipped; ``make test`` installs it (``postgresql``). Redis (``redis-server``)
runs the same way: on a free loopback port, in a temporary directory, with a
password, persisting nothing; a test may stop and start it on the same port.
"""
from __future__ import annotations

import glob
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from privatai.store.database import Store
from tests.gateway import free_port

PASSWORD_ENV = "PRIVATAI_TEST_PG_PASSWORD"
USER = "privatai"


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


class _Throwaway:
    """A server of a test's own: a free loopback port, a password, a temp directory."""

    def __init__(self, name: str) -> None:
        self.port = free_port()
        self.password = secrets.token_urlsafe(16)
        self.root = Path(tempfile.mkdtemp(prefix=f"privatai-{name}-"))


class PostgreSQL(_Throwaway):
    """A running server; :meth:`new_database` gives a fresh, empty database."""

    def __init__(self, bin_dir: Path) -> None:
        super().__init__("pg")
        self.bin_dir = bin_dir
        self.data = self.root / "data"
        self.sockets = self.root / "sockets"
        # As root, everything runs as the postgres user, which must own the directory.
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self._as, *args], check=True, capture_output=True, text=True,
                              timeout=120, **kwargs)  # type: ignore[call-overload]

    def start(self) -> None:
        self.sockets.mkdir()
        password_file = self.root / "password"
        password_file.write_text(self.password + "\n")
        if self._as:
            shutil.chown(self.root, "postgres")
            for path in (self.sockets, password_file):
                shutil.chown(path, "postgres")
        self.root.chmod(0o700)
        self._run(str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", USER, "--auth=scram-sha-256",
                  f"--pwfile={password_file}", "--encoding=UTF8", "--locale=C.UTF-8")
        password_file.unlink()
        self.resume()

    def resume(self) -> None:
        """Start the server (again, after :meth:`pause`), on the same port with the same data."""
        options = (f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off")
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-o", options, "-w", "-t", "60",
                  "-l", str(self.root / "server.log"), "start")

    def pause(self) -> None:
        """Stop the server, keeping its data: an outage a test can end with :meth:`resume`.
        A fast (clean) stop: with this server's asynchronous commits an
        immediate one would lose the last committed transactions."""
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        """The store's ``store.url`` for ``database``: no password in it."""
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL as the superuser; the output, unaligned and without headers."""
        return subprocess.run(
            [str(self.bin_dir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
             "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, "-d", database, "-c", sql],
            check=True, capture_output=True, text=True, timeout=60,
            env={**os.environ, "PGPASSWORD": self.password}).stdout.strip()

    def dump(self, database: str) -> str:
        """Everything in ``database``, schema and rows, as pg_dump writes it."""
        return subprocess.run(
            [str(self.bin_dir / "pg_dump"), "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, database],
            check=True, capture_output=True, text=True, timeout=60,
            env={**os.environ, "PGPASSWORD": self.password}).stdout

    def new_database(self) -> str:
        name = "t_" + secrets.token_hex(6)
        self.psql(f"CREATE DATABASE {name}")
        return name

    def drop_database(self, name: str) -> None:
        self.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def started_postgresql() -> PostgreSQL:
    """A new throwaway PostgreSQL (skips the test without the package)."""
    bin_dir = _bin_dir()
    if bin_dir is None:
        pytest.skip("needs Debian's postgresql package (make test installs it)")
    server = PostgreSQL(bin_dir)
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture(scope="session")
def postgresql() -> Iterator[PostgreSQL]:
    """A throwaway PostgreSQL for the session, its password in ``PASSWORD_ENV``."""
    server = started_postgresql()
    os.environ[PASSWORD_ENV] = server.password
    try:
        yield server
    finally:
        os.environ.pop(PASSWORD_ENV, None)
        server.stop()


@dataclass(frozen=True)
class Target:
    """A new, empty database for one test: a SQLite file or a PostgreSQL database."""

    kind: str
    location: str  # what Store.open takes: a path or a URL without password
    password: str | None = None

    async def open(self, **options: Any) -> Store:
        return await Store.open(self.location, password=self.password, **options)

    def store_config(self) -> dict[str, Any]:
        """The ``store:`` section of a backends.yaml for this database."""
        if self.kind == "sqlite":
            return {"path": self.location}
        return {"url": self.location, "password_env": PASSWORD_ENV}


def new_target(kind: str, request: pytest.FixtureRequest, directory: Path) -> Iterator[Target]:
    if kind == "sqlite":
        yield Target("sqlite", str(directory / "privatai.db"))
        return
    server: PostgreSQL = request.getfixturevalue("postgresql")
    name = server.new_database()
    try:
        yield Target("postgresql", server.url(name), server.password)
    finally:
        server.drop_database(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    """Each store test runs on both databases."""
    yield from new_target(request.param, request, tmp_path)


REDIS_PASSWORD_ENV = "PRIVATAI_TEST_REDIS_PASSWORD"


class RedisServer(_Throwaway):
    """A throwaway ``redis-server``: :meth:`stop` and :meth:`start` keep its port."""

    def __init__(self, binary: str) -> None:
        super().__init__("redis")
        self.binary = binary
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The ``state.redis_url``: no password in it."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        conf = self.root / "redis.conf"
        # The password goes in a file, not the command line other users can read.
        conf.write_text(f"port {self.port}\nbind 127.0.0.1\ndir {self.root}\nsave \"\"\nappendonly no\n"
                        f"requirepass {self.password}\nlogfile {self.root / 'redis.log'}\n")
        conf.chmod(0o600)
        self.proc = subprocess.Popen([self.binary, str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
                time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def started_redis() -> RedisServer:
    """A new throwaway Redis (skips the test without the package); close() it after."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("needs Debian's redis-server package (make test installs it)")
    server = RedisServer(binary)
    try:
        server.start()
    except BaseException:
        server.close()
        raise
    return server


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A throwaway Redis for the session, its password in ``REDIS_PASSWORD_ENV``."""
    server = started_redis()
    os.environ[REDIS_PASSWORD_ENV] = server.password
    try:
        yield server
    finally:
        os.environ.pop(REDIS_PASSWORD_ENV, None)
        server.close()
