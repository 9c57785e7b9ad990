"""Starlette and FastAPI: every app goes through the ASGI core.

``Starlette.__call__`` is patched on the class (FastAPI's own ``__call__`` ends in it),
so apps created before or after ``init()`` are covered and the core sits outside every
user middleware. The route template is read from the scope once the response is sent:
Starlette's router leaves the matched route in ``scope["route"]``; each ``Mount`` a
request passes adds its path *template* (``Mount.handle`` is patched for that, since
``root_path`` holds the matched values, e.g. a tenant name); FastAPI's ``APIRouter``
prefixes are already part of each route's path. A request answered by a mounted app
without routes of its own (static files, a wrapped WSGI app) is labelled
``<mount>/{path:path}``.
"""

from __future__ import annotations

import sys
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

#: The path templates of the mounts a request went through, joined.
MOUNTS = "sightline.mounts"
_FASTAPI_TELEMETRY = "fastapi.telemetry"
# What install() replaced, restored by uninstall(); read by the patched methods.
_saved: dict[str, Any] = {}


def route_of(scope: Scope) -> str | None:
    route = scope.get("route")
    path = getattr(route, "path", None)
    if not isinstance(path, str):
        return None
    prefix = scope.get(MOUNTS, "")
    if isinstance(route, Mount):  # its path is in the prefix already
        return f"{prefix}/{{path:path}}"
    return prefix + path  # type: ignore[no-any-return]


async def _call(self: Starlette, scope: Scope, receive: Receive, send: Send) -> None:
    original = _saved["starlette"]
    agent = _agent.current
    if agent is None or scope.get("type") != "http" or SEEN in scope:
        await original(self, scope, receive, send)
        return
    await handle(agent, original.__get__(self), scope, receive, send, route_of)


async def _mount_handle(self: Mount, scope: Scope, receive: Receive, send: Send) -> None:
    if SEEN in scope:
        scope[MOUNTS] = scope.get(MOUNTS, "") + self.path
    await _saved["mount"](self, scope, receive, send)


async def _fastapi_call(self: Any, scope: Scope, receive: Receive, send: Send) -> None:
    # FastAPI's built-in telemetry switches itself on once a tracer provider exists (as
    # Sightline's does) and would record every request a second time; this is the scope
    # marker FastAPI itself sets to keep mounted apps from observing a request again.
    if _agent.current is not None and scope.get("type") == "http":
        scope.setdefault(_FASTAPI_TELEMETRY, None)
    await _saved["fastapi"](self, scope, receive, send)


def _fastapi_class() -> Any:
    """FastAPI's app class if the app imported FastAPI (never imported from here).

    Installing runs again once ``fastapi`` has been imported, which happens after
    Starlette's import when FastAPI is what imports Starlette.
    """
    return getattr(sys.modules.get("fastapi.applications"), "FastAPI", None)


class StarletteIntegration(Integration):
    name = "starlette"

    def install(self, agent: Agent) -> None:
        # Patched on the classes (never by swapping module attributes); what was there
        # at install time, perhaps another library's patch, is what uninstall restores.
        if Starlette.__call__ is not _call:
            _saved["starlette"] = Starlette.__call__
            _saved["mount"] = Mount.handle
            Starlette.__call__ = _call  # type: ignore[method-assign]
            Mount.handle = _mount_handle  # type: ignore[method-assign]
        fastapi = _fastapi_class()
        if fastapi is not None and fastapi.__call__ is not _fastapi_call:
            _saved["fastapi"] = fastapi.__call__
            fastapi.__call__ = _fastapi_call

    def uninstall(self) -> None:
        if Starlette.__call__ is _call:
            Starlette.__call__ = _saved["starlette"]  # type: ignore[method-assign]
        if Mount.handle is _mount_handle:
            Mount.handle = _saved["mount"]  # type: ignore[method-assign]
        fastapi = _fastapi_class()
        if fastapi is not None and fastapi.__call__ is _fastapi_call:
            fastapi.__call__ = _saved["fastapi"]


INTEGRATION = StarletteIntegration
