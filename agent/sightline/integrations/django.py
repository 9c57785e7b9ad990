"""Django, WSGI and ASGI deployments: every request goes through the WSGI or ASGI core.

``WSGIHandler.__call__`` and ``ASGIHandler.__call__`` are patched on the classes, so
``init()`` may run in ``settings.py``, ``wsgi.py``, ``asgi.py`` or ``manage.py``,
before or after the handler exists. The route template is taken where Django resolves
the URL (``BaseHandler.resolve_request``, used by both handlers): ``ResolverMatch.route``
is the full pattern, prefixes from ``include()`` joined in (``api/users/<int:pk>/``),
left in the WSGI environ or the ASGI scope for the core. Exceptions Django turns
into its 500 page are recorded on the request's span through the
``got_request_exception`` signal, sent only on errors.

The ORM's statements (and raw ``connection.cursor()`` ones) are measured where every
backend runs them, ``CursorWrapper._execute_with_wrappers``:
``db_client_operation_duration_seconds`` by the backend's vendor (``postgresql``,
``sqlite``, ``mysql``, ``oracle.db``), the statement's first keyword and the driver's error
class. On psycopg 3 the driver's own integration counts them instead, once.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.semconv.attributes import error_attributes

from .. import _db, _safety, _state
from . import asgi
from ._base import DidNotEnable, Integration, Patch
from .wsgi import ROUTE, SEEN, handle

try:
    from django.core.handlers.asgi import ASGIHandler
    from django.core.handlers.base import BaseHandler
    from django.core.handlers.wsgi import WSGIHandler
    from django.core.signals import got_request_exception
    from django.db.backends.utils import CursorWrapper
except ImportError:
    raise DidNotEnable("django is not installed") from None

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

    from .._agent import Agent


def _call(original: Any) -> Any:
    def __call__(self: WSGIHandler, environ: WSGIEnvironment, start_response: StartResponse) -> Any:
        agent = _state.current
        if agent is None or SEEN in environ:
            return original(self, environ, start_response)
        return handle(agent, original.__get__(self), environ, start_response, None)

    return __call__


def _asgi_call(original: Any) -> Any:
    async def __call__(self: ASGIHandler, scope: Any, receive: Any, send: Any) -> None:
        agent = _state.current
        if agent is None or scope.get("type") != "http" or asgi.SEEN in scope:
            await original(self, scope, receive, send)
            return
        await asgi.handle(agent, original.__get__(self), scope, receive, send, _route_in_scope)

    return __call__


def _route_in_scope(scope: Any) -> str | None:
    route = scope.get(ROUTE)
    return route if isinstance(route, str) else None


def _resolve_request(original: Any) -> Any:
    def resolve_request(self: BaseHandler, request: Any) -> Any:
        match = original(self, request)
        route = getattr(match, "route", None)
        if route is not None:
            scope = getattr(request, "scope", None)  # an ASGIRequest keeps the server's scope
            if isinstance(scope, dict):
                scope[ROUTE] = route
            else:  # request.META is the WSGI environ the core reads after the response
                request.META[ROUTE] = route
        return match

    return resolve_request


def _record_exception(sender: Any, request: Any = None, **extra: Any) -> None:
    try:
        exception = sys.exc_info()[1]
        span = trace.get_current_span()
        if exception is not None and span.is_recording():
            span.record_exception(exception)
            span.set_attribute(error_attributes.ERROR_TYPE, type(exception).__qualname__)
    except Exception as exc:  # Django sends this signal unguarded: never break its 500 page
        _safety.report("django.exception", exc)


def _execute_with_wrappers(original: Any) -> Any:
    def execute(self: Any, sql: Any, params: Any, many: Any, executor: Any) -> Any:
        agent = _state.current
        if agent is None or _db.measured_by_driver(self.cursor):
            return original(self, sql, params, many, executor)
        start = time.perf_counter()
        try:
            result = original(self, sql, params, many, executor)
        except BaseException as exc:  # a cancelled async view's query included
            _statement(agent, self, sql, type(exc).__name__, start)
            raise
        _statement(agent, self, sql, "", start)
        return result

    return execute


def _statement(agent: Agent, wrapper: Any, sql: Any, error: str, start: float) -> None:
    seconds = time.perf_counter() - start
    with _safety.internal_errors("django.db"):
        system = _db.system(str(wrapper.db.vendor))
        _db.record(agent, system, _db.operation(sql), error, seconds, sql)


class DjangoIntegration(Integration):
    name = "django"
    library = "Django"
    minimum_version = "4.2"
    # Patched on the classes, never by swapping module attributes, so import order
    # does not matter (see the module docstring).
    patches = (
        Patch(WSGIHandler, "__call__", _call),
        Patch(ASGIHandler, "__call__", _asgi_call),
        Patch(BaseHandler, "resolve_request", _resolve_request),
        Patch(CursorWrapper, "_execute_with_wrappers", _execute_with_wrappers),
    )

    def install(self, agent: Agent) -> None:
        super().install(agent)
        got_request_exception.connect(_record_exception, dispatch_uid="sightline")

    def uninstall(self) -> None:
        got_request_exception.disconnect(dispatch_uid="sightline")
        super().uninstall()


INTEGRATION = DjangoIntegration
