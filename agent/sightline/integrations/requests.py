"""requests: with tracing on, outgoing calls carry ``traceparent`` and appear as CLIENT
spans (``opentelemetry-instrumentation-requests``, ``pip install 'sightline[clients]'``).

Its requests are measured where they are sent, in urllib3 (the urllib3 integration's
wrapper, installed by either); put back when the urllib3 integration uninstalls.
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
    # requests sends through urllib3, whose instrumentation carries the trace context.
    warn_without = False

    def measure(self) -> None:
        from . import urllib3  # its requests are measured where they are sent

        urllib3.measure()

    def unmeasure(self) -> None:
        from . import urllib3

        urllib3.unmeasure()


INTEGRATION = RequestsIntegration
