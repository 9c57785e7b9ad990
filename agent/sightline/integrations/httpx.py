"""httpx: every request measured, sync and async, and with tracing on, calls carry
``traceparent`` and appear as CLIENT spans.

The measurement wraps the default transports' ``handle_request`` and
``handle_async_request``, which send one request each (a redirect httpx follows is
another); a custom transport is not measured. Spans come from
``opentelemetry-instrumentation-httpx`` (``pip install 'sightline[clients]'``).
"""

from __future__ import annotations

from typing import Any

from ._base import DidNotEnable
from ._clients import ClientIntegration, measuring
from ._patches import Patches

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


class HTTPXIntegration(ClientIntegration):
    name = "httpx"
    instrumentor = _instrumentor
    package = "opentelemetry-instrumentation-httpx"

    def measure(self) -> None:
        _patches.apply(
            httpx.HTTPTransport,
            "handle_request",
            lambda original: measuring(original, _describe, "httpx.measure"),
        )
        _patches.apply(
            httpx.AsyncHTTPTransport,
            "handle_async_request",
            lambda original: measuring(original, _describe, "httpx.measure", sync=False),
        )

    def unmeasure(self) -> None:
        _patches.restore()


_patches = Patches()


INTEGRATION = HTTPXIntegration
