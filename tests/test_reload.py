"""A reload is all or nothing: a file that fails anywhere changes nothing.

A bad ``web_chat.trusted_proxies`` entry used to pass validation, switch the
models, then fail while applying the web-chat settings: half a reload, a
"valid" from `privatai reload`, and a next start that died on a ValueError.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.fakes import FakeLlamaCpp
from tests.gateway import ROOT, Gateway, run_cli


def models(gateway: Gateway, key: str) -> list[str]:
    response = httpx.get(f"{gateway.base_url}/models", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    return [model["id"] for model in response.json()["data"]]


def rewrite(gateway: Gateway, **changes: Any) -> None:
    config = yaml.safe_load(gateway.config_path.read_text())
    for section, value in changes.items():
        config[section] = value
    gateway.config_path.write_text(yaml.safe_dump(config))


def test_reload_with_a_bad_trusted_proxy_changes_nothing(tmp_path: Path) -> None:
    with FakeLlamaCpp() as fake:
        backend = {"name": "fake", "kind": "llamacpp", "url": fake.url, "models": ["m"]}
        gateway = Gateway(tmp_path, {"backends": [backend], "web_chat": {"trusted_proxies": ["127.0.0.1"]}})
        key = gateway.create_key()
        with gateway:
            assert gateway.proc is not None
            rewrite(gateway, backends=[{**backend, "models": ["m", "m2"]}],
                    web_chat={"trusted_proxies": ["10.0.0.0/8", "proxy.internal"]})
            expected = (f"privatai: configuration error: {gateway.config_path}: web_chat.trusted_proxies[1]: "
                        "'proxy.internal' is not an IP address or network (CIDR)")

            reload = gateway.cli("reload", "--pid", str(gateway.proc.pid), check=False)
            assert reload.returncode == 2
            assert reload.stderr.splitlines() == [expected]
            assert "valid" not in reload.stdout

            # A SIGHUP behind the CLI's back is refused by the server itself.
            os.kill(gateway.proc.pid, signal.SIGHUP)
            deadline = time.monotonic() + 10
            while "reload refused" not in gateway.output() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert "reload refused, keeping the running configuration: " + expected.split(": ", 2)[2] \
                in gateway.output()
            assert models(gateway, key) == ["m"]
            assert httpx.get(f"{gateway.url}/webchat", timeout=10).status_code == 200

            # The same change with a valid entry is taken as a whole.
            rewrite(gateway, web_chat={"trusted_proxies": ["10.0.0.0/8", "192.0.2.7"]})
            # Its answer and effect are what count here: the same entry point in this process.
            ok = run_cli("reload", "--pid", str(gateway.proc.pid), "--config", str(gateway.config_path))
            assert ok.returncode == 0 and "valid" in ok.stdout
            deadline = time.monotonic() + 10
            while models(gateway, key) != ["m", "m2"] and time.monotonic() < deadline:
                time.sleep(0.1)
            assert models(gateway, key) == ["m", "m2"]

        # And a start with the bad entry stops with the same one line.
        rewrite(gateway, web_chat={"trusted_proxies": ["proxy.internal"]})
        start = subprocess.run([sys.executable, "-m", "privatai", "serve", "--config", str(gateway.config_path)],
                               capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert start.returncode == 2
        assert start.stderr.splitlines() == [
            f"privatai: configuration error: {gateway.config_path}: web_chat.trusted_proxies[0]: "
            "'proxy.internal' is not an IP address or network (CIDR)"]
