"""backends.yaml validation: the file, the key path and one line of reason."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from privatai.config import load_config
from privatai.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "backends.yaml"
    path.write_text(text)
    return path


def test_shipped_file_is_valid_and_defaults_to_embedded() -> None:
    config = load_config(ROOT / "backends.yaml")
    assert config.backends[0].kind == "embedded"
    assert config.default_model == "smollm2-135m"
    assert Path(config.store.path).is_absolute()


@pytest.mark.parametrize("text, path, reason", [
    ("backends:\n  - name: a\n    kind: embedded\n    models: [m]\n    colour: red\n",
     "backends[0].colour", "unknown field"),
    ("backends:\n  - name: a\n    kind: embedded\n    models: [m]\n    max_concurrency: lots\n",
     "backends[0].max_concurrency", "Expected `int`"),
    ("backends:\n  - kind: embedded\n    models: [m]\n", "backends[0].name", "missing required field"),
    ("backends:\n  - name: a\n    kind: ollama\n    models: [m]\n", "backends[0].url", "required for kind"),
    ("backends:\n  - name: a\n    kind: martian\n    models: [m]\n", "backends[0].kind", "Invalid enum value"),
    ("backends: []\n", "backends", "length"),
    ("server:\n  port: 80\n", "backends", "missing required field"),
    ("backends:\n  - name: a\n    kind: embedded\n    models: [m]\ndefault_model: x\n",
     "default_model", "not served"),
    ("backends: [\n", "line 2, column 1", "not valid YAML"),
    ("backends:\n  - name: a\n    kind: embedded\n    models: [m]\nserver:\n  workers: 4\n",
     "server.workers", "must be 1: the web-chat limits and the usage batches live in this one process"),
    ("backends:\n  - name: a\n    kind: embedded\n    models: [m]\nstore:\n  url: mysql://db/privatai\n",
     "store.url", "must be a postgresql:// URL"),
    ("backends:\n  - name: a\n    kind: embedded\n    models: [m]\nstore:\n  url: postgresql://u:s3cret@db/p\n",
     "store.url", "must not contain the password"),
    ("backends:\n  - name: a\n    kind: embedded\n    models: [m]\nstore:\n  url: postgresql://u@db\n",
     "store.url", "names no database"),
    ("backends:\n  - name: a\n    kind: embedded\n    models: [m]\nstore:\n  password_env: PW\n",
     "store.password_env", "only used with store.url"),
])
def test_errors_name_file_path_and_reason(tmp_path: Path, text: str, path: str, reason: str) -> None:
    file = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(file)
    assert info.value.file == str(file)
    assert info.value.path == path
    assert reason in info.value.reason
    assert "\n" not in str(info.value)


def test_serve_with_bad_config_prints_one_line_not_a_traceback(tmp_path: Path) -> None:
    file = write(tmp_path, "backends:\n  - name: a\n    kind: embedded\n    models: [m]\n    colour: red\n")
    proc = subprocess.run([sys.executable, "-m", "privatai", "serve", "--config", str(file)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert f"{file}: backends[0].colour:" in proc.stderr
