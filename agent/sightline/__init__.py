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
import inspect
import logging
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from . import _safety, _state
from ._settings import ConfigError, Settings
from ._version import __version__

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from ._tasks import TaskTimer

# Importing this package loads nothing else: the OpenTelemetry API and the integrations
# are imported by init(), once the settings (and the OpenTelemetry variables those
# libraries read at import) are known to be valid, so `import sightline` never fails;
# prometheus-client, the HTTP client and the multi-process store load when first needed.

__all__ = [
    "ConfigError",
    "Settings",
    "__version__",
    "init",
    "instrument_app",
    "shutdown",
    "task",
    "track_queue",
]

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
    (default: the global one, so the app's own metrics are served alongside; Sightline
    registers there once prometheus-client is loaded, by the app or by the first read of
    the metrics, see docs/configuration.md).

    Raises :class:`ConfigError`, naming the setting and the bad value, for invalid
    configuration; nothing else ever escapes.
    """
    resolved = Settings.load(os.environ, {"service": service, **settings})
    from . import _agent

    with _state.lock:
        running = _state.current
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
        _state.attach(agent)
        if not _atexit_registered:
            _register_atexit()


def shutdown() -> None:
    """Stop the agent: remove every hook, stop the metrics server, unregister the metrics.

    Afterwards the app behaves exactly as if ``init()`` had never run. Safe to call
    twice, and registered to run at interpreter exit.
    """
    _stop()


def _stop(timeout: float | None = None) -> None:
    with _safety.internal_errors("shutdown"):
        _state.stop(timeout)


def instrument_app(app: Any, route_of: Callable[[Any], str | None] | None = None) -> Any:
    """Wrap any WSGI or ASGI app so its requests are recorded, whatever its framework.

    ``route_of(environ_or_scope)`` returns the matched route template (a string) or
    None. A framework app inside (Flask, Django, Starlette/FastAPI, Litestar, Quart)
    names its routes itself, and ``route_of`` then names only what it leaves unnamed;
    with neither, requests are labelled ``http_route="_unmatched"`` and the app's first
    request logs one warning. Wrapping an app whose framework is already instrumented
    (or wrapping twice) still records each request once. ``sightline run`` wraps every
    app a server loads like this already; wrap by hand to add a ``route_of``::

        def route_of(scope):
            # an app routing on its first path segment: /db/<anything> -> /db/{rest}
            head = scope["path"].split("/")[1]
            return f"/{head}/{{rest}}" if head in ("db", "static") else None

        application = sightline.instrument_app(application, route_of=route_of)

    See docs/frameworks.md.
    """
    # An ASGI app is a coroutine function, or an object whose __call__ is one.
    if inspect.iscoroutinefunction(app) or inspect.iscoroutinefunction(type(app).__call__):
        from .integrations.asgi import SightlineASGIMiddleware

        return SightlineASGIMiddleware(app, route_of)
    from .integrations.wsgi import SightlineMiddleware

    return SightlineMiddleware(app, route_of)


def task(
    name: str,
    *,
    queue: str = "default",
    system: str = "custom",
    enqueued_at: float | None = None,
    headers: Mapping[str, str] | None = None,
) -> TaskTimer:
    """Measure background work Sightline has no integration for, like a Celery task.

    As a decorator, each call is one run; as a context manager, the block is one::

        @sightline.task("resize", queue="images")
        def resize(image_id): ...

        for message in consumer:
            with sightline.task("charge", queue="payments",
                                enqueued_at=message.timestamp, headers=message.headers):
                charge(message)

    ``enqueued_at`` (seconds since the epoch) records the wait; ``headers`` carrying a
    ``traceparent`` continue that trace. An exception is the ``failure`` outcome and is
    re-raised untouched.
    """
    from ._tasks import TaskTimer

    return TaskTimer(name, queue, system, enqueued_at, headers)


def track_queue(
    name: str,
    depth: Callable[[], float],
    *,
    system: str = "custom",
    oldest_age: Callable[[], float | None] | None = None,
) -> None:
    """Publish the depth of any queue as ``worker_queue_depth`` (and, with ``oldest_age``,
    ``worker_queue_oldest_age_seconds``), read every SIGHTLINE_QUEUE_SAMPLE_INTERVAL
    seconds by a background thread, never where the app calls it::

        sightline.track_queue("emails", lambda: redis.llen("emails"))

    May be called before or after ``init()``; an exception from ``depth`` leaves the
    series out until it reads again.
    """
    _state.track_queue(system, name, depth, oldest_age)


_atexit_registered = False


def _register_atexit() -> None:
    global _atexit_registered
    atexit.register(shutdown)
    _atexit_registered = True
