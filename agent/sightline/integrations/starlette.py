"""Starlette and FastAPI: every app goes through the ASGI core.

``Starlette.__call__`` is patched on the class (FastAPI's own ``__call__`` ends in it),
so apps created before or after ``init()`` are covered and the core sits outside every
user middleware. The route template is read from the scope once the response is sent:
Starlette's router leaves the matched route in ``scope["route"]``, and mounts add
their prefix to ``root_path``; FastAPI's ``APIRouter`` prefixes are already part of
each route's path. A request answered by a mounted app that has no routes of its own
(static files, a wrapped WSGI app) is labelled ``<mount>/{path:path}``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import _agent
from . import DidNotEnable, Integration
from .asgi import SEEN, Receive, Scope, Send, handle

try:
    from starlette.applications import Starlette
    from starlette.routing import Mount
except ImportError:
    raise DidNotEnable("starlette is not installed") from None

if TYPE_CHECKING:
    from .._agent import Agent

_original_call = Starlette.__call__
_FASTAPI_TELEMETRY = "fastapi.telemetry"


def route_of(scope: Scope) -> str | None:
    route = scope.get("route")
    path = getattr(route, "path", None)
    if not isinstance(path, str):
        return None
    root = scope.get("root_path", "")
    prefix = root[len(scope.get("app_root_path", "")) :] if root else ""
    if isinstance(route, Mount):
        return f"{prefix}/{{path:path}}"
    return prefix + path


async def _call(self: Starlette, scope: Scope, receive: Receive, send: Send) -> None:
    agent = _agent.current
    if agent is None or scope.get("type") != "http" or SEEN in scope:
        await _original_call(self, scope, receive, send)
        return
    await handle(agent, _original_call.__get__(self), scope, receive, send, route_of)


_fastapi: Any
try:
    from fastapi import FastAPI as _fastapi

    _original_fastapi_call: Any = _fastapi.__call__
except ImportError:
    _fastapi = None


async def _fastapi_call(self: Any, scope: Scope, receive: Receive, send: Send) -> None:
    # FastAPI's built-in telemetry switches itself on once a tracer provider exists (as
    # Sightline's does) and would record every request a second time; this is the scope
    # marker FastAPI itself sets to keep mounted apps from observing a request again.
    if _agent.current is not None and scope.get("type") == "http":
        scope.setdefault(_FASTAPI_TELEMETRY, None)
    await _original_fastapi_call(self, scope, receive, send)


class StarletteIntegration(Integration):
    name = "starlette"

    def __init__(self) -> None:
        self._patched = False

    def install(self, agent: Agent) -> None:
        if Starlette.__call__ is _call:
            return
        Starlette.__call__ = _call  # type: ignore[method-assign]
        if _fastapi is not None:
            _fastapi.__call__ = _fastapi_call
        self._patched = True

    def uninstall(self) -> None:
        if self._patched and Starlette.__call__ is _call:
            Starlette.__call__ = _original_call  # type: ignore[method-assign]
        if self._patched and _fastapi is not None and _fastapi.__call__ is _fastapi_call:
            _fastapi.__call__ = _original_fastapi_call
        self._patched = False


INTEGRATION = StarletteIntegration
