"""aiohttp's client: every request measured, and with tracing on, calls carry
``traceparent`` and appear as CLIENT spans.

aiohttp says what its client does through a session's trace configs: one
:class:`aiohttp.TraceConfig` of Sightline's is added to every ``ClientSession`` made
after ``init()`` (its ``__init__`` wrapped). A request is timed from its start to its
response's headers, and each redirect it follows ends one request and starts the next,
as in the other clients. Spans come from ``opentelemetry-instrumentation-aiohttp-client``
(``pip install 'sightline[clients]'``). aiohttp's server is not measured.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from .. import _safety, _state
from ._base import DidNotEnable, Patch
from ._clients import ClientIntegration

try:
    import aiohttp
except ImportError:
    raise DidNotEnable("aiohttp is not installed") from None
_instrumentor: Any
try:
    from opentelemetry.instrumentation.aiohttp_client import (
        AioHttpClientInstrumentor as _instrumentor,
    )
except ImportError:
    _instrumentor = None

_STARTED = "sightline_started"


def _observe(context: SimpleNamespace, params: Any, status: str, error: str) -> None:
    started = getattr(context, _STARTED, None)
    agent = _state.current
    if started is None or agent is None:
        return
    now = time.perf_counter()
    setattr(context, _STARTED, now)  # a redirect's next request starts here
    host = params.url.host or ""
    agent.metrics.observe_client(str(params.method), host, status, error, now - started)


async def _on_start(session: Any, context: SimpleNamespace, params: Any) -> None:
    setattr(context, _STARTED, time.perf_counter())


async def _on_redirect(session: Any, context: SimpleNamespace, params: Any) -> None:
    with _safety.internal_errors("aiohttp.measure"):
        _observe(context, params, str(int(params.response.status)), "")


async def _on_end(session: Any, context: SimpleNamespace, params: Any) -> None:
    with _safety.internal_errors("aiohttp.measure"):
        _observe(context, params, str(int(params.response.status)), "")


async def _on_exception(session: Any, context: SimpleNamespace, params: Any) -> None:
    with _safety.internal_errors("aiohttp.measure"):
        _observe(context, params, "", type(params.exception).__name__)


def _trace_config() -> aiohttp.TraceConfig:
    config = aiohttp.TraceConfig()
    config.on_request_start.append(_on_start)
    config.on_request_redirect.append(_on_redirect)
    config.on_request_end.append(_on_end)
    config.on_request_exception.append(_on_exception)
    config.freeze()
    return config


_CONFIG = _trace_config()


def _session_init(original: Callable[..., None]) -> Callable[..., None]:
    def __init__(self: Any, *args: Any, trace_configs: Any = None, **kwargs: Any) -> None:
        configs = list(trace_configs or ())
        if _CONFIG not in configs:
            configs.append(_CONFIG)
        original(self, *args, trace_configs=configs, **kwargs)

    __init__.__wrapped__ = original  # type: ignore[attr-defined]
    return __init__


class AiohttpIntegration(ClientIntegration):
    name = "aiohttp"
    library = "aiohttp"
    minimum_version = "3.9"
    patches = (Patch(aiohttp.ClientSession, "__init__", _session_init),)
    instrumentor = _instrumentor
    package = "opentelemetry-instrumentation-aiohttp-client"


INTEGRATION = AiohttpIntegration
