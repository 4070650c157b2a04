"""The admin CLI as an operator runs it, on a real database file: the
`privatai` entry point run in this process (tests/gateway.py's ``run_cli``:
the same parser, handlers, output and exit codes, without a Python start-up
per command), and once as its own process (``python -m
privatai.ops.admin_cli``) for what only a process shows."""
from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from privatai.errors import AuthenticationFailed
from privatai.store.keys import is_well_formed
from privatai.store.database import Store
from privatai.store.recorder import Batch, Counts, UsageRecorder
from privatai.store.records import utc_now
from tests.gateway import run_cli

ROOT = Path(__file__).resolve().parents[1]


class CLI:
    def __init__(self, db: Path, process: bool = False) -> None:
        self.db = db
        self.process = process

    def __call__(self, *args: str, code: int = 0, db: bool = True) -> subprocess.CompletedProcess[str]:
        extra = ["--db", str(self.db)] if db else []
        if self.process:
            result = subprocess.run([sys.executable, "-m", "privatai.ops.admin_cli", *args, *extra], cwd=ROOT,
                                    capture_output=True, text=True, timeout=60)
        else:
            result = run_cli(*args, *extra)
        assert result.returncode == code, (result.stdout, result.stderr)
        assert "Traceback" not in result.stderr
        if code == 2:
            assert len(result.stderr.strip().splitlines()) == 1, result.stderr
            assert result.stderr.startswith("privatai: error: ")
        return result


@pytest.fixture
def cli(tmp_path: Path) -> CLI:
    return CLI(tmp_path / "privatai.db")


def test_the_module_runs_as_its_own_process(tmp_path: Path) -> None:
    """Exit codes and the one-line error as a shell sees them."""
    cli = CLI(tmp_path / "privatai.db", process=True)
    assert "Created account 'acme'" in cli("accounts", "create", "acme", "--plan", "enterprise").stdout
    assert "already exists" in cli("accounts", "create", "Acme", code=2).stderr
    assert cli("accounts", "list").stdout.splitlines()[2].split()[1:4] == ["acme", "enterprise", "active"]


def test_accounts(cli: CLI) -> None:
    assert "No accounts yet" in cli("accounts", "list").stdout
    assert "Created account 'acme'" in cli("accounts", "create", "acme", "--plan", "enterprise").stdout
    assert "already exists" in cli("accounts", "create", "Acme", code=2).stderr
    cli("accounts", "create", "beta")
    listing = cli("accounts", "list").stdout.splitlines()
    assert listing[0].split() == ["ID", "NAME", "PLAN", "STATUS", "ACTIVE", "KEYS", "CREATED"]
    assert listing[2].split()[1:4] == ["acme", "enterprise", "active"]
    assert listing[3].split()[1:4] == ["beta", "pro", "active"]

    assert "Suspended" in cli("accounts", "suspend", "acme").stdout
    assert "suspended" in cli("accounts", "list").stdout
    assert "Activated" in cli("accounts", "activate", "acme").stdout
    assert "no account named 'nope'" in cli("accounts", "suspend", "nope", code=2).stderr
    assert "no account named 'nope'" in cli("accounts", "activate", "nope", code=2).stderr


def test_keys_create_list_revoke(cli: CLI) -> None:
    cli("accounts", "create", "acme")
    created = cli("keys", "create", "acme", "--label", "ci server", "--expires", "2099-12-31")
    key = created.stdout.strip()
    assert is_well_formed(key)  # alone on stdout, so scripts can capture it
    assert "shown only this once" in created.stderr
    assert "2099-12-31T00:00:00" in created.stderr

    listing = cli("keys", "list").stdout
    assert key[:12] + "…" in listing and "ci server" in listing and "active" in listing
    assert "never" in listing
    assert key not in listing and key[12:] not in listing
    assert cli("keys", "list", "acme").stdout == listing

    assert "no account named 'nope'" in cli("keys", "create", "nope", code=2).stderr
    assert "no account named 'nope'" in cli("keys", "list", "nope", code=2).stderr
    assert "not a date" in cli("keys", "create", "acme", "--expires", "2099-13-01", code=2).stderr
    assert "not in the future" in cli("keys", "create", "acme", "--expires", "2001-01-01", code=2).stderr

    assert "Revoked key " + key[:12] in cli("keys", "revoke", key[:12]).stdout
    assert "revoked" in cli("keys", "list").stdout
    assert "already revoked" in cli("keys", "revoke", key[:12], code=2).stderr
    assert "no key with prefix" in cli("keys", "revoke", "privat_zzzzz", code=2).stderr
    assert "neither a key id" in cli("keys", "revoke", "hello", code=2).stderr


def test_ambiguous_prefix(cli: CLI) -> None:
    cli("accounts", "create", "acme")
    keys = [cli("keys", "create", "acme").stdout.strip() for _ in range(2)]
    assert "neither a key id" in cli("keys", "revoke", "privat_", code=2).stderr
    # Force two keys to share a prefix the way chance eventually will.
    with sqlite3.connect(cli.db) as db:
        db.execute("UPDATE api_keys SET prefix = 'privat_SAME0'")
    assert "matches several keys (ids 1, 2)" in cli("keys", "revoke", "privat_SAME0", code=2).stderr
    assert "Revoked" in cli("keys", "revoke", "2").stdout
    assert "Revoked" in cli("keys", "revoke", keys[0]).stdout  # the full key works too


async def test_revocation_reaches_a_running_server_within_the_ttl(cli: CLI) -> None:
    cli("accounts", "create", "acme")
    key = cli("keys", "create", "acme").stdout.strip()
    server = await Store.open(str(cli.db))  # default 2 s TTL
    try:
        await server.authenticate(key)
        await asyncio.to_thread(cli, "keys", "revoke", key[:12])
        await asyncio.sleep(2.1)
        with pytest.raises(AuthenticationFailed, match="revoked"):
            await server.authenticate(key)
    finally:
        await server.close()


async def test_usage_table(cli: CLI) -> None:
    cli("accounts", "create", "acme")
    cli("accounts", "create", "beta")
    alice = cli("keys", "create", "acme", "--label", "alice").stdout.strip()
    cli("keys", "create", "acme", "--label", "bob")
    carol = cli("keys", "create", "beta").stdout.strip()
    assert "No usage recorded" in cli("usage").stdout

    store = await Store.open(str(cli.db))
    try:
        a, c = await store.authenticate(alice), await store.authenticate(carol)
        recorder = UsageRecorder(store)
        recorder.record(a.key_id, "phi4-mini", 1200, 3400)
        recorder.record(a.key_id, "llama3.2", 1, 2)
        recorder.record(c.key_id, "phi4-mini", 10, 20)
        await recorder.flush()
        yesterday = (utc_now().date() - timedelta(days=1)).isoformat()
        await store.write_usage(Batch({(a.key_id, yesterday, "phi4-mini"): Counts(1, 100, 100)}))
    finally:
        await store.close()

    lines = cli("usage").stdout.splitlines()
    assert lines[0].startswith("Usage, first day to today")
    assert lines[1].split() == ["ACCOUNT", "REQUESTS", "PROMPT", "COMPLETION", "TOTAL", "LAST", "USED"]
    assert lines[3].split()[:5] == ["acme", "3", "1,301", "3,502", "4,803"]
    assert lines[4].split()[:5] == ["beta", "1", "10", "20", "30"]
    assert lines[6].split()[:5] == ["TOTAL", "4", "1,311", "3,522", "4,833"]
    # Numbers are right-aligned under their header.
    assert lines[1].index("COMPLETION") + len("COMPLETION") == lines[3].index("3,502") + len("3,502")

    per_key = cli("usage", "--account", "acme", "--since", utc_now().date().isoformat()).stdout
    assert "alice" in per_key and alice[:12] + "…" in per_key and "1,301" not in per_key
    assert "1,201" in per_key  # today only

    by_model = cli("usage", "--key", alice[:12], "--by-model").stdout.splitlines()
    assert [line.split()[3] for line in by_model[3:5]] == ["llama3.2", "phi4-mini"]

    assert "not a date" in cli("usage", "--since", "yesterday", code=2).stderr
    assert "is after" in cli("usage", "--since", "2025-02-01", "--until", "2025-01-01", code=2).stderr
    assert "no account named" in cli("usage", "--account", "nope", code=2).stderr
    assert "No usage recorded" in cli("usage", "--until", "2000-01-01").stdout


def test_config_names_the_database(tmp_path: Path) -> None:
    config = tmp_path / "backends.yaml"
    config.write_text("backends:\n  - name: local\n    kind: embedded\n    models: [smollm2]\n"
                      "store:\n  path: data/admin.db\n")
    (tmp_path / "data").mkdir()
    cli = CLI(tmp_path / "unused.db")
    cli("accounts", "create", "acme", "--config", str(config), db=False)
    assert (tmp_path / "data" / "admin.db").exists()
    assert "acme" in cli("accounts", "list", "--config", str(config), db=False).stdout

    missing = cli("accounts", "list", "--config", str(tmp_path / "nope.yaml"), db=False, code=2)
    assert "nope.yaml" in missing.stderr


def test_names_and_labels_are_bounded_and_printable(cli: CLI) -> None:
    long = cli("accounts", "create", "a" * 100_000, code=2).stderr
    assert "account name must be at most 64 characters (got 100,000)" in long and len(long) < 200
    clear_screen = cli("accounts", "create", "evil\x1b[2J", code=2).stderr
    assert "control or invisible characters (found U+001B)" in clear_screen and "\x1b" not in clear_screen
    assert "found U+202E" in cli("accounts", "create", "gmbh\u202eexe.", code=2).stderr
    assert "must not be empty" in cli("accounts", "create", "  ", code=2).stderr
    assert "plan must be at most 32" in cli("accounts", "create", "acme", "--plan", "p" * 33, code=2).stderr
    cli("accounts", "create", "Müller & Söhne GmbH")  # ordinary names, spaces and umlauts pass
    assert "found U+000A" in cli("keys", "create", "Müller & Söhne GmbH", "--label", "a\nb", code=2).stderr
    assert "key label must be at most 100" in cli(
        "keys", "create", "Müller & Söhne GmbH", "--label", "x" * 101, code=2).stderr
    # Names typed at a lookup are quoted escaped and short in the one-line error.
    unknown = cli("accounts", "suspend", "\x1b[2J" + "b" * 100_000, code=2).stderr
    assert "no account named '\\x1b[2Jbbb" in unknown and "\x1b" not in unknown and len(unknown) < 200
    assert "no key with id" in cli("keys", "revoke", "9" * 5000, code=2).stderr


def test_values_stored_before_the_rule_print_safely(cli: CLI) -> None:
    cli("accounts", "create", "acme")
    cli("keys", "create", "acme", "--label", "fine")
    # What an older release let in, written straight into the database.
    with sqlite3.connect(cli.db) as db:
        db.execute("UPDATE accounts SET name = ?, plan = ?", ("ac\x1b[2Jme\nX", "p\x07"))
        db.execute("UPDATE api_keys SET label = ?", ("L" * 100_000 + "\r",))
    for args in (("accounts", "list"), ("keys", "list")):
        out = cli(*args).stdout
        assert not any(c in out for c in "\x1b\x07\r"), args
        lines = out.splitlines()
        assert len(lines) == 3, args  # header, rule, one row: no newline broke the table
        assert "ac\\x1b[2Jme\\nX" in lines[2] and len(lines[2]) < 400, args
    assert "L" * 100 + "…" in cli("keys", "list").stdout
    assert "p\\x07" in cli("accounts", "list").stdout
