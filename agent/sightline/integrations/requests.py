"""requests: with tracing on, outgoing calls carry ``traceparent`` and appear as CLIENT
spans (``opentelemetry-instrumentation-requests``, ``pip install 'sightline[clients]'``).

Its requests are measured where they are sent, in urllib3 (the urllib3 integration's
wrapper, installed by either, once); put back by whichever installed it.
"""

from __future__ import annotations

from typing import Any

from ._base import DidNotEnable
from ._clients import ClientIntegration

try:
    import requests  # noqa: F401 (the instrumented library itself must be there)
except ImportError:
    raise DidNotEnable("requests is not installed") from None
# requests sends through urllib3 (its dependency): imported after requests is known here.
from . import urllib3

_instrumentor: Any
try:
    from opentelemetry.instrumentation.requests import RequestsInstrumentor as _instrumentor
except ImportError:
    _instrumentor = None


class RequestsIntegration(ClientIntegration):
    name = "requests"
    library = "requests"
    minimum_version = "2.31"
    patches = urllib3.PATCHES  # its requests are measured where they are sent
    instrumentor = _instrumentor
    package = "opentelemetry-instrumentation-requests"
    # requests sends through urllib3, whose instrumentation carries the trace context.
    warn_without = False


INTEGRATION = RequestsIntegration
