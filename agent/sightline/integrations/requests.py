"""requests: outgoing calls carry ``traceparent`` and appear as CLIENT spans.

Enabled when ``opentelemetry-instrumentation-requests`` is installed
(``pip install 'sightline[clients]'``) and tracing is on.
"""

from __future__ import annotations

from . import DidNotEnable
from ._clients import ClientIntegration

try:
    import requests  # noqa: F401 (the instrumented library itself must be there)
except ImportError:
    raise DidNotEnable("requests is not installed") from None
try:
    from opentelemetry.instrumentation.requests import RequestsInstrumentor
except ImportError:
    raise DidNotEnable("opentelemetry-instrumentation-requests is not installed") from None


class RequestsIntegration(ClientIntegration):
    name = "requests"
    instrumentor = RequestsInstrumentor


INTEGRATION = RequestsIntegration
