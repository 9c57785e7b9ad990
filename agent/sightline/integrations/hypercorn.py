"""hypercorn: the app it serves is measured, and its workers are one server.

hypercorn wraps the app it loads in an ``ASGIWrapper`` or ``WSGIWrapper`` (``hypercorn
app:app``, ``hypercorn.asyncio.serve(app, config)``, either worker class); their
``__init__`` is patched on the classes so that the app inside is measured whatever its
framework (see ``_served``): an app no framework integration records is wrapped in the
generic middleware, its requests ``_unmatched`` unless it is given a ``route_of``.

hypercorn starts its workers (``--workers N``, 1 by default) as fresh processes
(multiprocessing's spawn), each loading the app; ``sightline run`` starts the agent in
each worker, not in hypercorn's own process. With more than one worker, the worker's
parent is the server and the agent merges the workers' metrics (see ``_multiprocess``);
``--workers 0`` serves from hypercorn's own process, an ordinary single process.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import TYPE_CHECKING, Any

from .._multiprocess import Server
from . import _served
from ._base import DidNotEnable, Integration, Patch

try:
    from hypercorn.app_wrappers import ASGIWrapper, WSGIWrapper
    from hypercorn.config import Config
except ImportError:
    raise DidNotEnable("hypercorn is not installed") from None

if TYPE_CHECKING:
    from .._agent import Agent


def _init(kind: _served.Protocol) -> Any:
    """The wrapper of an app wrapper's ``__init__``: the app it is given, measured."""

    def wrap(original: Any) -> Any:
        def __init__(self: Any, app: Any, *args: Any, **kwargs: Any) -> None:
            original(self, _served.measured(app, kind), *args, **kwargs)

        return __init__

    return wrap


def find_config() -> Any | None:
    """The hypercorn ``Config`` of the worker starting up (a ``config`` argument on the
    call stack, or the one the spawned worker process was given), if any."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        local = frame.f_locals
        config = local.get("config")
        if isinstance(config, Config):
            return config
        process = local.get("self")
        if isinstance(process, BaseProcess):
            config = getattr(process, "_kwargs", {}).get("config")
            if isinstance(config, Config):
                return config
        frame = frame.f_back
    return None


class HypercornIntegration(Integration):
    name = "hypercorn"
    library = "hypercorn"
    minimum_version = "0.17"
    patches = (
        Patch(ASGIWrapper, "__init__", _init("asgi")),
        Patch(WSGIWrapper, "__init__", _init("wsgi")),
    )

    def install(self, agent: Agent) -> None:
        super().install(agent)
        config = find_config()
        workers = int(getattr(config, "workers", 0) or 0)
        if workers > 1 and multiprocessing.parent_process() is not None and agent.server is None:
            agent.server = Server("hypercorn", os.getppid(), workers=workers)


INTEGRATION = HypercornIntegration
