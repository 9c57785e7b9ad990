"""Litestar: every app goes through the ASGI core, with Litestar's own route templates.

``Litestar.__call__`` is patched on the class, so apps created before or after
``init()`` are covered and the core sits outside every Litestar middleware. Litestar's
router leaves the matched route's template in ``scope["path_template"]`` (router
prefixes joined, parameter types left out: ``/api/{version}/items/{name}``); a request
answered by a mounted ASGI app (``@asgi(path, is_mount=True)``, static files) has none
there and is labelled ``<mount>/{path:path}``. A 404 or 405 is ``_unmatched``.
"""

from __future__ import annotations

from typing import Any

from ._base import DidNotEnable, Integration, Patch
from .asgi import Scope, app_call

try:
    from litestar import Litestar
except ImportError:
    raise DidNotEnable("litestar is not installed") from None

#: The template of each mounted handler seen, found once among its app's routes (by id:
#: handlers take no weak references; the handler is kept to tell a reused id).
_mounts: dict[int, tuple[Any, str]] = {}


def route_of(scope: Scope) -> str | None:
    template = scope.get("path_template")
    if template:
        return template  # type: ignore[no-any-return]
    handler = scope.get("route_handler")
    if handler is None or not getattr(handler, "is_mount", False):
        return None
    found = _mounts.get(id(handler))
    if found is not None and found[0] is handler:
        return found[1]
    # A mount's template is its route's full path (router prefixes joined).
    app = scope.get("litestar_app")
    routes = getattr(app, "routes", ())
    paths = [r.path for r in routes if getattr(r, "route_handler", None) is handler]
    if not paths:
        return None
    if len(_mounts) >= 1000:  # apps created over and over (tests): start afresh
        _mounts.clear()
    template = f"{paths[0].rstrip('/')}/{{path:path}}"
    _mounts[id(handler)] = (handler, template)
    return template


class LitestarIntegration(Integration):
    name = "litestar"
    library = "litestar"
    minimum_version = "2.25"
    # Patched on the class (never by swapping litestar.Litestar), see flask.py.
    patches = (Patch(Litestar, "__call__", app_call(route_of)),)

    def uninstall(self) -> None:
        super().uninstall()
        _mounts.clear()


INTEGRATION = LitestarIntegration
