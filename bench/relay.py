"""The floor: a bare Sanic relay with an aiohttp upstream client.

It does what any Python gateway on this stack must do at the least, and
nothing else: Sanic (one worker, uvloop, access log off) receives the POST,
aiohttp forwards the body unchanged to the upstream over a keep-alive pool,
and the answer goes back byte for byte, streamed reads passed on as they come.
No validation, auth, metering, parsing or re-encoding.

The benchmark measures it beside the gateway in the same run, so the gap
between the two is what PrivatAI's own code costs, whatever the machine's
speed or load.

    python -m bench.relay --upstream http://127.0.0.1:8001 --port 8002
"""
from __future__ import annotations

import argparse
import logging
from functools import partial

import aiohttp
from sanic import Request, Sanic
from sanic.response import HTTPResponse, raw
from sanic.worker.loader import AppLoader


def create_app(upstream: str) -> Sanic:
    app = Sanic("bench_relay", configure_logging=False)
    app.config.ACCESS_LOG = False
    app.config.AUTO_EXTEND = False
    url = upstream.rstrip("/") + "/v1/chat/completions"

    @app.before_server_start
    async def open_client(app: Sanic) -> None:
        connector = aiohttp.TCPConnector(limit=2048, limit_per_host=0)
        app.ctx.session = aiohttp.ClientSession(connector=connector,
                                                timeout=aiohttp.ClientTimeout(total=None, sock_connect=5))

    @app.after_server_stop
    async def close_client(app: Sanic) -> None:
        await app.ctx.session.close()

    @app.post("/v1/chat/completions")
    async def relay(request: Request) -> HTTPResponse | None:
        session: aiohttp.ClientSession = request.app.ctx.session
        async with session.post(url, data=request.body,
                                headers={"Content-Type": "application/json"}) as upstream_response:
            content_type = upstream_response.headers.get("Content-Type", "application/json")
            if not content_type.startswith("text/event-stream"):
                return raw(await upstream_response.read(), status=upstream_response.status,
                           content_type=content_type)
            response = await request.respond(content_type=content_type)
            while True:
                data = await upstream_response.content.readany()
                if not data:
                    break
                await response.send(data)
            await response.eof()
            return None

    @app.get("/healthz")
    async def healthz(request: Request) -> HTTPResponse:
        return raw(b"ok")

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1,
                        help="worker processes on the one port (Sanic's own multi-worker mode)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.workers == 1:
        create_app(args.upstream).run(host=args.host, port=args.port, single_process=True, access_log=False,
                                      debug=False, motd=False, auto_reload=False, backlog=4096)
        return 0
    # Workers are spawned processes: each builds its app from the factory (Sanic's AppLoader).
    loader = AppLoader(factory=partial(create_app, args.upstream))
    app = loader.load()
    app.prepare(host=args.host, port=args.port, workers=args.workers, access_log=False, debug=False,
                motd=False, auto_reload=False, backlog=4096)
    Sanic.serve(primary=app, app_loader=loader)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
