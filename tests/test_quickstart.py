"""`privatai quickstart` prints a working key and a curl line that works."""
from __future__ import annotations

import re
import shlex
import subprocess

import pytest

from tests.gateway import Gateway

pytestmark = pytest.mark.slow


def test_quickstart_key_and_curl_line_work(embedded_gateway: Gateway) -> None:
    out = embedded_gateway.cli("quickstart", "--port", str(embedded_gateway.port)).stdout
    key = re.search(r"privat_[A-Za-z0-9]{32,}", out).group(0)
    curl = re.search(r"curl -X POST .*?-d '[^']*'", out, re.S).group(0).replace("\\\n", " ")
    proc = subprocess.run(shlex.split(curl) + ["-s", "-w", "\n%{http_code}"], capture_output=True, text=True,
                          timeout=120)
    body, status = proc.stdout.rsplit("\n", 1)
    assert status == "200", body
    assert '"chat.completion"' in body
    assert key in curl
    # A second quickstart reuses the demo account and adds a key.
    again = embedded_gateway.cli("quickstart").stdout
    assert re.search(r"privat_[A-Za-z0-9]{32,}", again).group(0) != key
