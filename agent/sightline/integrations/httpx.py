"""httpx: outgoing calls carry ``traceparent`` and appear as CLIENT spans.

Enabled when ``opentelemetry-instrumentation-httpx`` is installed
(``pip install 'sightline[clients]'``) and tracing is on.
"""

from __future__ import annotations

from . import DidNotEnable
from ._clients import ClientIntegration

try:
    import httpx  # noqa: F401 (the instrumented library itself must be there)
except ImportError:
    raise DidNotEnable("httpx is not installed") from None
try:
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
except ImportError:
    raise DidNotEnable("opentelemetry-instrumentation-httpx is not installed") from None


class HTTPXIntegration(ClientIntegration):
    name = "httpx"
    instrumentor = HTTPXClientInstrumentor


INTEGRATION = HTTPXIntegration
