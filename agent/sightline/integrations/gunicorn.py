"""gunicorn: which server this process belongs to, and what one worker can serve.

``init()`` runs while gunicorn loads the app (in the worker, or in the master with
``--preload``), so the gunicorn objects loading it are on the call stack; their
``cfg`` answers once, at install time. The integration reports the server to the
agent, which then merges the metrics of all its workers (see ``_multiprocess``):
a worker's server is its parent, the master; with ``--preload`` this is the master.

Utilisation is in-flight requests over capacity, and capacity depends on the worker
class: a sync worker serves one request, a gthread worker ``--threads``, an async
worker (gevent, eventlet, uvicorn) up to ``--worker-connections``.
``SIGHTLINE_WORKER_CAPACITY`` overrides what is detected.
"""

from __future__ import annotations

import os
import sys
from types import FrameType
from typing import TYPE_CHECKING, Any

from .._multiprocess import Server
from ._base import DidNotEnable, Integration

try:
    from gunicorn.arbiter import Arbiter
    from gunicorn.workers.base import Worker
except ImportError:
    raise DidNotEnable("gunicorn is not installed") from None

if TYPE_CHECKING:
    from .._agent import Agent


def capacity_from_config(cfg: Any) -> int:
    """Concurrent requests one worker with this gunicorn config can serve."""
    worker_class = str(getattr(cfg, "worker_class_str", "sync")).lower()
    threads = max(1, int(getattr(cfg, "threads", 1)))
    if worker_class in ("sync", "gthread") or worker_class.endswith(".gthread.threadworker"):
        # gunicorn itself runs a "sync" worker with --threads > 1 as gthread.
        return threads
    return max(1, int(getattr(cfg, "worker_connections", 1000)))


def find_config() -> tuple[Any, bool, int] | None:
    """The ``cfg`` of the gunicorn objects running us, whether this process is a worker
    (rather than the master: ``--preload``, an ``on_starting`` hook), and the master's
    pid; None outside gunicorn.

    A worker is known where gunicorn made it: a ``Worker`` on the stack (the app loading,
    ``post_worker_init``), or the arbiter's ``spawn_worker`` in a process that is not the
    arbiter (a ``post_fork`` hook). Never by being a fork: a worker's own child is not
    a worker."""
    frame: FrameType | None = sys._getframe(1)
    cfg: Any = None
    in_worker = False
    master = os.getpid()
    while frame is not None:
        candidate: Any = frame.f_locals.get("self")
        if isinstance(candidate, Worker):  # also uvicorn's UvicornWorker, a subclass
            in_worker = True
            master = int(getattr(candidate, "ppid", None) or os.getppid())
        elif isinstance(candidate, Arbiter) and not in_worker:
            pid = getattr(candidate, "pid", None)
            if isinstance(pid, int) and pid != os.getpid():  # forked by it: a new worker
                in_worker, master = True, pid
        if cfg is None and type(candidate).__module__.startswith("gunicorn."):
            found = getattr(candidate, "cfg", None)
            if found is not None and hasattr(found, "worker_class_str"):
                cfg = found
        frame = frame.f_back
    return (cfg, in_worker, master) if cfg is not None else None


class GunicornIntegration(Integration):
    name = "gunicorn"
    library = "gunicorn"
    minimum_version = "21"

    def install(self, agent: Agent) -> None:
        super().install(agent)  # no patches: detection adds no hooks
        found = find_config()
        if found is None:
            return
        cfg, in_worker, master = found
        if agent.server is None:
            agent.server = Server(
                "gunicorn", master, workers=int(getattr(cfg, "workers", 1)), worker=in_worker
            )
        if agent.settings.worker_capacity is None:
            agent.detected_capacity = capacity_from_config(cfg)


INTEGRATION = GunicornIntegration
