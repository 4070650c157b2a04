"""LiteLLM's proxy beside the gateway, on the same fake upstream (``--with-litellm``).

LiteLLM is never a dependency of the project: the benchmark installs one
pinned release of ``litellm[proxy]`` into a virtualenv of its own under
``~/.cache/privatai-bench/`` (once; later runs reuse it) and starts its proxy
as a separate process with one worker, the same models as the gateway (the
``hosted_vllm`` provider for the OpenAI-style upstream, ``ollama_chat`` for
the Ollama one) and a master key, so every request is authenticated as
through the gateway. Usage is not recorded: LiteLLM's spend tracking needs
its PostgreSQL database, which the gateway's SQLite recorder has no
counterpart of here.

The pin is exact on purpose: LiteLLM releases have been compromised on PyPI
before (1.107.0 among them), so the benchmark installs only a release chosen
by hand, never "the latest". (1.106.12 is the last release before 1.107.0;
the releases after it declare their ``proxy`` extra through a
``litellm-proxy`` package that PyPI does not offer.)
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

PIN = "litellm[proxy]==1.106.12"
VENV = Path.home() / ".cache" / "privatai-bench" / "litellm-venv"
MASTER_KEY = "sk-privatai-bench"
# What LiteLLM must not do on a machine without the internet: fetch its model
# price list and send telemetry.
ENV = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False", "LITELLM_LOG": "ERROR",
       "DISABLE_SCHEMA_UPDATE": "True"}


def install(log: Any) -> Path:
    """The ``litellm`` command of the benchmark's own virtualenv, installing it if needed."""
    command = VENV / "bin" / "litellm"
    marker = VENV / "privatai-bench-pin"
    if command.exists() and marker.exists() and marker.read_text() == PIN:
        return command
    log(f"installing {PIN} into {VENV} (once)")
    if not (VENV / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", PIN], check=True)
    marker.write_text(PIN)
    return command


def write_config(path: Path, fake_port: int, models: dict[str, str]) -> None:
    """``models``: public name -> upstream model; names starting with
    ``ollama`` go to the Ollama flavour of the fake, the rest to its OpenAI API."""
    url = f"http://127.0.0.1:{fake_port}"
    model_list = []
    for name, upstream in models.items():
        if name.startswith("ollama"):
            params = {"model": f"ollama_chat/{upstream}", "api_base": url}
        else:
            params = {"model": f"hosted_vllm/{upstream}", "api_base": url + "/v1", "api_key": "none"}
        model_list.append({"model_name": name, "litellm_params": params})
    config = {"model_list": model_list,
              "general_settings": {"master_key": MASTER_KEY},
              "litellm_settings": {"telemetry": False, "drop_params": True, "set_verbose": False}}
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def argv(command: Path, config: Path, port: int) -> list[str]:
    return [str(command), "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
            "--num_workers", "1"]


def env() -> dict[str, str]:
    return {**ENV, "PATH": f"{VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
