"""Quart: every app goes through the ASGI core, with Quart's rule as the route template.

``Quart.__call__`` is patched on the class, so apps created before or after ``init()``
are covered and middleware the app wraps around ``app.asgi_app`` is timed too. The
template is taken where Quart matches the URL (``match_request`` of its request
context, as for Flask) and left in the scope for the core: blueprint prefixes are part
of the rule (``/api/users/<int:uid>``). No Quart hooks or ``request`` proxies run per
request.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import _state
from ._base import DidNotEnable, Integration
from .asgi import SEEN, Receive, Scope, Send, handle, route_in_scope
from .wsgi import ROUTE

try:
    from quart import Quart
    from quart.ctx import RequestContext
except ImportError:
    raise DidNotEnable("quart is not installed") from None

# match_request is defined on the base of the request and websocket contexts.
_MATCHER: Any = next((c for c in RequestContext.__mro__ if "match_request" in vars(c)), None)
if _MATCHER is None:
    raise DidNotEnable("this Quart version has no match_request")

if TYPE_CHECKING:
    from .._agent import Agent

# What install() replaced (perhaps another library's patch), restored by uninstall().
_saved: dict[str, Any] = {}


async def _call(self: Quart, scope: Scope, receive: Receive, send: Send) -> None:
    original = _saved["call"]
    agent = _state.current
    if agent is None or scope.get("type") != "http" or SEEN in scope:
        await original(self, scope, receive, send)
        return
    await handle(agent, original.__get__(self), scope, receive, send, route_in_scope)


def _match_request(self: Any) -> None:
    _saved["match_request"](self)
    request = self.request_websocket
    rule = request.url_rule
    if rule is not None:
        request.scope[ROUTE] = rule.rule


class QuartIntegration(Integration):
    name = "quart"

    def install(self, agent: Agent) -> None:
        # Patched on the classes (never by swapping quart.Quart), see flask.py.
        if Quart.__call__ is not _call:
            _saved["call"] = Quart.__call__
            _saved["match_request"] = _MATCHER.match_request
            Quart.__call__ = _call  # type: ignore[method-assign,assignment]
            _MATCHER.match_request = _match_request

    def uninstall(self) -> None:
        if Quart.__call__ is _call:
            Quart.__call__ = _saved["call"]  # type: ignore[method-assign]
        if _MATCHER.match_request is _match_request:
            _MATCHER.match_request = _saved["match_request"]


INTEGRATION = QuartIntegration
