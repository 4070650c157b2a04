"""The official openai npm package for tests that run JavaScript clients."""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Node:
    directory: Path
    missing: str | None         # why node cannot run at all
    openai_missing: str | None  # why the openai package is not there


def install_openai(directory: Path) -> Node:
    """``npm install openai`` into ``directory`` (as the docs tell users to),
    or why node or the package is not there."""
    if shutil.which("node") is None:
        return Node(directory, "node is not installed", "node is not installed")
    if shutil.which("npm") is None:
        return Node(directory, None, "npm is not installed")
    install = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error", "openai"],
                             cwd=directory, capture_output=True, text=True, timeout=300)
    reason = None if install.returncode == 0 else f"npm install openai failed: {install.stderr[-300:]}"
    return Node(directory, None, reason)
