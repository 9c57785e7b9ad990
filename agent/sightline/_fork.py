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


def _each(method: str, where: str) -> None:
    """Call ``method`` of every tracked object that has it; one failing does not stop the rest."""
    from . import _safety

    for obj in list(_objects):
        call = getattr(obj, method, None)
        if call is not None:
            with _safety.internal_errors(f"fork.{where}.{type(obj).__name__}"):
                call()


def _before() -> None:
    _each("_before_fork", "before")


def _after_in_parent() -> None:
    _each("_after_fork_in_parent", "parent")


def _after_in_child() -> None:
    _each("_after_fork", "child")


os.register_at_fork(
    before=_before, after_in_parent=_after_in_parent, after_in_child=_after_in_child
)
