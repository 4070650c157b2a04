"""The ``state:`` section (Redis) and the instance template unit, as an operator meets them."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from privatai.config import load_config
from privatai.errors import ConfigError
from tests.test_systemd import (ANALYZE, MAX_EXPOSURE, UNIT, exec_paths, needs_analyze,  # noqa: F401 - a fixture
                                unit_root, unit_settings)

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "deploy" / "privatai@.service"
EMBEDDED = "backends:\n  - name: a\n    kind: embedded\n    models: [m]\n"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "backends.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(("state", "path", "reason"), [
    ("  redis_url: http://cache:6379\n", "state.redis_url", "must be a redis:// or rediss:// URL"),
    ("  redis_url: redis://:s3cret@cache:6379/0\n", "state.redis_url", "must not contain the password"),
    ("  redis_url: redis://cache:port/0\n", "state.redis_url", "not a valid URL"),
    ("  password_env: PW\n", "state.password_env", "only used with state.redis_url"),
    ("  key_prefix: 'a b'\n", "state.key_prefix", "matching regex"),
    ("  store_grace_seconds: -1\n", "state.store_grace_seconds", ">= 0"),
])
def test_state_errors_name_the_key(tmp_path: Path, state: str, path: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, EMBEDDED + "state:\n" + state))
    assert (info.value.path, "\n" in str(info.value)) == (path, False)
    assert reason in info.value.reason


def test_without_a_shared_identity_key_serve_refuses_in_one_line(tmp_path: Path) -> None:
    """Instances hashing client addresses with different keys would not share
    the web-chat limits; the secret is read from the environment, never the file."""
    file = write(tmp_path, EMBEDDED + "state:\n  redis_url: redis://127.0.0.1:1/0\n")
    env = {k: v for k, v in os.environ.items() if k != "PRIVATAI_IDENTITY_KEY"}
    for value in (None, "too-short"):
        if value is not None:
            env["PRIVATAI_IDENTITY_KEY"] = value
        proc = subprocess.run([sys.executable, "-m", "privatai", "serve", "--config", str(file)],
                              capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr
        assert f"{file}: state.identity_key_env:" in proc.stderr
        assert "PRIVATAI_IDENTITY_KEY" in proc.stderr


def test_template_is_the_single_unit_but_for_the_instance() -> None:
    """Hardened exactly like systemd/privatai.service: only what names the instance differs."""
    single, template = unit_settings(UNIT), unit_settings(TEMPLATE)
    differ = {key for key in single.keys() | template.keys() if single.get(key) != template.get(key)}
    assert differ == {"Description", "ExecStart", "EnvironmentFile"}
    assert template["ExecStart"] == ["/opt/privatai/venv/bin/privatai serve --config /etc/privatai/%i.yaml"]
    assert template["EnvironmentFile"] == ["-/etc/privatai/env", "-/etc/privatai/%i.env"]


@needs_analyze
def test_template_instance_passes_verify_and_security(unit_root: Path) -> None:
    # unit_root stubs the single unit's programs, which are the template's too.
    assert exec_paths(unit_settings(TEMPLATE)) == exec_paths(unit_settings(UNIT))
    shutil.copy(TEMPLATE, unit_root / "etc/systemd/system/privatai@.service")
    verify = subprocess.run([ANALYZE, "verify", f"--root={unit_root}", "/etc/systemd/system/privatai@a.service"],
                            capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0 and verify.stdout + verify.stderr == "", verify.stderr
    security = subprocess.run([ANALYZE, "security", "--offline=true", "--no-pager",
                               f"--threshold={int(MAX_EXPOSURE * 10)}", str(TEMPLATE)],
                              capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", security.stdout)
    assert match and float(match.group(1)) <= MAX_EXPOSURE and match.group(2) == "OK", security.stdout
