"""Quart: every app goes through the ASGI core, with Quart's rule as the route template.

``Quart.__call__`` is patched on the class, so apps created before or after ``init()``
are covered and middleware the app wraps around ``app.asgi_app`` is timed too. The
template is taken where Quart matches the URL (``match_request`` of its request
context, as for Flask) and left in the scope for the core: blueprint prefixes are part
of the rule (``/api/users/<int:uid>``). No Quart hooks or ``request`` proxies run per
request.
"""

from __future__ import annotations

from typing import Any

from ._base import DidNotEnable, Integration, Patch
from .asgi import app_call, route_in_scope
from .wsgi import ROUTE

try:
    from quart import Quart
    from quart.ctx import RequestContext
except ImportError:
    raise DidNotEnable("quart is not installed") from None


def _matcher() -> Any:
    """The class defining ``match_request``: the base of the request and websocket contexts."""
    return next((c for c in RequestContext.__mro__ if "match_request" in vars(c)), None)


def _match_request(original: Any) -> Any:
    def match_request(self: Any) -> None:
        original(self)
        request = self.request_websocket
        rule = request.url_rule
        if rule is not None:
            request.scope[ROUTE] = rule.rule

    return match_request


class QuartIntegration(Integration):
    name = "quart"
    library = "quart"
    minimum_version = "0.20"
    # Patched on the classes (never by swapping quart.Quart), see flask.py.
    patches = (
        Patch(Quart, "__call__", app_call(route_in_scope)),
        Patch(_matcher, "match_request", _match_request),
    )


INTEGRATION = QuartIntegration
