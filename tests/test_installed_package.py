"""The gateway as pip installs it for an operator (docs/INSTALL.md), not as
this checkout runs it.

A regular (not editable) install byte-compiles every ``.py`` file of the
package, the documentation's Python snippets in ``portal/examples`` included:
their ``__pycache__`` once stopped ``privatai serve`` at start-up. The
package is installed with this interpreter's pip into a directory of its own
and served from there, with ``-P`` so that the checkout is not on the path.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.gateway import ROOT, Gateway, free_port


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package installed as `pip install` installs it (without dependencies:
    this interpreter has them), in a directory of its own."""
    target = tmp_path_factory.mktemp("installed") / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    "--no-deps", "--no-build-isolation", "--target", str(target), str(ROOT)],
                   check=True, capture_output=True, timeout=300)
    return target


def test_the_installed_package_serves_its_api_and_website(installed: Path, tmp_path: Path) -> None:
    env = {"PYTHONPATH": str(installed)}
    launcher = [sys.executable, "-P", "-m", "privatai"]
    where = subprocess.run([sys.executable, "-P", "-c", "import privatai; print(privatai.__file__)"],
                           env={**os.environ, **env}, cwd=tmp_path, capture_output=True, text=True, check=True)
    assert Path(where.stdout.strip()).is_relative_to(installed)
    # What broke it: pip compiled the snippets beside them.
    assert (installed / "privatai" / "portal" / "examples" / "__pycache__").is_dir()

    config = {"server": {"host": "127.0.0.1", "port": free_port()},
              "store": {"path": str(tmp_path / "privatai.db")},
              "backends": [{"name": "remote", "kind": "vllm", "url": f"http://127.0.0.1:{free_port()}",
                            "models": ["phi4-mini"]}]}
    with Gateway(tmp_path / "gateway", config, env=env, launcher=launcher) as gateway:
        key = gateway.create_key()
        models = httpx.get(f"{gateway.url}/api/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=10)
        assert models.status_code == 200
        assert [m["id"] for m in models.json()["data"]] == ["phi4-mini"]
        docs = httpx.get(f"{gateway.url}/en/docs", timeout=10)
        assert docs.status_code == 200
        assert "client.chat.completions.create(" in docs.text
        # Every file the package carries besides modules: pages, styles, the web chat.
        for path in ("/", "/static/site.css", "/webchat", "/webchat/static/chat.js"):
            assert httpx.get(gateway.url + path, timeout=10).status_code == 200, path
