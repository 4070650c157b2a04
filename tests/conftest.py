from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.gateway import Gateway, embedded_backend


@pytest.fixture(scope="session")
def embedded_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """One gateway on the real embedded model, shared by the tests that only read."""
    workdir: Path = tmp_path_factory.mktemp("embedded-gateway")
    # A tight web chat limit shows that API-key traffic never meets it
    # (test_webchat_gateway.py); no other test uses this gateway's web chat.
    config = {"default_model": "smollm2-135m", "backends": [embedded_backend()],
              "web_chat": {"requests_per_minute": 2}}
    with Gateway(workdir, config) as gateway:
        yield gateway


@pytest.fixture(scope="session")
def api_key(embedded_gateway: Gateway) -> str:
    """A valid key for the shared gateway."""
    return embedded_gateway.create_key()
