"""`privatai serve` at start-up: a part it cannot run without stops it before it
says "listening", with exit status 1 and one line naming the part and the
reason; a configuration error is status 2; an unreachable remote backend is
not a start-up failure at all.

The read-only cases drop root's power to write anything when the tests run as
root: the situation of the service's DynamicUser meeting a root-owned file.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.gateway import ROOT, Gateway, free_port

LISTENING = "PrivatAI listening on"


def remote_backend() -> dict[str, Any]:
    """A vLLM backend nobody listens for: starting it opens no connection."""
    return {"name": "remote", "kind": "vllm", "url": f"http://127.0.0.1:{free_port()}", "models": ["m"],
            "connect_timeout": 1}


def serve(gateway: Gateway, timeout: float = 60, **popen: Any) -> subprocess.CompletedProcess[str]:
    """`privatai serve` for a start that must end on its own."""
    try:
        return subprocess.run([sys.executable, "-m", "privatai", "serve", "--config", str(gateway.config_path)],
                              capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=gateway.env,
                              **popen)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"serve was still running after {timeout} s: {exc.stdout!r} {exc.stderr!r}")


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert LISTENING not in result.stdout
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


# -- required parts that fail ---------------------------------------------------


def test_embedded_model_that_is_missing_stops_the_start(tmp_path: Path) -> None:
    missing = tmp_path / "models" / "absent.gguf"
    gateway = Gateway(tmp_path, {"backends": [
        {"name": "local", "kind": "embedded", "models": ["m"], "model_path": str(missing)}]})
    result = serve(gateway)
    assert result.returncode == 1
    assert one_line(result) == f"privatai: start-up failed: backend 'local': Model file not found: {missing}"


def test_embedded_model_that_cannot_load_stops_the_start(tmp_path: Path) -> None:
    """llama.cpp refuses the file: the reason is the error's class, never its text."""
    pytest.importorskip("llama_cpp")
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 60)
    gateway = Gateway(tmp_path, {"backends": [
        remote_backend(), {"name": "local", "kind": "embedded", "models": ["m"], "model_path": str(broken)}]})
    result = serve(gateway)
    assert result.returncode == 1
    line = one_line(result)
    assert line.startswith("privatai: start-up failed: backend 'local': ")
    assert str(broken) not in line and "gguf" not in line.lower()


def test_missing_store_directory_stops_before_listening(tmp_path: Path) -> None:
    directory = tmp_path / "not-created"
    gateway = Gateway(tmp_path, {"backends": [remote_backend()], "store": {"path": str(directory / "p.db")}})
    result = serve(gateway)
    assert result.returncode == 1
    assert one_line(result) == f"privatai: store {directory}/p.db: directory {directory} does not exist"
    assert not directory.exists()


def test_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        gateway = Gateway(tmp_path, {"backends": [remote_backend()]})
        gateway.config["server"]["port"] = port
        gateway.config_path.write_text(yaml.safe_dump(gateway.config))
        result = serve(gateway)
    assert result.returncode == 1
    assert one_line(result) == f"privatai: cannot listen on 127.0.0.1:{port}: address already in use"


def test_missing_upstream_key_is_a_configuration_error(tmp_path: Path) -> None:
    backend = {**remote_backend(), "kind": "openai", "api_key_env": "PRIVATAI_TEST_UNSET_KEY"}
    gateway = Gateway(tmp_path, {"backends": [backend]})
    gateway.env.pop("PRIVATAI_TEST_UNSET_KEY", None)
    result = serve(gateway)
    assert result.returncode == 2
    assert one_line(result) == ("privatai: configuration error: environment: backend 'remote': api_key_env: "
                                "the environment variable PRIVATAI_TEST_UNSET_KEY is not set")


# -- store paths the service user cannot write ------------------------------------


def without_root_powers() -> list[str]:
    """A command prefix under which file permissions hold for root too: the
    capabilities that let root write anything are dropped (util-linux setpriv)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root needs setpriv (util-linux) to drop CAP_DAC_OVERRIDE")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search,-fowner", "--"]


def broken_store(base: Path, case: str) -> tuple[Path, str]:
    """A store path in one of the broken states, and the reason to expect."""
    directory = base / "state"
    directory.mkdir()
    path = directory / "privatai.db"
    if case == "read-only directory":
        directory.chmod(0o555)
        return path, f"directory {directory} is not writable (SQLite creates its -wal and -shm files there)"
    if case == "read-only file":
        path.write_bytes(b"")
        path.chmod(0o444)
        return path, f"{path} is not readable and writable"
    if case == "read-only wal file":
        path.write_bytes(b"")
        wal = directory / "privatai.db-wal"
        wal.write_bytes(b"")
        wal.chmod(0o444)
        return path, f"{wal} is not readable and writable"
    path.mkdir()
    return path, f"{path} is not a regular file"


CASES = ["read-only directory", "read-only file", "read-only wal file", "a directory"]


@pytest.mark.parametrize("case", CASES)
def test_unwritable_store_stops_serve_before_listening(tmp_path: Path, case: str) -> None:
    path, reason = broken_store(tmp_path, case)
    gateway = Gateway(tmp_path / "gw", {"backends": [remote_backend()], "store": {"path": str(path)}},
                      launcher=[*without_root_powers(), sys.executable, "-m", "privatai"])
    try:
        result = subprocess.run([*gateway.launcher, "serve", "--config", str(gateway.config_path)],
                                capture_output=True, text=True, timeout=60, cwd=ROOT)
    finally:
        (tmp_path / "state").chmod(0o755)
    assert result.returncode == 1
    assert one_line(result) == f"privatai: store {path}: {reason}"


def store_line(report: str) -> str:
    """The one line of `privatai check` about the store (the plans' line follows it)."""
    [line] = [line for line in report.splitlines() if line.startswith("Store ")]
    return line


@pytest.mark.parametrize("case", CASES)
def test_check_reports_an_unwritable_store(tmp_path: Path, case: str) -> None:
    path, reason = broken_store(tmp_path, case)
    gateway = Gateway(tmp_path / "gw", {"backends": [remote_backend()], "store": {"path": str(path)}})
    try:
        result = subprocess.run([*without_root_powers(), sys.executable, "-m", "privatai", "check",
                                 "--config", str(gateway.config_path)],
                                capture_output=True, text=True, timeout=60, cwd=ROOT)
    finally:
        (tmp_path / "state").chmod(0o755)
    assert result.returncode == 1
    assert store_line(result.stdout) == f"Store {path}: error: {reason}"


def test_check_says_a_writable_store_is_ok(tmp_path: Path) -> None:
    gateway = Gateway(tmp_path, {"backends": [remote_backend()]})
    result = gateway.cli("check", check=False)
    assert store_line(result.stdout) == f"Store {tmp_path}/privatai.db: ok"
    assert not (tmp_path / "privatai.db").exists(), "check must not create the database"


# -- what is not a start-up failure ---------------------------------------------


def test_unreachable_remote_backend_is_down_not_fatal(tmp_path: Path) -> None:
    gateway = Gateway(tmp_path, {"backends": [remote_backend()], "routing": {"health_interval": 0.2}})
    with gateway:
        assert httpx.get(f"{gateway.url}/healthz", timeout=5).status_code == 200
        ready = httpx.get(f"{gateway.url}/readyz", timeout=5)
        assert ready.status_code == 503
        assert ready.json()["backends"]["remote"] in ("unknown", "failing", "down")
        assert gateway.proc is not None
        gateway.proc.send_signal(signal.SIGTERM)
        assert gateway.proc.wait(30) == 0
        gateway.proc = None
    assert gateway.output().count(LISTENING) == 1
