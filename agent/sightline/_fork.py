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
    """Call ``obj._after_fork()`` in every forked child while ``obj`` lives; and, if it has
    them, ``obj._before_fork()`` in the forking process just before the fork and
    ``obj._after_fork_in_parent()`` just after it (to keep a lock out of the fork)."""
    _objects.add(obj)


def _before() -> None:
    from . import _safety

    for obj in list(_objects):
        before = getattr(obj, "_before_fork", None)
        if before is not None:
            with _safety.internal_errors(f"fork.before.{type(obj).__name__}"):
                before()


def _after_in_parent() -> None:
    from . import _safety

    for obj in list(_objects):
        after = getattr(obj, "_after_fork_in_parent", None)
        if after is not None:
            with _safety.internal_errors(f"fork.parent.{type(obj).__name__}"):
                after()


def _after_in_child() -> None:
    from . import _safety

    for obj in list(_objects):
        with _safety.internal_errors(f"fork.{type(obj).__name__}"):  # one failing, not all
            obj._after_fork()


os.register_at_fork(
    before=_before, after_in_parent=_after_in_parent, after_in_child=_after_in_child
)
