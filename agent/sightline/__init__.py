"""Sightline: golden-signal metrics, traces and logs for a Python backend in one line.

    import sightline
    sightline.init(service="checkout")

Every Flask app (created before or after ``init()``) then records request latency,
traffic, errors and saturation, served for Prometheus on ``127.0.0.1:9464/metrics``
(``SIGHTLINE_METRICS_ADDR``). Settings come from ``SIGHTLINE_*`` variables and the
standard ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES``; keyword arguments to
``init()`` override them. See docs/configuration.md and docs/metrics.md.
"""

from __future__ import annotations

import atexit
import logging
import os
from typing import TYPE_CHECKING, Any

from . import _agent, _safety
from ._settings import ConfigError, Settings
from ._version import __version__

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication
    from prometheus_client import CollectorRegistry

    from .integrations.wsgi import RouteOf

__all__ = ["ConfigError", "Settings", "__version__", "init", "instrument_app", "shutdown"]

logger = logging.getLogger("sightline")


def init(
    service: str | None = None,
    *,
    registry: CollectorRegistry | None = None,
    **settings: Any,
) -> None:
    """Start the agent. Calling it again with the same settings does nothing.

    ``service`` and every keyword named in docs/configuration.md override the
    environment. ``registry`` is the prometheus-client registry to register into
    (default: the global one, so the app's own metrics are served alongside).

    Raises :class:`ConfigError`, naming the setting and the bad value, for invalid
    configuration; nothing else ever escapes.
    """
    resolved = Settings.load(os.environ, {"service": service, **settings})
    with _agent.lock:
        running = _agent.current
        if running is not None:
            if running.settings == resolved and (registry is None or registry is running.registry):
                return
            _stop()
        if resolved.disabled:
            logger.debug("sightline: disabled by SIGHTLINE_DISABLED")
            return
        agent = None
        try:
            agent = _agent.Agent(resolved, registry)
            agent.start()
        except ConfigError:
            if agent is not None:
                agent.close()
            raise
        except Exception as exc:
            _safety.report("init", exc)
            if agent is not None:
                with _safety.internal_errors("init.cleanup"):
                    agent.close()
            return
        _agent.current = agent
        if not _atexit_registered:
            _register_atexit()


def shutdown() -> None:
    """Stop the agent: remove every hook, stop the metrics server, unregister the metrics.

    Afterwards the app behaves exactly as if ``init()`` had never run. Safe to call
    twice, and registered to run at interpreter exit.
    """
    with _agent.lock:
        _stop()


def _stop() -> None:
    agent, _agent.current = _agent.current, None
    if agent is not None:
        with _safety.internal_errors("shutdown"):
            agent.close()


def instrument_app(app: WSGIApplication, route_of: RouteOf | None = None) -> WSGIApplication:
    """Wrap any WSGI app so its requests are recorded, even if its framework is unknown.

    ``route_of(environ)`` may return the matched route template; without it, every
    request is labelled ``http_route="_unmatched"``. Wrapping an app whose framework
    is already instrumented (or wrapping twice) still records each request once::

        application = sightline.instrument_app(application)
    """
    from .integrations.wsgi import SightlineMiddleware

    return SightlineMiddleware(app, route_of)


_atexit_registered = False


def _register_atexit() -> None:
    global _atexit_registered
    atexit.register(shutdown)
    _atexit_registered = True
