"""waitress: the app it serves is measured, and its threads are the process's capacity.

Every way of starting waitress (``waitress-serve app:app``, ``waitress.serve(app)``,
PasteDeploy's ``egg:waitress#main`` under ``pserve``) makes its listening servers through
``BaseWSGIServer.__init__``, which is patched so that the app it is given is measured
whatever its framework (see ``_served``): an app no framework integration records (a
Pyramid app, a bare WSGI callable) is wrapped in the generic middleware, its requests
``_unmatched`` unless it is given a ``route_of``. waitress runs ``threads`` requests at
once (4 by default) in one process: that is its worker capacity, unless
SIGHTLINE_WORKER_CAPACITY says otherwise.
"""

from __future__ import annotations

from typing import Any

from .. import _safety, _state
from . import _served
from ._base import DidNotEnable, Integration, Patch

try:
    from waitress.server import BaseWSGIServer
except ImportError:
    raise DidNotEnable("waitress is not installed") from None


def _init(original: Any) -> Any:
    def __init__(self: Any, application: Any, *args: Any, **kwargs: Any) -> None:
        original(self, _served.measured(application, "wsgi"), *args, **kwargs)
        agent = _state.current
        if agent is None or agent.settings.worker_capacity is not None:
            return
        with _safety.internal_errors("waitress.capacity"):
            threads = int(getattr(getattr(self, "adj", None), "threads", 0) or 0)
            if threads:
                agent.detected_capacity = threads

    __init__.__wrapped__ = original  # type: ignore[attr-defined]
    return __init__


class WaitressIntegration(Integration):
    name = "waitress"
    library = "waitress"
    minimum_version = "2.0"
    patches = (Patch(BaseWSGIServer, "__init__", _init),)


INTEGRATION = WaitressIntegration
