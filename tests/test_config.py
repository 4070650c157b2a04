"""backends.yaml validation: the file, the key path and one line of reason."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from privatai.config import load_config
from privatai.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


EMBEDDED = "backends:\n  - name: a\n    kind: embedded\n    models: [m]\n"
# Each anchor a list of nine of the one before: 9^10 strings if expanded.
LAUGHS = "".join(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9 if i else ['"lol"'] * 9) + "]\n"
                 for i in range(10))


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
    ("backends:\n  - name: a\n    kind: embedded\n    models: [m]\nserver:\n  workers: 0\n",
     "server.workers", ">= 1"),
    # Settings that used to fail only when applied (at start or on reload).
    (EMBEDDED + "web_chat:\n  trusted_proxies: [10.0.0.1, proxy.example]\n",
     "web_chat.trusted_proxies[1]", "'proxy.example' is not an IP address or network"),
    (EMBEDDED + "web_chat:\n  trusted_proxies: [10.0.0.0/33]\n",
     "web_chat.trusted_proxies[0]", "not an IP address or network"),
    ("backends:\n  - name: a\n    kind: ollama\n    url: http://127.0.0.1:99999\n    models: [m]\n",
     "backends[0].url", "not a valid URL"),
    ("backends:\n  - name: a\n    kind: vllm\n    url: 10.0.0.5:8000\n    models: [m]\n",
     "backends[0].url", "must be an http:// or https:// URL"),
    (EMBEDDED + "server:\n  grace_period: .inf\n", "server.grace_period", "<= 1000000000.0"),
    ("backends:\n  - name: a\n    kind: embedded\n    models: [m]\n    weight: .inf\n",
     "backends[0].weight", "<= 1000000000.0"),
    (EMBEDDED + "store:\n  usage_retention_days: 1000000\n", "store.usage_retention_days", "<= 36500"),
    (EMBEDDED + "server:\n  max_connections_per_client: 0\n", "server.max_connections_per_client", ">= 1"),
    # Hostile files.
    ("backends: " + "[" * 5000 + "]" * 5000 + "\n", "line 1, column 42", "nested more than 32 levels deep"),
    ("".join("  " * i + f"k{i}:\n" for i in range(500)), "line 33, column 65", "nested more than 32 levels deep"),
    (EMBEDDED + "\x07\n", "line 5, column 1", "not valid YAML: it contains a character YAML does not allow"),
    (EMBEDDED + "    \"co\\nl\\x1b[2Jour\": red\n",
     "backends[0].co\\nl\\x1b[2Jour", "unknown field `co\\nl\\x1b[2Jour`"),
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


def test_a_file_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    file = tmp_path / "backends.yaml"
    file.write_bytes(EMBEDDED.encode() + b"default_model: caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load_config(file)
    assert (info.value.path, info.value.reason) == (f"byte {len(EMBEDDED) + 19}", "not UTF-8 text")


@pytest.mark.timeout(30)
@pytest.mark.parametrize("where", ["top", "models"])
def test_billion_laughs_is_refused_without_expanding(tmp_path: Path, where: str) -> None:
    """Aliases are shared, never expanded: a 9^10 document is rejected at once."""
    text = LAUGHS + ("backends: *a9\n" if where == "top" else EMBEDDED.replace("[m]", "*a9"))
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("command", ["serve", "check"])
def test_deeply_nested_file_is_one_line_for_every_command(tmp_path: Path, command: str) -> None:
    file = write(tmp_path, "backends: " + "[" * 5000 + "]" * 5000 + "\n")
    proc = subprocess.run([sys.executable, "-m", "privatai", command, "--config", str(file)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"privatai: configuration error: {file}: line 1, column 42: nested more than 32 levels deep"]
