"""Fork safety: objects holding locks or threads are renewed in a forked child.

A lock held by another thread at the moment of fork stays locked forever in the child
(only the forking thread survives), so a pre-forking server (gunicorn --preload) could
hang a worker on its first request. Objects register here and get ``_after_fork()``
called in the child before any of its code runs.
"""

from __future__ import annotations

import os
import weakref
from typing import Any

_objects: weakref.WeakSet[Any] = weakref.WeakSet()


def track(obj: Any) -> None:
    """Call ``obj._after_fork()`` in every forked child while ``obj`` lives."""
    _objects.add(obj)


def _after_in_child() -> None:
    from . import _safety

    for obj in list(_objects):
        with _safety.internal_errors(f"fork.{type(obj).__name__}"):  # one failing, not all
            obj._after_fork()


os.register_at_fork(after_in_child=_after_in_child)
