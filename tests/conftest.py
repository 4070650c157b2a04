from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.gateway import Gateway, embedded_backend


@pytest.fixture(scope="session")
def embedded_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """One gateway on the real embedded model, shared by the tests that only read."""
    workdir: Path = tmp_path_factory.mktemp("embedded-gateway")
    with Gateway(workdir, {"default_model": "smollm2-135m", "backends": [embedded_backend()]}) as gateway:
        yield gateway


@pytest.fixture(scope="session")
def api_key(embedded_gateway: Gateway) -> str:
    """A valid key for the shared gateway."""
    return embedded_gateway.create_key()
