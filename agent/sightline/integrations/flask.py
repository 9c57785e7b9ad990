"""Flask: every app, created before or after ``init()``, goes through the WSGI core.

``Flask.__call__`` is patched on the class, so all instances are covered whatever
the import order, and middleware the app wraps around ``app.wsgi_app`` is timed too.
The route template is taken where Flask matches the URL (``RequestContext.match_request``)
and left in the environ: no Flask hooks, signals or ``flask.request`` proxy lookups
run per request.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.semconv.attributes import error_attributes

from .. import _safety, _state
from ._base import DidNotEnable, Integration, Patch
from .wsgi import ROUTE, SEEN, handle

try:
    from flask import Flask, got_request_exception
    from flask.ctx import RequestContext
except ImportError:
    raise DidNotEnable("flask is not installed") from None

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

    from .._agent import Agent


def _call(self: Flask, environ: WSGIEnvironment, start_response: StartResponse) -> Any:
    agent = _state.current
    if agent is None or SEEN in environ:
        return self.wsgi_app(environ, start_response)
    return handle(agent, self.wsgi_app, environ, start_response, None)


def _match_request(original: Any) -> Any:
    def match_request(self: RequestContext) -> None:
        original(self)
        rule = self.request.url_rule
        if rule is not None:
            # The string, not the request: Flask breaks the environ -> request cycle on
            # teardown, and the core reads the route after that.
            self.request.environ[ROUTE] = rule.rule

    return match_request


def _record_exception(sender: Flask, exception: BaseException, **extra: Any) -> None:
    # Flask turns a view's exception into a 500 before the core sees the response; the
    # signal (sent only on errors, so free otherwise) puts it on the request's span.
    try:
        span = trace.get_current_span()
        if span.is_recording():
            span.record_exception(exception)
            span.set_attribute(error_attributes.ERROR_TYPE, type(exception).__qualname__)
    except Exception as exc:  # blinker sends unguarded: never break Flask's error handling
        _safety.report("flask.exception", exc)


class FlaskIntegration(Integration):
    name = "flask"
    library = "Flask"
    minimum_version = "2.2"
    # Patched on the class (not by swapping flask.Flask) so that apps created before
    # init(), and subclasses that do not override __call__, are all instrumented.
    patches = (
        # Flask's own __call__ is self.wsgi_app(...): _call runs that itself.
        Patch(Flask, "__call__", lambda original: _call),
        Patch(RequestContext, "match_request", _match_request),
    )

    def install(self, agent: Agent) -> None:
        super().install(agent)
        got_request_exception.connect(_record_exception)  # once, however often

    def uninstall(self) -> None:
        got_request_exception.disconnect(_record_exception)
        super().uninstall()


INTEGRATION = FlaskIntegration
