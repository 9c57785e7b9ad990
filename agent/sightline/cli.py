"""The ``sightline`` command.

sightline run [--service NAME] -- gunicorn app:app -w 4

The appliance (``pip install sightline-appliance``) adds ``stack``, ``demo``, ``doctor``,
``alerts``, ``rules``, ``dashboards`` and ``hints``, declared as ``sightline.commands``
entry points: each is a function given the subparsers to add its commands to.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from ._version import __version__

#: The entry point group other distributions add commands through.
COMMANDS = "sightline.commands"
#: The appliance's commands, named when it is missing.
APPLIANCE = ("stack", "demo", "doctor", "alerts", "rules", "dashboards", "hints")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The command's parser; with ``command`` ``run``, without the appliance's commands."""
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
    if command != "run":  # `sightline run` starts without reading the installed packages
        import importlib.metadata

        for entry in importlib.metadata.entry_points(group=COMMANDS):
            entry.load()(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv[0] if argv else None)
    if argv and argv[0] in APPLIANCE and argv[0] not in _choices(parser):
        sys.stderr.write(
            f"sightline: `sightline {argv[0]}` comes with the appliance, which is not "
            "installed here: pip install sightline-appliance (from a checkout: "
            "pip install ./appliance)\n"
        )
        return 2
    args = parser.parse_args(argv)
    if args.command == "run":
        return run(parser, args)
    handler: Callable[[argparse.ArgumentParser, argparse.Namespace], int] | None = getattr(
        args, "handler", None
    )
    if handler is not None:
        return handler(parser, args)
    parser.print_help()
    return 0


def _choices(parser: argparse.ArgumentParser) -> set[str]:
    return {
        name
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
        for name in action.choices
    }


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
