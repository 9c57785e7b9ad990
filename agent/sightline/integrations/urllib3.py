"""urllib3 (and requests, which sends through it): every request measured, and with
tracing on, calls carry ``traceparent`` and appear as CLIENT spans.

The measurement wraps ``HTTPConnectionPool._make_request``, which sends one request on
one connection (urllib3 1.26 and 2.x): each retry and each redirect it follows is a
request of its own, as OpenTelemetry's conventions count them. It lasts until the response
headers, or the whole body when urllib3 preloads it (its default; requests streams). Spans come from
``opentelemetry-instrumentation-urllib3`` (``pip install 'sightline[clients]'``).
"""

from __future__ import annotations

import urllib.parse
from typing import Any

from ._base import DidNotEnable, Patch
from ._clients import ClientIntegration, measuring

try:
    from urllib3.connectionpool import HTTPConnectionPool
except ImportError:
    raise DidNotEnable("urllib3 is not installed") from None
_instrumentor: Any
try:
    from opentelemetry.instrumentation.urllib3 import URLLib3Instrumentor as _instrumentor
except ImportError:
    _instrumentor = None


def _describe(args: tuple[Any, ...]) -> tuple[str, str]:
    pool, _conn, method = args[:3]
    url = args[3] if len(args) > 3 else ""
    if isinstance(url, str) and url.startswith(("http://", "https://")):
        # Absolute form: a plain-HTTP request through a proxy; the host is the target's.
        return str(method), urllib.parse.urlsplit(url).hostname or str(pool.host)
    return str(method), str(pool.host)


def _make_request(original: Any) -> Any:
    return measuring(original, _describe, "urllib3.measure")


#: What sends every request (requests' too: its integration installs this as well).
PATCHES = (Patch(HTTPConnectionPool, "_make_request", _make_request),)


class URLLib3Integration(ClientIntegration):
    name = "urllib3"
    library = "urllib3"
    minimum_version = "1.26"
    patches = PATCHES
    instrumentor = _instrumentor
    package = "opentelemetry-instrumentation-urllib3"


INTEGRATION = URLLib3Integration
