"""Run by Python at start-up in every process ``sightline run`` starts (see _launcher)."""

import sys

try:
    from sightline import _launcher
except Exception as exc:  # the program must start even if Sightline cannot
    sys.stderr.write(f"sightline: not started: {type(exc).__name__}: {exc}\n")
else:
    try:
        _launcher.bootstrap()
    except Exception as exc:
        sys.stderr.write(f"sightline: not started: {type(exc).__name__}: {exc}\n")
    try:
        _launcher.chain_sitecustomize(__file__)
    except ImportError as exc:  # finding it failed; an error inside it is the app's own
        sys.stderr.write(f"sightline: the existing sitecustomize was not run: {exc}\n")
