"""Starlette and FastAPI: every app goes through the ASGI core.

``Starlette.__call__`` is patched on the class (FastAPI's own ``__call__`` ends in it),
so apps created before or after ``init()`` are covered and the core sits outside every
user middleware. The route template is read from the scope once the response is sent:
Starlette's router leaves the matched route in ``scope["route"]``; each ``Mount`` a
request passes adds its path *template* (``Mount.handle`` is patched for that, since
``root_path`` holds the matched values, e.g. a tenant name). A request answered by a
mounted app without routes of its own (static files, a wrapped WSGI app) is labelled
``<mount>/{path:path}``.

FastAPI's router (0.12x and later) no longer leaves every route in ``scope["route"]``
(not ``add_route()`` routes, nor its own ``/docs`` and ``/openapi.json``), and a route
of a router included with a prefix keeps its path without that prefix. It reports each
route it selects, with its full template, to the request-telemetry object FastAPI reads
from ``scope["fastapi.telemetry"]``; Sightline puts its own there (:func:`_selection`),
which also keeps FastAPI's built-in telemetry from recording the request a second time.
"""

from __future__ import annotations

import sys
from typing import Any

from .. import _state
from ._base import DidNotEnable, Integration, Patch
from .asgi import SEEN, Receive, Scope, Send, app_call

try:
    from starlette.applications import Starlette
    from starlette.routing import Mount
except ImportError:
    raise DidNotEnable("starlette is not installed") from None

#: The path templates of the mounts a request went through, joined.
MOUNTS = "sightline.mounts"
_FASTAPI_TELEMETRY = "fastapi.telemetry"
#: The class of the route-selection record FastAPI's router fills in (None: this FastAPI
#: reports no selections, or FastAPI is not imported).
_selection_class: Any = None


def route_of(scope: Scope) -> str | None:
    selection = scope.get(_FASTAPI_TELEMETRY)
    if selection is not None and type(selection) is _selection_class:
        if selection.template is None:
            if selection.nested:  # a mounted FastAPI app matched nothing: a 404
                return None
        # After a mount FastAPI selected, a Starlette router inside the mounted app that
        # matched a route of its own names the request (FastAPI only saw the mount).
        elif (
            selection.mounted != selection.selected
            or scope.get("route") is selection.route_at_mount
        ):
            return selection.template  # type: ignore[no-any-return]
    route = scope.get("route")
    path = getattr(route, "path", None)
    if not isinstance(path, str):
        return None
    prefix = scope.get(MOUNTS, "")
    if isinstance(route, Mount):  # its path is in the prefix already
        return f"{prefix}/{{path:path}}"
    return prefix + path  # type: ignore[no-any-return]


def _selection(base: Any) -> Any:
    """The class of Sightline's record of what FastAPI's router selects.

    FastAPI's router reports each selection to ``scope["fastapi.telemetry"]`` when that
    is a ``_RequestTelemetry``: it sets ``route`` to the full template (prefixes of
    included routers and FastAPI mounts joined) and, for a mount, first grows
    ``_mount_prefix``. Properties catch both; nothing else of FastAPI's telemetry runs.
    """

    class Selection(base):  # type: ignore[misc]
        # Not a dataclass: only the fields FastAPI's router and error path touch.
        def __init__(self, prefix: str) -> None:
            self.span = None
            self.span_method = ""
            self.data = None
            self._exceptions: list[BaseException] = []
            self.rebase(prefix)
            self.nested = False  # whether this is a FastAPI app mounted in another app

        def rebase(self, prefix: str) -> None:
            """Start over for a FastAPI app mounted at ``prefix`` (the mounts outside it)."""
            self.nested = True
            self.prefix = prefix
            self.inner = ""  # FastAPI's own mount prefix within this app
            self.template: str | None = None
            self.last: str | None = None
            self.mount: str | None = None  # a mount just selected, for Mount.handle
            self.selected = 0  # selections so far
            self.mounted = -1  # selections when a mount was last entered
            self.route_at_mount: Any = None  # scope["route"] then

        @property
        def _mount_prefix(self) -> str:
            return self.inner

        @_mount_prefix.setter
        def _mount_prefix(self, value: str) -> None:
            self.inner = value
            self.mount = self.prefix + value

        @property
        def route(self) -> str | None:
            return self.last

        @route.setter
        def route(self, value: str | None) -> None:
            self.last = value
            if value is not None:
                self.template = self.prefix + value
                self.selected += 1

    return Selection


def _mount_handle(original: Any) -> Any:
    async def mount_handle(self: Mount, scope: Scope, receive: Receive, send: Send) -> None:
        if SEEN in scope:
            selection = scope.get(_FASTAPI_TELEMETRY)
            if selection is not None and type(selection) is _selection_class:
                # FastAPI knows the mount's full template (an included router's prefix too).
                mount, selection.mount = selection.mount, None
                scope[MOUNTS] = mount if mount is not None else scope.get(MOUNTS, "") + self.path
                # See route_of: a Starlette router inside the mount may match a route.
                selection.mounted = selection.selected
                selection.route_at_mount = scope.get("route")
            else:
                scope[MOUNTS] = scope.get(MOUNTS, "") + self.path
        await original(self, scope, receive, send)

    return mount_handle


def _fastapi_call(original: Any) -> Any:
    # The record of FastAPI's selections is made for this FastAPI, when it is patched.
    global _selection_class
    base = _selection_base()
    _selection_class = _selection(base) if base is not None else None

    async def __call__(self: Any, scope: Scope, receive: Receive, send: Send) -> None:
        # FastAPI's built-in telemetry switches itself on once a tracer provider exists (as
        # Sightline's does) and would record every request a second time; any value under
        # this key is the marker FastAPI itself sets to keep an app from observing a
        # request again. Sightline's value records the routes FastAPI's router selects.
        if _state.current is not None and scope.get("type") == "http":
            selection = scope.get(_FASTAPI_TELEMETRY, _NONE)
            if selection is _NONE:
                cls = _selection_class
                scope[_FASTAPI_TELEMETRY] = cls(scope.get(MOUNTS, "")) if cls is not None else None
            elif selection is not None and type(selection) is _selection_class:
                selection.rebase(scope.get(MOUNTS, ""))  # a FastAPI app mounted in another
        await original(self, scope, receive, send)

    return __call__


_NONE = object()


def _selection_base() -> Any:
    """FastAPI's request-telemetry class, if this FastAPI's router reports selections to it."""
    routing = sys.modules.get("fastapi.routing")
    telemetry = sys.modules.get("fastapi.telemetry._api")
    if routing is None or telemetry is None or not hasattr(routing, "_route_selected"):
        return None
    return getattr(telemetry, "_RequestTelemetry", None)


def _fastapi_class() -> Any:
    """FastAPI's app class if the app imported FastAPI (never imported from here).

    Installing runs again once ``fastapi`` has been imported, which happens after
    Starlette's import when FastAPI is what imports Starlette.
    """
    return getattr(sys.modules.get("fastapi.applications"), "FastAPI", None)


class StarletteIntegration(Integration):
    name = "starlette"
    library = "starlette"
    minimum_version = "0.27"
    # Patched on the classes (never by swapping module attributes); what was there at
    # install time, perhaps another library's patch, is what uninstall restores. FastAPI
    # is patched once the app has imported it (install runs again then).
    patches = (
        Patch(Starlette, "__call__", app_call(route_of)),
        Patch(Mount, "handle", _mount_handle),
        Patch(_fastapi_class, "__call__", _fastapi_call),
    )

    def uninstall(self) -> None:
        super().uninstall()
        global _selection_class
        _selection_class = None


INTEGRATION = StarletteIntegration
