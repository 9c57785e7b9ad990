"""The ``sightline`` command."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from ._version import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sightline",
        description=(
            "Sightline: golden-signal metrics, traces and logs for Python backends. "
            'Add `import sightline; sightline.init(service="NAME")` to your app\'s entry point.'
        ),
    )
    parser.add_argument("--version", action="version", version=f"sightline {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    build_parser().parse_args(argv)
    build_parser().print_help()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
