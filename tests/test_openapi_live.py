"""schemathesis against a live gateway, driven by the gateway's own OpenAPI
document: for generated requests to every operation, no 5xx, and every
response's status, content type and body as the document says.

The gateway is a real process in front of a vLLM-kind fake on a socket (it
answers chat, text completions and embeddings whatever it is asked), with a
default model, so that the requests that leave ``model`` out reach it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,
                                               status_code_conformance)

from privatai.api.openapi import openapi_document
from tests.fakes import FakeVLLM
from tests.gateway import Gateway

schema = schemathesis.openapi.from_dict(openapi_document())
# The coverage phase sends every boundary of every field (near 2000
# requests for the chat and responses bodies alone): minutes on a loaded
# machine. Generated valid and invalid bodies keep this test near a minute.
schema.config.phases.coverage.enabled = False
# Not negative_data_rejection: the gateway is lenient where that harms no one
# (a chat content part without its "type" is read as text), as msgspec
# decodes a tagged struct that stands alone.
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, str]]:
    fake = FakeVLLM()
    fake.start_in_thread()
    try:
        workdir: Path = tmp_path_factory.mktemp("openapi-live")
        config = {"default_model": "m", "backends": [
            {"name": "vllm", "kind": "vllm", "url": fake.url, "models": [{"name": "m", "upstream": "fake-model"}]}]}
        gateway = Gateway(workdir, config)
        key = gateway.create_key()
        with gateway:
            yield gateway, key
    finally:
        fake.stop_in_thread()


@schema.parametrize()
@settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_every_operation_conforms(case: schemathesis.Case, live: tuple[Gateway, str]) -> None:
    gateway, key = live
    case.call_and_validate(base_url=gateway.url, headers={"Authorization": f"Bearer {key}"}, checks=CHECKS,
                           timeout=30)
