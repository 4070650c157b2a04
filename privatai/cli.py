"""`privatai serve | check | keys | accounts | usage ...`"""
from __future__ import annotations

import argparse
import sys

from .config import Config, load_config
from .errors import ConfigError


def _load(path: str) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"privatai: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_serve(args: argparse.Namespace) -> int:
    config = _load(args.config)
    from .app import create_app
    from .logs import setup_logging

    if args.host:
        config.server.host = args.host
    if args.port is not None:
        config.server.port = args.port
    setup_logging(config.logging.level, config.logging.format)
    app = create_app(config)
    host, port = config.server.host, config.server.port
    print(f"PrivatAI listening on http://{host}:{port}/api/v1 (and /v1)", flush=True)
    app.run(host=host, port=port, single_process=True, access_log=False, debug=False,
            motd=False, auto_reload=False)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    config = _load(args.config)
    from .check import run_check
    from .logs import setup_logging

    # Only warnings, and through the scrubbing filter: no upstream text on the terminal.
    setup_logging("WARNING", config.logging.format)
    return run_check(config)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="privatai", description="Privacy-first OpenAI-compatible LLM gateway")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", default="backends.yaml", help="path to backends.yaml")
    serve.add_argument("--host", help="bind address (overrides server.host)")
    serve.add_argument("--port", type=int, help="port (overrides server.port)")
    serve.set_defaults(func=cmd_serve)
    check = sub.add_parser("check", help="validate the config and probe every backend")
    check.add_argument("--config", default="backends.yaml", help="path to backends.yaml")
    check.set_defaults(func=cmd_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
