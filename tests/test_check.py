"""`privatai check`: the config validated, every backend started and probed, one table."""
from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.gateway import Gateway, embedded_backend, free_port

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m"


def rows(stdout: str) -> list[list[str]]:
    """The table's rows (header dropped), cells split on runs of two spaces."""
    table, store = stdout.strip().split("\n\n")
    lines = table.splitlines()
    assert lines[0].split() == ["MODEL", "BACKEND", "KIND", "STATUS", "LATENCY", "POOL"]
    store_line, plans_line = store.splitlines()
    assert store_line.startswith("Store ") and store_line.endswith(": ok")
    assert plans_line == "Plans pro, enterprise: ok"
    return [[cell.strip() for cell in line.split("  ") if cell.strip()] for line in lines[1:]]


def test_embedded_config_is_ok(tmp_path: Path) -> None:
    # Never started: check needs only the config file.
    gateway = Gateway(tmp_path, {"default_model": MODEL, "backends": [embedded_backend()]})
    result = gateway.cli("check", check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    [row] = rows(result.stdout)
    assert row[:4] == [MODEL, "embedded", "embedded", "ok"]
    assert row[4].endswith(" ms")
    assert "Traceback" not in result.stderr


def test_unreachable_backend_is_an_error_row_and_exit_1(tmp_path: Path) -> None:
    dead = {"name": "ollama-dead", "kind": "ollama", "url": f"http://127.0.0.1:{free_port()}",
            "models": ["llama3.2"], "connect_timeout": 2}
    gateway = Gateway(tmp_path, {"default_model": MODEL, "backends": [embedded_backend(), dead]})
    result = gateway.cli("check", check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    table = rows(result.stdout)
    assert table[0][:4] == [MODEL, "embedded", "embedded", "ok"]
    model, backend, kind, status, latency, pool = table[1]
    assert (model, backend, kind, latency, pool) == ("llama3.2", "ollama-dead", "ollama", "-", "shared")
    # Class and status only (BackendUnavailable once the Ollama adapter is in).
    assert status.startswith("error: ")
    assert "Traceback" not in result.stdout + result.stderr


def test_invalid_config_is_exit_2_with_one_line(tmp_path: Path) -> None:
    gateway = Gateway(tmp_path, {"backends": [embedded_backend(max_concurrency=0)]})
    result = gateway.cli("check", check=False)
    assert result.returncode == 2
    assert result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("privatai: configuration error: ") and "max_concurrency" in line


@pytest.mark.parametrize("plan, ok", [("enterprise", True), ("gold", False)])
def test_pools_are_shown_and_accounts_on_unknown_plans_are_errors(tmp_path: Path, plan: str, ok: bool) -> None:
    dead = {"name": "acme-gpu", "kind": "vllm", "url": f"http://127.0.0.1:{free_port()}", "models": ["m"],
            "connect_timeout": 1, "reserved_for": {"plans": ["enterprise"], "accounts": ["acme"]}}
    gateway = Gateway(tmp_path, {"backends": [dead]})
    gateway.create_key("acme")
    if not ok:
        # A plan the configuration stopped offering (the CLI refuses to set one).
        plans = [{"name": "pro", "price": "9 €"}, {"name": "enterprise", "price": "x"}]
        gateway.write_config({**gateway.config, "plans": plans})
        assert gateway.cli("accounts", "set-plan", "acme", plan, check=False).returncode == 2
        with sqlite3.connect(gateway.config["store"]["path"]) as db:
            db.execute("UPDATE accounts SET plan = ?", (plan,))
    result = gateway.cli("check", check=False)
    assert result.returncode == 1  # the backend is down either way
    table, store = result.stdout.strip().split("\n\n")
    assert table.splitlines()[1].endswith("plan enterprise, account acme")
    plans_line = store.splitlines()[1]
    if ok:
        assert plans_line == "Plans pro, enterprise: ok"
    else:
        assert plans_line == ("Plans pro, enterprise: error: account 'acme' is on plan 'gold', which plans: "
                              "does not offer (its keys get 403 plan_unknown)")
