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
    _launcher.chain_sitecustomize(__file__)
