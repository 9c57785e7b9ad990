"""gunicorn: learn how many requests this worker can serve at once.

Utilisation is in-flight requests over capacity, and capacity depends on the worker
class: a sync worker serves one request, a gthread worker ``--threads``, an async
worker (gevent, eventlet, uvicorn) up to ``--worker-connections``. ``init()`` runs
while gunicorn loads the app (in the worker, or in the master with ``--preload``), so
the gunicorn object loading it is on the call stack; its ``cfg`` answers once, at
install time. ``SIGHTLINE_WORKER_CAPACITY`` overrides what is detected.
"""

from __future__ import annotations

import sys
from types import FrameType
from typing import TYPE_CHECKING, Any

from . import DidNotEnable, Integration

try:
    import gunicorn  # noqa: F401 (only its presence is needed)
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


def find_config() -> Any | None:
    """The ``cfg`` of the gunicorn object (worker, arbiter or app) loading us, if any."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        candidate: Any = frame.f_locals.get("self")
        module = type(candidate).__module__
        if module.startswith("gunicorn.") and hasattr(candidate, "cfg"):
            cfg = candidate.cfg
            if cfg is not None and hasattr(cfg, "worker_class_str"):
                return cfg
        frame = frame.f_back
    return None


class GunicornIntegration(Integration):
    name = "gunicorn"

    def install(self, agent: Agent) -> None:
        if agent.settings.worker_capacity is not None:
            return
        cfg = find_config()
        if cfg is not None:
            agent.detected_capacity = capacity_from_config(cfg)

    def uninstall(self) -> None:
        """Nothing to undo: detection adds no hooks."""


INTEGRATION = GunicornIntegration
