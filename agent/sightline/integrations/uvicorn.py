"""uvicorn: whether this process is one of ``uvicorn --workers N``'s workers.

With ``--workers`` above 1, uvicorn's supervisor starts each worker as a fresh Python
process that imports the app inside ``Config.load()``, so the ``Config`` is on the
call stack when ``init()`` runs there. The integration reports the server (the
supervisor is the worker's parent) and the agent merges the workers' metrics (see
``_multiprocess``). A single uvicorn process is an ordinary single process. With
``--limit-concurrency``, that limit is a worker's capacity.

uvicorn ends a process stopped by a signal by raising that signal again once it has
shut down, which kills the process without running ``atexit`` handlers. So
``Server.shutdown`` is patched: once uvicorn's own shutdown is done, Sightline's runs
(spans and logs flushed, the last metrics snapshot written), within its usual budget.
"""

from __future__ import annotations

import os
import sys
from types import FrameType
from typing import TYPE_CHECKING, Any

from .. import _safety, _state
from .._multiprocess import Server
from ._base import DidNotEnable, Integration, Patch

try:
    from uvicorn.config import Config
    from uvicorn.server import Server as UvicornServer
except ImportError:
    raise DidNotEnable("uvicorn is not installed") from None

if TYPE_CHECKING:
    from .._agent import Agent


def find_config() -> Any | None:
    """The uvicorn ``Config`` loading the app, if uvicorn is loading it."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, Config):
            return candidate
        frame = frame.f_back
    return None


def _shutdown(original: Any) -> Any:
    async def shutdown(self: UvicornServer, *args: Any, **kwargs: Any) -> None:
        try:
            await original(self, *args, **kwargs)
        finally:
            if _state.current is not None:
                with _safety.internal_errors("uvicorn.shutdown"):
                    _state.stop()

    return shutdown


class UvicornIntegration(Integration):
    name = "uvicorn"
    library = "uvicorn"
    minimum_version = "0.23"
    patches = (Patch(UvicornServer, "shutdown", _shutdown),)

    def install(self, agent: Agent) -> None:
        super().install(agent)
        config = find_config()
        if config is None:
            return
        workers = int(getattr(config, "workers", None) or 1)
        if workers > 1 and agent.server is None:
            agent.server = Server("uvicorn", os.getppid(), workers=workers)
        limit = getattr(config, "limit_concurrency", None)
        if agent.settings.worker_capacity is None and agent.detected_capacity is None and limit:
            agent.detected_capacity = int(limit)


INTEGRATION = UvicornIntegration
