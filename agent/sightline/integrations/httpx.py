"""httpx: every request measured, sync and async, and with tracing on, calls carry
``traceparent`` and appear as CLIENT spans.

The measurement wraps the default transports' ``handle_request`` and
``handle_async_request``, which send one request each (a redirect httpx follows is
another); a custom transport is not measured. Spans come from
``opentelemetry-instrumentation-httpx`` (``pip install 'sightline[clients]'``).
"""

from __future__ import annotations

from typing import Any

from . import DidNotEnable
from ._clients import ClientIntegration, timed, timed_async

try:
    import httpx
except ImportError:
    raise DidNotEnable("httpx is not installed") from None
_instrumentor: Any
try:
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor as _instrumentor
except ImportError:
    _instrumentor = None

_saved: dict[str, Any] = {}


def _describe(args: tuple[Any, ...]) -> tuple[str, str]:
    request = args[1]
    return str(request.method), str(request.url.host)


class HTTPXIntegration(ClientIntegration):
    name = "httpx"
    instrumentor = _instrumentor
    package = "opentelemetry-instrumentation-httpx"

    def measure(self) -> None:
        if "sync" not in _saved:
            _saved["sync"] = httpx.HTTPTransport.handle_request
            httpx.HTTPTransport.handle_request = timed(  # type: ignore[method-assign]
                _saved["sync"], _describe, "httpx.measure"
            )
        if "async" not in _saved:
            _saved["async"] = httpx.AsyncHTTPTransport.handle_async_request
            httpx.AsyncHTTPTransport.handle_async_request = timed_async(  # type: ignore[method-assign]
                _saved["async"], _describe, "httpx.measure"
            )

    def unmeasure(self) -> None:
        if "sync" in _saved:
            httpx.HTTPTransport.handle_request = _saved.pop("sync")  # type: ignore[method-assign]
        if "async" in _saved:
            httpx.AsyncHTTPTransport.handle_async_request = _saved.pop("async")  # type: ignore[method-assign]


INTEGRATION = HTTPXIntegration
