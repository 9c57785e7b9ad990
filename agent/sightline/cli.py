"""The ``sightline`` command.

sightline run [--service NAME] -- gunicorn app:app -w 4
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from ._version import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sightline",
        description=(
            "Sightline: golden-signal metrics, traces and logs for Python backends. "
            'Add `import sightline; sightline.init(service="NAME")` to your app\'s entry point, '
            "or start it with `sightline run -- COMMAND`."
        ),
    )
    parser.add_argument("--version", action="version", version=f"sightline {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = commands.add_parser(
        "run",
        help="run a program instrumented, without changing its code",
        description=(
            "Run COMMAND (gunicorn, uvicorn, python app.py, ...) with Sightline started in "
            "its Python processes, configured by SIGHTLINE_* and OTEL_* variables."
        ),
    )
    run.add_argument("--service", help="the service name (sets SIGHTLINE_SERVICE)")
    run.add_argument("program", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "run":
        return run(parser, args)
    parser.print_help()
    return 0


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from . import ConfigError, Settings, _launcher

    program = args.program[1:] if args.program[:1] == ["--"] else args.program
    if not program:
        parser.error("run: name the command to run, after --")
    env = dict(os.environ)
    if args.service:
        env["SIGHTLINE_SERVICE"] = args.service
    try:
        Settings.load(env, {})  # refuse bad settings here, not in every worker
    except ConfigError as exc:
        sys.stderr.write(f"sightline: {exc}\n")
        return 2
    try:
        _launcher.run(program, env)
    except OSError as exc:
        sys.stderr.write(f"sightline: cannot run {program[0]}: {exc.strerror or exc}\n")
        return 127
    return 0  # not reached: the program replaced this process


if __name__ == "__main__":
    raise SystemExit(main())
