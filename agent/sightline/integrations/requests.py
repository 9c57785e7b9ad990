"""requests: with tracing on, outgoing calls carry ``traceparent`` and appear as CLIENT
spans (``opentelemetry-instrumentation-requests``, ``pip install 'sightline[clients]'``).

Its requests are measured by the urllib3 integration, which requests sends through.
"""

from __future__ import annotations

from typing import Any

from . import DidNotEnable
from ._clients import ClientIntegration

try:
    import requests  # noqa: F401 (the instrumented library itself must be there)
except ImportError:
    raise DidNotEnable("requests is not installed") from None
_instrumentor: Any
try:
    from opentelemetry.instrumentation.requests import RequestsInstrumentor as _instrumentor
except ImportError:
    _instrumentor = None


class RequestsIntegration(ClientIntegration):
    name = "requests"
    instrumentor = _instrumentor
    package = "opentelemetry-instrumentation-requests"


INTEGRATION = RequestsIntegration
