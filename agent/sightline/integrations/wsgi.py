"""The WSGI core: times every request and records its golden signals, once.

Framework integrations (Flask, Django) call :func:`handle` from the framework's own
app callable and, once the framework has matched the request, put the route template
in the environ under :data:`ROUTE`; any WSGI app can be wrapped directly::

    app = sightline.instrument_app(app)

Per request this costs two clock reads, a gauge up and down, one dict lookup for a
cached histogram child and one small object that is both the ``start_response``
hook and the response iterable, so a streamed body is timed until the server
closes it. No framework hooks run and no framework proxies are touched.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from .. import _agent, _safety
from .._http import fold_method, queue_seconds
from ..metrics import UNMATCHED_ROUTE

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

RouteOf = Callable[["WSGIEnvironment"], "str | None"]

#: Set in the environ by the first layer that records a request, so nested or doubly
#: wrapped apps (auto-patched and wrapped by hand, mounted sub-apps) record it once.
SEEN = "sightline.recorded"

#: Where framework integrations leave the matched route template for the core to read.
ROUTE = "sightline.route"

_perf_counter = time.perf_counter


def handle(
    agent: _agent.Agent,
    app: WSGIApplication,
    environ: WSGIEnvironment,
    start_response: StartResponse,
    route_of: RouteOf | None,
) -> Iterable[bytes]:
    if agent.metrics_path is not None and environ.get("PATH_INFO") == agent.metrics_path:
        served: Iterable[bytes] = agent.metrics_app(environ, start_response)
        return served
    environ[SEEN] = True
    exchange = _Exchange(agent, environ, start_response, route_of)
    try:
        body = app(environ, exchange.start_response)
    except BaseException:
        exchange.finish(failed=True)
        raise
    exchange.body = body
    return exchange


class _Exchange:
    """One request in flight: captures the status, then records when the body is closed."""

    __slots__ = ("_start_response", "agent", "body", "environ", "route_of", "started", "status")

    def __init__(
        self,
        agent: _agent.Agent,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        route_of: RouteOf | None,
    ) -> None:
        self.started = _perf_counter()
        self.agent = agent
        self.environ = environ
        self._start_response = start_response
        self.route_of = route_of
        self.status: str | None = None
        self.body: Iterable[bytes] | None = None
        try:
            agent.metrics.active_requests.inc()
            header = environ.get("HTTP_X_REQUEST_START") or environ.get("HTTP_X_QUEUE_START")
            if header:
                waited = queue_seconds(header, time.time())
                if waited is not None:
                    agent.metrics.queue_duration.observe(waited)
        except Exception as exc:
            _safety.report("wsgi.start", exc)

    def start_response(self, status: str, headers: Any, exc_info: Any = None) -> Any:
        self.status = status
        return self._start_response(status, headers, exc_info)

    def __iter__(self) -> Iterator[bytes]:
        body = self.body
        return iter(body) if body is not None else iter(())

    def close(self) -> None:
        try:
            close = getattr(self.body, "close", None)
            if close is not None:
                close()
        finally:
            self.finish(failed=False)

    def finish(self, failed: bool) -> None:
        if self.agent is None:  # closed twice
            return
        elapsed = _perf_counter() - self.started
        agent, self.agent = self.agent, None  # type: ignore[assignment]
        try:
            agent.metrics.active_requests.dec()
            status = self.status
            code = "500" if failed or status is None else status[:3]
            environ = self.environ
            route = environ.get(ROUTE)
            if route is None and self.route_of is not None:
                route = self.route_of(environ)
            agent.metrics.observe_request(
                fold_method(environ.get("REQUEST_METHOD", "GET")),
                route or UNMATCHED_ROUTE,
                code if code.isdigit() else "500",
                elapsed,
            )
        except Exception as exc:
            _safety.report("wsgi.finish", exc)


class SightlineMiddleware:
    """WSGI middleware recording golden signals; see :func:`sightline.instrument_app`."""

    def __init__(self, app: WSGIApplication, route_of: RouteOf | None = None) -> None:
        self.app = app
        self.route_of = route_of

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        agent = _agent.current
        if agent is None or SEEN in environ:
            return self.app(environ, start_response)
        return handle(agent, self.app, environ, start_response, self.route_of)
