"""httpx: every request measured, sync and async, and with tracing on, calls carry
``traceparent`` and appear as CLIENT spans.

The measurement wraps the default transports' ``handle_request`` and
``handle_async_request``, which send one request each (a redirect httpx follows is
another); a custom transport is not measured. Spans come from
``opentelemetry-instrumentation-httpx`` (``pip install 'sightline[clients]'``).
"""

from __future__ import annotations

from typing import Any

from ._base import DidNotEnable, Patch
from ._clients import ClientIntegration, measuring

try:
    import httpx
except ImportError:
    raise DidNotEnable("httpx is not installed") from None
_instrumentor: Any
try:
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor as _instrumentor
except ImportError:
    _instrumentor = None


def _describe(args: tuple[Any, ...]) -> tuple[str, str]:
    request = args[1]
    return str(request.method), str(request.url.host)


def _sync(original: Any) -> Any:
    return measuring(original, _describe, "httpx.measure")


def _async(original: Any) -> Any:
    return measuring(original, _describe, "httpx.measure", sync=False)


class HTTPXIntegration(ClientIntegration):
    name = "httpx"
    library = "httpx"
    minimum_version = "0.27"
    patches = (
        Patch(httpx.HTTPTransport, "handle_request", _sync),
        Patch(httpx.AsyncHTTPTransport, "handle_async_request", _async),
    )
    instrumentor = _instrumentor
    package = "opentelemetry-instrumentation-httpx"


INTEGRATION = HTTPXIntegration
