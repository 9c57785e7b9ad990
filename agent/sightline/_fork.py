"""Fork safety: objects holding locks or threads are renewed in a forked child.

A lock held by another thread at the moment of fork stays locked forever in the child
(only the forking thread survives), so a pre-forking server (gunicorn --preload) could
hang a worker on its first request. Objects register here and get ``_after_fork()``
called in the child before any of its code runs.

Processes the agent starts from a background thread go through :func:`spawn`, kept apart
from forks of other threads (see there).
"""

from __future__ import annotations

import os
import subprocess
import threading
import weakref
from typing import Any

_objects: weakref.WeakSet[Any] = weakref.WeakSet()
#: Held while :func:`spawn` starts a process; a fork waits for it (at most SPAWN_WAIT).
_spawning = threading.Lock()
_spawner: int | None = None
_spawn_held = False
SPAWN_WAIT = 2.0


def spawn(command: list[str], **options: Any) -> subprocess.Popen[bytes]:
    """``subprocess.Popen(command, **options)``, never concurrent with a fork of this process.

    Popen learns that its child has exec'ed when the write end of a pipe closes. A fork
    made by another thread meanwhile (gunicorn's master forking a worker while the
    agent starts a helper) copies that write end into a process that never execs, so
    Popen would wait as long as the worker lives, and the thread that called it with it.
    Forks wait for a spawn in progress (at most :data:`SPAWN_WAIT`).
    """
    global _spawner
    with _spawning:
        _spawner = threading.get_ident()
        try:
            return subprocess.Popen(command, **options)
        finally:
            _spawner = None


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
    global _spawn_held
    if _spawner != threading.get_ident():  # Popen itself forking never waits for itself
        _spawn_held = _spawning.acquire(timeout=SPAWN_WAIT)
    _each("_before_fork", "before")


def _release_spawning() -> None:
    global _spawn_held
    if _spawn_held:
        _spawn_held = False
        _spawning.release()


def _after_in_parent() -> None:
    _release_spawning()
    _each("_after_fork_in_parent", "parent")


def _after_in_child() -> None:
    global _spawning, _spawner, _spawn_held
    # A new lock: the old one may be held by a spawning thread this process does not have.
    _spawning, _spawner, _spawn_held = threading.Lock(), None, False
    _each("_after_fork", "child")


os.register_at_fork(
    before=_before, after_in_parent=_after_in_parent, after_in_child=_after_in_child
)
