"""`privatai serve | quickstart | reload | check | accounts | keys | usage | audit`"""
from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import shlex
import signal
import sys
from pathlib import Path

from typing import TYPE_CHECKING

from privatai.config import Config, load_config
from privatai.errors import ConfigError

if TYPE_CHECKING:
    from privatai.ops.runtime import RuntimeDir


LISTEN_BACKLOG = 4096
# Young-generation collections every 7,000 net allocations instead of 700:
# a request allocates a few hundred short-lived containers (parsed chunks,
# events, dicts), most of them dead before the next collection, so ten times
# fewer collections scan far fewer objects. Measured: GC time per non-streaming
# request from about 95 to 15 µs.
GC_THRESHOLDS = (7000, 10, 10)


def settle_gc() -> None:
    """After start-up: move everything loaded so far (Sanic, aiohttp, the
    tokenizer, the config) out of the collector's sight, so full collections
    scan only what requests create, and collect the young generation less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _config_error(exc: ConfigError) -> SystemExit:
    """The one line of an invalid configuration, and exit code 2."""
    print(f"privatai: configuration error: {exc}", file=sys.stderr)
    return SystemExit(2)


def _load(path: str) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        raise _config_error(exc) from None


def _fail(message: str) -> int:
    """One line on stderr and exit code 1: a start that cannot succeed as configured
    (the unit restarts it with back-off; exit code 2, a configuration error, it does not)."""
    print(f"privatai: {message}", file=sys.stderr, flush=True)
    return 1


def _store_problem(config: Config) -> str | None:
    from privatai.ops.preflight import store_problem

    if config.store.url is not None:
        return None  # PostgreSQL: reachable or not is found when the store opens
    problem = store_problem(config.store.path)
    return f"store {config.store.path}: {problem}" if problem else None


def _address(config: Config, args: argparse.Namespace) -> tuple[str, int]:
    host = args.host or config.server.host
    port = args.port if args.port is not None else config.server.port
    return host, port


def _not_reported_here(record: logging.LogRecord) -> bool:
    """Drop Sanic's own record of a start-up failure: serve prints one line for it."""
    from privatai.ops.startup import StartupFailed

    return not (record.exc_info and isinstance(record.exc_info[1], StartupFailed))


def cmd_serve(args: argparse.Namespace) -> int:
    config = _load(args.config)
    from privatai.ops.hardening import disable_core_dumps
    from privatai.ops.logs import setup_logging
    from privatai.ops.runtime import RuntimeDir

    config.server.host, config.server.port = _address(config, args)
    setup_logging(config.logging.level, config.logging.format, config.logging.third_party_level)
    disable_core_dumps()
    problem = _store_problem(config)
    if problem:
        return _fail(problem)
    workers = config.server.workers
    # Before the app: its metrics must know they are shared.
    runtime = RuntimeDir.create() if workers > 1 else None
    try:
        return _serve(config, runtime)
    finally:
        if runtime is not None:
            runtime.remove()


def _serve(config: Config, runtime: RuntimeDir | None) -> int:
    from sanic.server.socket import bind_socket

    from privatai.api.http_limits import GatewayProtocol
    from privatai.app import create_app
    from privatai.ops import workers
    from privatai.ops.logs import describe_error
    from privatai.ops.startup import StartupFailed

    try:
        app = create_app(config, runtime=runtime)
    except ConfigError as exc:
        # A setting only the environment can satisfy (a backend's api_key_env).
        raise _config_error(exc) from None
    host, port = config.server.host, config.server.port
    try:
        # Bound here rather than by Sanic, so that a port in use is one line too.
        # Sanic's default listen backlog of 100 overflows when hundreds of
        # clients connect at once (streams opening together): the kernel then
        # drops their handshakes and they retry seconds later. The kernel caps
        # this value at net.core.somaxconn.
        sock = bind_socket(host, port, backlog=LISTEN_BACKLOG)
    except OSError as exc:
        return _fail(f"cannot listen on {host}:{port}: {(exc.strerror or describe_error(exc)).lower()}")
    port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    announcer = workers.Announcer(config.server.workers,
                                  f"PrivatAI listening on http://{shown}:{port}/api/v1 (and /v1)")

    @app.after_server_start
    async def _started(app: object) -> None:
        settle_gc()
        # Only now: the store, the tokenizer and every backend have started.
        announcer.worker_started()

    logging.getLogger("sanic.error").addFilter(_not_reported_here)
    options = dict(protocol=GatewayProtocol, access_log=False, debug=False, motd=False, auto_reload=False,
                   backlog=LISTEN_BACKLOG)
    try:
        if runtime is None:
            app.run(sock=sock, single_process=True, **options)
        else:
            workers.serve(app, sock, config.server.workers, **options)
    except StartupFailed as exc:
        return _fail(f"start-up failed: {exc}")
    return 0


async def _quickstart(config: Config) -> str:
    from privatai.store.database import Store
    from privatai.store.names import AdminError

    store = await Store.from_config(config.store)
    try:
        try:
            await store.get_account("demo")
        except AdminError:
            await store.create_account("demo")
        return (await store.create_key("demo", label="quickstart")).key
    finally:
        await store.close()


def cmd_quickstart(args: argparse.Namespace) -> int:
    """A key for trying the gateway out, printed to this terminal (never to a log)."""
    config = _load(args.config)
    problem = _store_problem(config)
    if problem:
        return _fail(problem)
    key = asyncio.run(_quickstart(config))
    host, port = _address(config, args)
    body = '{"messages": [{"role": "user", "content": "Hello, how are you?"}]}'
    print(f"""
A new API key for account 'demo' (shown only now; list keys with `privatai keys list`):

    {key}

When the server below says it is listening, try it from another terminal:

    curl -X POST http://{host}:{port}/api/v1/chat/completions \\
      -H "Authorization: Bearer {key}" \\
      -H "Content-Type: application/json" \\
      -d {shlex.quote(body)}

Or with the OpenAI SDK: OpenAI(base_url="http://{host}:{port}/api/v1", api_key="{key}")
""", flush=True)
    return 0


def _serving_pids(config_path: Path) -> list[int]:
    """PIDs of `privatai serve` processes started with this configuration file:
    main processes only, since one with workers passes the signal on to them
    (its forked workers and helpers have the same command line)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            cwd = (entry / "cwd").resolve()
        except OSError:
            continue
        words = [a.decode(errors="replace") for a in argv if a]
        if "serve" not in words or not any("privatai" in w for w in words):
            continue
        configured = words[words.index("--config") + 1] if "--config" in words[:-1] else "backends.yaml"
        if (cwd / configured).resolve() == config_path:
            pids.append(int(entry.name))
    return [pid for pid in pids if _parent(pid) not in pids]


def _parent(pid: int) -> int | None:
    try:
        # The command name in field 2 may hold spaces and parentheses; it ends at the last ")".
        return int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def cmd_reload(args: argparse.Namespace) -> int:
    """Validate the file, then tell the running server to re-read it (SIGHUP)."""
    _load(args.config)
    path = Path(args.config).resolve()
    pids = [args.pid] if args.pid else _serving_pids(path)
    if not pids:
        print(f"privatai: no running `privatai serve --config {path}` found (use --pid)", file=sys.stderr)
        return 1
    for pid in pids:
        os.kill(pid, signal.SIGHUP)
    print(f"Configuration is valid; asked {len(pids)} server process(es) to reload it.")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    config = _load(args.config)
    from privatai.ops.check import run_check
    from privatai.ops.logs import setup_logging

    # Only warnings, and through the scrubbing filter: no upstream text on the terminal.
    setup_logging("WARNING", config.logging.format)
    return run_check(config)


def build_parser() -> argparse.ArgumentParser:
    from privatai.ops import admin_cli
    from privatai.ops import audit

    parser = argparse.ArgumentParser(prog="privatai", description="Privacy-first OpenAI-compatible LLM gateway")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func, help in (("serve", cmd_serve, "run the gateway"),
                             ("quickstart", cmd_quickstart, "create a demo account key and print how to call the API")):
        command = sub.add_parser(name, help=help, description=help)
        command.add_argument("--config", default="backends.yaml", help="path to backends.yaml")
        command.add_argument("--host", help="bind address (overrides server.host)")
        command.add_argument("--port", type=int, help="port (overrides server.port)")
        command.set_defaults(func=func)
    reload = sub.add_parser("reload", help="validate backends.yaml and make the running server re-read it")
    reload.add_argument("--config", default="backends.yaml", help="path to backends.yaml")
    reload.add_argument("--pid", type=int, help="the server's process id (default: found by its --config)")
    reload.set_defaults(func=cmd_reload)
    admin_cli.register(sub)
    check = sub.add_parser("check", help="validate the config and probe every backend")
    check.add_argument("--config", default="backends.yaml", help="path to backends.yaml")
    check.set_defaults(func=cmd_check)
    audit.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
