"""urllib3: outgoing calls carry ``traceparent`` and appear as CLIENT spans.

Enabled when ``opentelemetry-instrumentation-urllib3`` is installed
(``pip install 'sightline[clients]'``) and tracing is on.
"""

from __future__ import annotations

from . import DidNotEnable
from ._clients import ClientIntegration

try:
    import urllib3  # noqa: F401 (the instrumented library itself must be there)
except ImportError:
    raise DidNotEnable("urllib3 is not installed") from None
try:
    from opentelemetry.instrumentation.urllib3 import URLLib3Instrumentor
except ImportError:
    raise DidNotEnable("opentelemetry-instrumentation-urllib3 is not installed") from None


class URLLib3Integration(ClientIntegration):
    name = "urllib3"
    instrumentor = URLLib3Instrumentor


INTEGRATION = URLLib3Integration
