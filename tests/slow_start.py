"""`python -m privatai`, run as `python -m tests.slow_start`, with one more
start-up listener that takes a while, so that a test can act while the
server starts: after_server_start for 2 s by default, or as the environment
says (PRIVATAI_TEST_SLOW_EVENT: before_server_start or after_server_start;
PRIVATAI_TEST_SLOW_SECONDS). It prints a line when that listener begins.

PRIVATAI_TEST_TIME_SCALE (default 1) shrinks both worker start-up limits,
Sanic's own default (30 s) and the gateway's, by that factor, so that a test
of a start longer than Sanic's default can keep every ratio and take a tenth
of the time."""
from __future__ import annotations

import asyncio
import os
import sys

from sanic.worker.manager import WorkerManager

import privatai.app
from privatai.ops import cli, workers

_create_app = privatai.app.create_app
EVENT = os.environ.get("PRIVATAI_TEST_SLOW_EVENT", "after_server_start")
SECONDS = float(os.environ.get("PRIVATAI_TEST_SLOW_SECONDS", "2"))
SCALE = float(os.environ.get("PRIVATAI_TEST_TIME_SCALE", "1"))
# Sanic's limit is a count of 0.1-s polls; the gateway's replaces it when it runs workers.
WorkerManager.THRESHOLD = round(WorkerManager.THRESHOLD * SCALE)
workers.WORKER_START_LIMIT *= SCALE


def create_app(*args: object, **kwargs: object) -> object:
    app = _create_app(*args, **kwargs)  # type: ignore[arg-type]

    async def slow_listener(_app: object) -> None:
        print(f"slow {EVENT} listener begins", flush=True)
        await asyncio.sleep(SECONDS)

    app.register_listener(slow_listener, EVENT)
    return app


privatai.app.create_app = create_app  # type: ignore[assignment]
sys.exit(cli.main(sys.argv[1:]))
