"""The ASGI core: the same golden signals, span and access line as the WSGI core, for
``http`` scopes of any ASGI app, as pure ASGI middleware (no ``BaseHTTPMiddleware``).

A response is timed until its last body chunk is sent (``more_body`` false), so a
streaming response counts its whole stream. WebSocket connections and lifespan events
pass through untouched and are not counted as HTTP requests. Framework integrations
(Starlette/FastAPI, Litestar, Quart, Django) call :func:`handle` from the framework's own
``__call__`` and pass a function that reads the matched route template from the scope;
any ASGI app can be wrapped directly with ``sightline.instrument_app(app)``, and under
``sightline run`` every app a server loads is wrapped so (see ``_served``).

Each request is recorded once, by the outermost layer. When that is the generic
middleware and a framework's app sits inside it (a FastAPI app that a server wrapped, or
that the app wrapped by hand), the framework *claims* the request: :func:`handle` finds
the pending request in the scope and gives it the framework's ``route_of`` instead of
recording a second time. A request nothing claims, for an app given no ``route_of``, is
``_unmatched``, and that app's first such request logs one warning naming the fix.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from opentelemetry import context
from opentelemetry.semconv.attributes import (
    client_attributes,
    http_attributes,
    network_attributes,
    server_attributes,
    url_attributes,
    user_agent_attributes,
)

from .. import _safety, _state
from .._http import queue_seconds, redact_query
from ..metrics import KNOWN_METHODS, OTHER_METHOD, UNMATCHED_ROUTE
from .wsgi import ROUTE, Unnamed, _access_log

if TYPE_CHECKING:
    from .._agent import Agent

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
RouteOf = Callable[[Scope], "str | None"]

#: Set in the scope by the framework layer that records a request, or that claimed it
#: from the generic middleware outside: nested framework apps leave it alone.
SEEN = "sightline.recorded"
#: The request the generic middleware records, waiting for a framework to name its route.
PENDING = "sightline.pending"

_QUEUE_HEADERS = (b"x-request-start", b"x-queue-start")
_perf_counter = time.perf_counter


def header(headers: Any, name: bytes) -> str | None:
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")  # type: ignore[no-any-return]
    return None


def span_attributes(scope: Scope, method: str, redact: tuple[str, ...]) -> dict[str, Any]:
    """Stable HTTP server attributes of a request (built only for recording spans)."""
    headers = scope.get("headers") or ()
    attributes: dict[str, Any] = {
        http_attributes.HTTP_REQUEST_METHOD: method,
        url_attributes.URL_PATH: scope.get("path") or "/",
        url_attributes.URL_SCHEME: scope.get("scheme", "http"),
    }
    if method == OTHER_METHOD:
        attributes[http_attributes.HTTP_REQUEST_METHOD_ORIGINAL] = str(scope.get("method"))[:64]
    query = scope.get("query_string") or b""
    if query:
        attributes[url_attributes.URL_QUERY] = redact_query(query.decode("latin-1"), redact)
    host = header(headers, b"host")
    if host:
        name, sep, port = host.rpartition(":") if not host.endswith("]") else ("", "", "")
        if sep and port.isdigit():
            attributes[server_attributes.SERVER_ADDRESS] = name
            attributes[server_attributes.SERVER_PORT] = int(port)
        else:
            attributes[server_attributes.SERVER_ADDRESS] = host
    forwarded = header(headers, b"x-forwarded-for")
    client = scope.get("client")
    if forwarded:
        attributes[client_attributes.CLIENT_ADDRESS] = forwarded.split(",", 1)[0].strip()
    elif client:
        attributes[client_attributes.CLIENT_ADDRESS] = client[0]
    agent = header(headers, b"user-agent")
    if agent:
        attributes[user_agent_attributes.USER_AGENT_ORIGINAL] = agent
    version = scope.get("http_version")
    if version:
        attributes[network_attributes.NETWORK_PROTOCOL_VERSION] = version
    return attributes


def route_in_scope(scope: Scope) -> str | None:
    """The template a framework left in the scope under ``ROUTE`` (Quart, Django)."""
    route = scope.get(ROUTE)
    return route if isinstance(route, str) else None


class _Exchange:
    """One HTTP request in flight over ASGI; :meth:`finish` records it once."""

    __slots__ = (
        "agent",
        "framework",
        "framework_scope",
        "method",
        "route_of",
        "scope",
        "span",
        "started",
        "status",
        "token",
        "unnamed",
    )

    def __init__(
        self,
        agent: Agent,
        scope: Scope,
        route_of: RouteOf | None,
        unnamed: Unnamed | None = None,
    ) -> None:
        self.started = _perf_counter()
        self.agent: Agent | None = agent
        self.scope = scope
        self.route_of = route_of
        #: The route_of of the framework that claimed this request, and its scope (a
        #: middleware in between may have handed the framework a copy).
        self.framework: RouteOf | None = None
        self.framework_scope: Scope = scope
        self.unnamed = unnamed
        self.status: int | None = None
        self.span: Any = None
        self.token: object = None
        method = scope.get("method", "GET")
        if method not in KNOWN_METHODS:
            method = OTHER_METHOD
        self.method = method
        try:
            agent.metrics.requests_in_flight[id(self)] = self.started
            headers = scope.get("headers") or ()
            for name in _QUEUE_HEADERS:
                value = header(headers, name)
                if value:
                    waited = queue_seconds(value, time.time())
                    if waited is not None:
                        agent.metrics.queue_duration.observe(waited)
                    break
            traces = agent.tracing
            if traces is not None:
                span, self.token = traces.start_server_span(
                    method if method != OTHER_METHOD else "HTTP", traces.extract_headers(headers)
                )
                self.span = span
                if span.is_recording():
                    span.set_attributes(
                        span_attributes(scope, method, agent.settings.redact_query_keys)
                    )
        except Exception as exc:
            _safety.report("asgi.start", exc)

    def finish(self, error: BaseException | None) -> None:
        agent = self.agent
        if agent is None:
            return
        now = _perf_counter()
        elapsed = now - self.started
        self.agent = None
        span, self.span = self.span, None
        code = self.status if self.status is not None and error is None else 500
        route = None
        try:
            snapshots = agent.metrics.snapshots
            if snapshots is not None and now >= snapshots.late_at:
                snapshots.park()  # while the request still counts as in flight
            agent.metrics.requests_in_flight.pop(id(self), None)
            framework = self.framework
            if framework is not None:
                route = _route(framework, self.framework_scope)
            if route is None:
                if self.route_of is not None:
                    route = _route(self.route_of, self.scope)
                elif framework is None and self.unnamed is not None and not self.unnamed.warned:
                    self.unnamed.warn()
            label = route or UNMATCHED_ROUTE
            agent.metrics.observe_request(self.method, label, str(code), elapsed, span)
            if agent.access_log:
                _access_log(self.method, label, str(code), elapsed)
        except Exception as exc:
            _safety.report("asgi.finish", exc)
        finally:
            if span is not None and agent.tracing is not None:
                try:
                    # The context is restored by handle(), in the task that changed it.
                    agent.tracing.end_server_span(span, None, self.method, route, code, error)
                except Exception as exc:
                    _safety.report("asgi.span", exc)


def _route(route_of: RouteOf, scope: Scope) -> str | None:
    try:
        route = route_of(scope)
    except Exception as exc:
        _safety.report("asgi.route_of", exc)
        return None
    return route if isinstance(route, str) else None


def app_call(route_of: Callable[[Scope], str | None]) -> Callable[[Any], Any]:
    """What a framework's patch row puts in place of its app's ``__call__``: HTTP requests
    go through :func:`handle`, their route named by ``route_of``; anything else, and every
    request once the agent has stopped, goes straight to the original."""

    def wrap(original: Any) -> Any:
        async def __call__(self: Any, scope: Scope, receive: Receive, send: Send) -> None:
            agent = _state.current
            if agent is None or scope.get("type") != "http" or SEEN in scope:
                await original(self, scope, receive, send)
                return
            await handle(agent, original.__get__(self), scope, receive, send, route_of)

        return __call__

    return wrap


async def handle(
    agent: Agent,
    app: ASGIApp,
    scope: Scope,
    receive: Receive,
    send: Send,
    route_of: RouteOf | None,
    unnamed: Unnamed | None = None,
) -> None:
    """Record one ``http`` request to ``app``: called by a framework's patched ``__call__``
    (``unnamed`` None), or by the generic middleware (``unnamed`` set)."""
    pending: _Exchange | None = scope.get(PENDING)
    if pending is not None:
        # The generic middleware outside records this request; a framework names its route.
        if unnamed is None:
            pending.framework = route_of
            pending.framework_scope = scope
            scope[SEEN] = True
            if pending.unnamed is not None:  # the app has a framework inside: no warning
                pending.unnamed.warned = True
        else:  # instrument_app(app, route_of) inside a server's wrap: the nearer app counts
            pending.unnamed = unnamed
            if route_of is not None:
                pending.route_of = route_of
        await app(scope, receive, send)
        return
    if agent.metrics_path is not None and scope.get("path") == agent.metrics_path:
        await agent.metrics_asgi(scope, receive, send)
        return
    try:
        agent.saturation.loop_lag.watch(asyncio.get_running_loop())
    except RuntimeError:
        pass  # not an asyncio loop (trio): no lag timer, everything else as usual
    except Exception as exc:
        _safety.report("asgi.loop_lag", exc)
    exchange = _Exchange(agent, scope, route_of, unnamed)
    if unnamed is None:
        scope[SEEN] = True
    else:
        scope[PENDING] = exchange

    async def send_wrapper(message: Message) -> None:
        kind = message.get("type")
        if kind == "http.response.start":
            exchange.status = message.get("status")
        elif kind == "http.response.body" and not message.get("more_body", False):
            try:
                await send(message)
            finally:
                exchange.finish(None)
            return
        await send(message)

    try:
        await app(scope, receive, send_wrapper)
    except BaseException as error:
        exchange.finish(error)
        raise
    finally:
        exchange.finish(None)  # a response that never finished its body
        token = exchange.token
        if token is not None:
            try:
                context.detach(token)  # type: ignore[arg-type]
            except Exception as exc:
                _safety.report("asgi.detach", exc)


class SightlineASGIMiddleware:
    """Pure ASGI middleware recording golden signals; see :func:`sightline.instrument_app`.

    A framework app inside names the routes (it claims the request); otherwise
    ``route_of`` does, and without it the first request logs the ``_unmatched`` warning.
    """

    def __init__(self, app: ASGIApp, route_of: RouteOf | None = None) -> None:
        self.app = app
        self.route_of = route_of
        self.unnamed = Unnamed(app)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        agent = _state.current
        if agent is None or scope.get("type") != "http" or SEEN in scope:
            await self.app(scope, receive, send)
            return
        await handle(agent, self.app, scope, receive, send, self.route_of, self.unnamed)
