"""The `webhookd` command: run the daemon, check the config, and talk to a running daemon."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from webhookd import __version__
from webhookd.config import ConfigError, Settings, load_settings, redacted
from webhookd.logs import printable

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


def _load(path: str | None) -> Settings:
    return load_settings(path)


def cmd_run(args: argparse.Namespace) -> int:
    from webhookd import daemon

    try:
        settings = _load(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"webhookd: {printable(problem)}", file=sys.stderr)
        return EXIT_USAGE
    return daemon.run(settings)


def _delivery_problems(settings: Settings) -> list[str]:
    """What only reading files tells: the proxy file, the CA file, client certificates."""
    from webhookd import tls

    problems: list[str] = []
    try:
        settings.delivery.resolve_proxy()
    except ConfigError as exc:
        problems.extend(exc.problems)
    try:
        tls.load_contexts(settings)
    except ConfigError as exc:
        problems.extend(exc.problems)
    return problems


def cmd_check_config(args: argparse.Namespace) -> int:
    problems: list[str] = []
    settings: Settings | None = None
    try:
        settings = _load(args.config)
    except ConfigError as exc:
        problems.extend(exc.problems)
    if settings is not None:
        token: str | None = None
        try:
            token = settings.admin.resolve_token()
        except ConfigError as exc:
            problems.extend(exc.problems)
        try:
            settings.admin.resolve_producer_tokens(token)
        except ConfigError as exc:
            problems.extend(exc.problems)
        problems.extend(_delivery_problems(settings))
        if settings.database.engine == "postgresql":
            try:
                settings.database.resolve_url()
            except ConfigError as exc:
                problems.extend(exc.problems)
            for warning in settings.database.url_file_warnings():
                print(f"webhookd: warning: {printable(warning)}", file=sys.stderr)
    if problems:
        for problem in problems:
            print(f"webhookd: {printable(problem)}", file=sys.stderr)
        print(f"webhookd: {len(problems)} problem(s) in the configuration", file=sys.stderr)
        return EXIT_USAGE
    assert settings is not None
    print(json.dumps(redacted(settings), indent=2))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="webhookd", description="Durable at-least-once webhook delivery."
    )
    parser.add_argument("--version", action="version", version=f"webhookd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "--config",
            metavar="PATH",
            help="TOML settings (default: $WEBHOOKD_CONFIG, else /etc/webhookd/webhookd.toml)",
        )
        return p

    with_config(sub.add_parser("run", help="run the daemon in the foreground")).set_defaults(
        func=cmd_run
    )
    with_config(
        sub.add_parser("check-config", help="validate and print the resolved settings")
    ).set_defaults(func=cmd_check_config)
    try:
        from webhookd import client_cli, tenant_cli
    except ImportError:  # the API commands arrive with their own module
        pass
    else:
        client_cli.add_commands(sub, with_config)
        tenant_cli.add_tenant_commands(sub, with_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except BrokenPipeError:
        # `webhookd status | head`: the reader left; no traceback (Python's own advice).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILURE
    return code


if __name__ == "__main__":
    sys.exit(main())
