"""`python -m privatai`, run as `python -m tests.slow_start`, with one more
after_server_start listener that takes two seconds, so that a test can send
its stop while the start-up listeners run. It prints a line when that
listener begins."""
from __future__ import annotations

import asyncio
import sys

import privatai.app
from privatai.ops import cli

_create_app = privatai.app.create_app


def create_app(*args: object, **kwargs: object) -> object:
    app = _create_app(*args, **kwargs)  # type: ignore[arg-type]

    @app.after_server_start
    async def slow_listener(_app: object) -> None:
        print("slow start-up listener begins", flush=True)
        await asyncio.sleep(2)

    return app


privatai.app.create_app = create_app  # type: ignore[assignment]
sys.exit(cli.main(sys.argv[1:]))
