"""Fork safety: objects holding locks or threads are renewed in a forked child.

A lock held by another thread at the moment of fork stays locked forever in the child
(only the forking thread survives), so a pre-forking server (gunicorn --preload) could
hang a worker on its first request. Objects register here and get ``_after_fork()``
called in the child before any of its code runs.

What a background thread must not be forked in the middle of (starting a process,
importing a module) runs in :func:`exclusive`, which forks wait for.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import threading
import weakref
from collections.abc import Iterator
from types import ModuleType
from typing import TYPE_CHECKING, Any

from . import _safety

if TYPE_CHECKING:
    import subprocess

_objects: weakref.WeakSet[Any] = weakref.WeakSet()
#: Held while a thread does what a fork must not cut in half (:func:`exclusive`); a fork
#: by another thread waits for it, at most FORK_WAIT.
_exclusive = threading.RLock()
_held_for_fork = False
FORK_WAIT = 2.0
#: ``subprocess.DEVNULL``, without loading ``subprocess`` (which :func:`spawn` loads).
DEVNULL = -3


@contextlib.contextmanager
def exclusive() -> Iterator[None]:
    """Keep forks of this process out of the block, which another thread runs.

    For work whose half-done state a forked child would inherit for good: a module
    being imported (its import lock, held in the child for ever) or a process being
    started (see :func:`spawn`). A fork waits for the block to end, at most
    :data:`FORK_WAIT`.
    """
    with _exclusive:
        yield


def load(name: str) -> ModuleType:
    """Module ``name``, imported now (in :func:`exclusive`) if no thread has finished
    importing it: what the agent loads on first use, from whatever thread uses it.

    Not for a callback run while a module is being imported (an import watcher's): a
    thread importing ``name`` here inside :func:`exclusive` would wait for that import,
    and that import for the lock.
    """
    module = sys.modules.get(name)
    spec = getattr(module, "__spec__", None)
    if module is not None and not getattr(spec, "_initializing", False):
        return module
    with exclusive():
        return importlib.import_module(name)


def spawn(command: list[str], **options: Any) -> subprocess.Popen[bytes]:
    """``subprocess.Popen(command, **options)``, never concurrent with a fork of this process.

    Popen learns that its child has exec'ed when the write end of a pipe closes. A fork
    made by another thread meanwhile (gunicorn's master forking a worker while the
    agent starts a helper) copies that write end into a process that never execs, so
    Popen would wait as long as the worker lives, and the thread that called it with it.
    """
    with exclusive():
        popen: subprocess.Popen[bytes] = load("subprocess").Popen(command, **options)
        return popen


def track(obj: Any) -> None:
    """Call ``obj._after_fork()`` in every forked child while ``obj`` lives; and, if it has
    them, ``obj._before_fork()`` in the forking process just before the fork and
    ``obj._after_fork_in_parent()`` just after it (to keep a lock out of the fork)."""
    _objects.add(obj)


def _each(method: str, where: str) -> None:
    """Call ``method`` of every tracked object that has it; one failing does not stop the rest."""
    for obj in list(_objects):
        call = getattr(obj, method, None)
        if call is not None:
            with _safety.internal_errors(f"fork.{where}.{type(obj).__name__}"):
                call()


def _before() -> None:
    global _held_for_fork
    # Re-entrant: a thread forking inside its own exclusive block does not wait for itself.
    _held_for_fork = _exclusive.acquire(timeout=FORK_WAIT)
    if not _held_for_fork:
        _safety.report(
            "fork.exclusive",
            TimeoutError(
                f"a fork went ahead after waiting {FORK_WAIT:g} s for another thread to "
                "finish starting a process or importing a module; the child may hang on it"
            ),
        )
    _each("_before_fork", "before")


def _after_in_parent() -> None:
    global _held_for_fork
    if _held_for_fork:
        _held_for_fork = False
        _exclusive.release()
    _each("_after_fork_in_parent", "parent")


def _after_in_child() -> None:
    global _exclusive, _held_for_fork
    # A new lock: the old one may be held by a thread this process does not have.
    _exclusive, _held_for_fork = threading.RLock(), False
    _each("_after_fork", "child")


os.register_at_fork(
    before=_before, after_in_parent=_after_in_parent, after_in_child=_after_in_child
)
