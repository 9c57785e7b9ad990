"""The WSGI core: times, traces and records every request's golden signals, once.

Framework integrations (Flask, Django) call :func:`handle` from the framework's own
app callable and, once the framework has matched the request, put the route template
in the environ under :data:`ROUTE`; any WSGI app can be wrapped directly (and under
``sightline run`` every app a server loads is wrapped so, see ``_served``)::

    app = sightline.instrument_app(app)

Each request is recorded once, by the outermost layer. When that is the generic
middleware and a framework's app sits inside it, the framework *claims* the request
(:func:`handle` finds it pending in the environ) and names its route, rather than
recording it again. A request nothing claims, for an app given no ``route_of``, is
``_unmatched``, and that app's first such request logs one warning naming the fix.

Per request this costs two clock reads, a gauge up and down, one dict lookup for a
cached histogram child, a span (whose attributes are built only if it is recording)
and one small object that is both the ``start_response`` hook and the response
iterable, so a streamed body is timed until the server closes it. No framework hooks
run and no framework proxies are touched.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from .._agent import Agent

RouteOf = Callable[["WSGIEnvironment"], "str | None"]

#: Set in the environ by the framework layer that records a request, or that claimed it
#: from the generic middleware outside, so nested apps (mounted sub-apps) record it once.
SEEN = "sightline.recorded"
#: The request the generic middleware records, waiting for a framework to claim it.
PENDING = "sightline.pending"
#: Where framework integrations leave the matched route template for the core to read.
ROUTE = "sightline.route"
#: The documentation the ``_unmatched`` warning points to.
ROUTE_OF_DOCS = "docs/frameworks.md#naming-routes-route_of"

logger = logging.getLogger("sightline")
access_logger = logging.getLogger("sightline.access")
_perf_counter = time.perf_counter
_warned = threading.Lock()


def handle(
    agent: Agent,
    app: WSGIApplication,
    environ: WSGIEnvironment,
    start_response: StartResponse,
    route_of: RouteOf | None,
    unnamed: Unnamed | None = None,
) -> Iterable[bytes]:
    """Record one request to ``app``: called by a framework's patched app callable
    (``unnamed`` None), or by the generic middleware (``unnamed`` set)."""
    pending: _Exchange | None = environ.get(PENDING)
    if pending is not None:
        # The generic middleware outside records this request; a framework claims it.
        if unnamed is None:
            pending.claimed = True
            environ[SEEN] = True
            if pending.unnamed is not None:  # the app has a framework inside: no warning
                pending.unnamed.warned = True
        else:  # instrument_app(app, route_of) inside a server's wrap: the nearer app counts
            pending.unnamed = unnamed
        if route_of is not None:
            pending.route_of = route_of
        return app(environ, start_response)
    if agent.metrics_path is not None and environ.get("PATH_INFO") == agent.metrics_path:
        served: Iterable[bytes] = agent.metrics_app(environ, start_response)
        return served
    exchange = _Exchange(agent, environ, start_response, route_of, unnamed)
    if unnamed is None:
        environ[SEEN] = True
    else:
        environ[PENDING] = exchange
    try:
        body = app(environ, exchange.start_response)
    except BaseException as error:
        exchange.error = error
        exchange.close()  # no body to close: records the request as failed
        raise
    exchange.body = body
    return exchange


def span_attributes(
    environ: WSGIEnvironment, method: str, redact: tuple[str, ...]
) -> dict[str, Any]:
    """Stable HTTP server attributes of a request (built only for recording spans)."""
    path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    attributes: dict[str, Any] = {
        http_attributes.HTTP_REQUEST_METHOD: method,
        url_attributes.URL_PATH: path or "/",
        url_attributes.URL_SCHEME: environ.get("wsgi.url_scheme", "http"),
    }
    raw_method = environ.get("REQUEST_METHOD", "GET")
    if method == OTHER_METHOD:
        attributes[http_attributes.HTTP_REQUEST_METHOD_ORIGINAL] = raw_method[:64]
    query = environ.get("QUERY_STRING")
    if query:
        attributes[url_attributes.URL_QUERY] = redact_query(query, redact)
    host = environ.get("HTTP_HOST") or environ.get("SERVER_NAME")
    if host:
        name, sep, port = host.rpartition(":") if not host.endswith("]") else ("", "", "")
        if sep and port.isdigit():
            attributes[server_attributes.SERVER_ADDRESS] = name
            attributes[server_attributes.SERVER_PORT] = int(port)
        else:
            attributes[server_attributes.SERVER_ADDRESS] = host
    forwarded = environ.get("HTTP_X_FORWARDED_FOR")
    client = forwarded.split(",", 1)[0].strip() if forwarded else environ.get("REMOTE_ADDR")
    if client:
        attributes[client_attributes.CLIENT_ADDRESS] = client
    agent = environ.get("HTTP_USER_AGENT")
    if agent:
        attributes[user_agent_attributes.USER_AGENT_ORIGINAL] = agent
    protocol = environ.get("SERVER_PROTOCOL", "")
    if protocol.startswith("HTTP/"):
        attributes[network_attributes.NETWORK_PROTOCOL_VERSION] = protocol[5:]
    return attributes


class _Exchange:
    """One request in flight: captures the status, then records when the body is closed."""

    __slots__ = (
        "_start_response",
        "agent",
        "body",
        "claimed",
        "environ",
        "error",
        "method",
        "route_of",
        "span",
        "started",
        "status",
        "token",
        "unnamed",
    )

    def __init__(
        self,
        agent: Agent,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        route_of: RouteOf | None,
        unnamed: Unnamed | None = None,
    ) -> None:
        self.started = _perf_counter()
        self.agent = agent
        self.environ = environ
        self._start_response = start_response
        self.route_of = route_of
        self.unnamed = unnamed
        self.claimed = False  # a framework inside names the route (under ROUTE)
        self.status: str | None = None
        self.error: BaseException | None = None  # raised while the body was iterated
        self.body: Iterable[bytes] | None = None
        self.span: Any = None
        self.token: object = None
        method = environ.get("REQUEST_METHOD", "GET")
        if method not in KNOWN_METHODS:
            method = OTHER_METHOD
        self.method = method
        try:
            agent.metrics.requests_in_flight[id(self)] = self.started
            header = environ.get("HTTP_X_REQUEST_START") or environ.get("HTTP_X_QUEUE_START")
            if header:
                waited = queue_seconds(header, time.time())
                if waited is not None:
                    agent.metrics.queue_duration.observe(waited)
            traces = agent.tracing
            if traces is not None:
                span, self.token = traces.start_server_span(
                    method if method != OTHER_METHOD else "HTTP", traces.extract(environ)
                )
                self.span = span
                if span.is_recording():
                    span.set_attributes(
                        span_attributes(environ, method, agent.settings.redact_query_keys)
                    )
        except Exception as exc:
            _safety.report("wsgi.start", exc)

    def start_response(self, status: str, headers: Any, exc_info: Any = None) -> Any:
        self.status = status
        return self._start_response(status, headers, exc_info)

    def __iter__(self) -> Iterator[bytes]:
        body = self.body
        return self._iterate(body) if body is not None else iter(())

    def _iterate(self, body: Iterable[bytes]) -> Iterator[bytes]:
        # A body that raises half-way (a generator streaming a response) is the request's
        # error, as a view raising is: the server has sent a status it cannot take back.
        # A for loop, not `yield from`, which would close the body when this generator is
        # closed (a client gone mid-stream) while the server closes it again through
        # close(); that closing is the GeneratorExit let through here, not an error.
        try:
            for chunk in body:  # noqa: UP028 (yield from would close the body, see above)
                yield chunk
        except GeneratorExit:
            raise
        except BaseException as error:
            self.error = error
            raise

    def close(self) -> None:
        """Close the body (the server's call), then record the request, once (one frame:
        this runs for every request)."""
        body = self.body
        if body is not None:
            self.body = None
            close = getattr(body, "close", None)
            if close is not None:
                try:
                    close()
                except BaseException:
                    self.close()  # records it, the body now gone
                    raise
        if self.agent is None:  # closed twice
            return
        now = _perf_counter()
        elapsed = now - self.started
        error = self.error
        agent, self.agent = self.agent, None  # type: ignore[assignment]
        span, self.span = self.span, None
        code, route = "500", None
        try:
            snapshots = agent.metrics.snapshots
            if snapshots is not None and now >= snapshots.late_at:
                snapshots.park()  # while the request still counts as in flight
            agent.metrics.requests_in_flight.pop(id(self), None)
            status = self.status
            if error is None and status is not None and status[:3].isdigit():
                code = status[:3]
            route = self.environ.get(ROUTE)
            if route is None:
                if self.route_of is not None:
                    route = _user_route(self.route_of, self.environ)
                elif not self.claimed and self.unnamed is not None and not self.unnamed.warned:
                    self.unnamed.warn()
            label = route or UNMATCHED_ROUTE
            agent.metrics.observe_request(self.method, label, code, elapsed, span)
            if agent.access_log:
                _access_log(self.method, label, code, elapsed)
        except Exception as exc:
            _safety.report("wsgi.finish", exc)
        finally:
            if span is not None and agent.tracing is not None:
                try:
                    agent.tracing.end_server_span(
                        span, self.token, self.method, route, int(code), error
                    )
                except Exception as exc:
                    _safety.report("wsgi.span", exc)


def _user_route(route_of: RouteOf, environ: WSGIEnvironment) -> str | None:
    """The app's own ``route_of``: anything but a string (or an error) means no route."""
    try:
        route = route_of(environ)
    except Exception as exc:
        _safety.report("wsgi.route_of", exc)
        return None
    return route if isinstance(route, str) else None


class Unnamed:
    """One app whose requests no framework names: warns, once, that they are
    ``_unmatched`` and how to name them (never, once a framework inside has named one)."""

    __slots__ = ("app", "warned")

    def __init__(self, app: Any) -> None:
        self.app = app
        self.warned = False

    def warn(self) -> None:
        with _warned:  # two threads finishing at once still warn once
            if self.warned:
                return
            self.warned = True
        app = self.app
        named = app if hasattr(app, "__qualname__") else type(app)  # a function, or a class
        logger.warning(
            "sightline: %s.%s exposes no route templates Sightline can read, so its "
            'requests are counted as http_route="_unmatched"; name them with '
            "sightline.instrument_app(app, route_of=...), see %s",
            getattr(named, "__module__", "?"),
            getattr(named, "__qualname__", "?"),
            ROUTE_OF_DOCS,
        )


def _access_log(method: str, route: str, code: str, elapsed: float) -> None:
    """The optional access line, emitted while the request's span is still current."""
    duration_ms = round(elapsed * 1000, 3)
    access_logger.info(
        "%s %s %s %.1fms",
        method,
        route,
        code,
        duration_ms,
        extra={
            "http_request_method": method,
            "http_route": route,
            "http_response_status_code": int(code),
            "duration_ms": duration_ms,
        },
    )


class SightlineMiddleware:
    """WSGI middleware recording golden signals; see :func:`sightline.instrument_app`.

    A framework app inside names the routes (it claims the request); otherwise
    ``route_of`` does, and without it the first request logs the ``_unmatched`` warning.
    """

    def __init__(self, app: WSGIApplication, route_of: RouteOf | None = None) -> None:
        self.app = app
        self.route_of = route_of
        self.unnamed = Unnamed(app)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        agent = _state.current
        if agent is None or SEEN in environ:
            return self.app(environ, start_response)
        return handle(agent, self.app, environ, start_response, self.route_of, self.unnamed)
