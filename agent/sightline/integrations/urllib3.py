"""urllib3 (and requests, which sends through it): every request measured, and with
tracing on, calls carry ``traceparent`` and appear as CLIENT spans.

The measurement wraps ``HTTPConnectionPool._make_request``, which sends one request on
one connection (urllib3 1.26 and 2.x): each retry and each redirect it follows is a
request of its own, as OpenTelemetry's conventions count them. Spans come from
``opentelemetry-instrumentation-urllib3`` (``pip install 'sightline[clients]'``).
"""

from __future__ import annotations

from typing import Any

from . import DidNotEnable
from ._clients import ClientIntegration, timed

try:
    from urllib3.connectionpool import HTTPConnectionPool
except ImportError:
    raise DidNotEnable("urllib3 is not installed") from None
_instrumentor: Any
try:
    from opentelemetry.instrumentation.urllib3 import URLLib3Instrumentor as _instrumentor
except ImportError:
    _instrumentor = None

_saved: dict[str, Any] = {}


def _describe(args: tuple[Any, ...]) -> tuple[str, str]:
    pool, _conn, method = args[:3]
    return str(method), str(pool.host)


class URLLib3Integration(ClientIntegration):
    name = "urllib3"
    instrumentor = _instrumentor
    package = "opentelemetry-instrumentation-urllib3"

    def measure(self) -> None:
        if "make_request" not in _saved:
            _saved["make_request"] = HTTPConnectionPool._make_request
            HTTPConnectionPool._make_request = timed(  # type: ignore[method-assign]
                _saved["make_request"], _describe, "urllib3.measure"
            )

    def unmeasure(self) -> None:
        original = _saved.pop("make_request", None)
        if original is not None:
            HTTPConnectionPool._make_request = original  # type: ignore[method-assign]


INTEGRATION = URLLib3Integration
