"""The running agent: settings, instruments, the /metrics server and installed integrations.

The one ``init()`` started is :data:`sightline._state.current`, which the hot path reads.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from . import _fork, _safety, _state, integrations
from ._export import BatchQueue
from ._scrape import MetricsServer
from ._settings import Settings
from ._store import Refused
from .logs import Logs
from .metrics import Metrics
from .saturation import QueueDepths, SaturationCollector

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from . import _multiprocess
    from .integrations._base import Integration
    from .tracing import Tracing

logger = logging.getLogger("sightline")


class Agent:
    """One running agent.

    Its instruments record from the start, but prometheus-client (and the HTTP stack it
    imports) is loaded only when first needed: by a scrape, a snapshot, or the app
    importing it. Only then are the instruments registered in the global registry
    (:meth:`_bind`, run right after the app's import of prometheus-client by the import
    watcher, so the app's own metrics meet Sightline's names as if ``init()`` had
    registered them). A registry given to ``init()``, or prometheus-client loaded
    already, binds at once.
    """

    def __init__(self, settings: Settings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self._given_registry = registry
        self._value_class: Any = None
        self._bind_lock = threading.Lock()
        self._closed = False
        _fork.track(self)
        self.metrics = Metrics(settings)
        self.metrics_path: str | None = settings.metrics_path or None
        self.metrics_app: Any = self._serve_wsgi
        self.metrics_asgi: Any = self._serve_asgi
        self._wsgi: Any = None
        self._asgi: Any = None
        self.detected_capacity: int | None = None
        self.saturation = SaturationCollector(self.capacity)
        self.queue_depths = QueueDepths(settings.queue_sample_interval)
        self.metrics_server: MetricsServer | None = None
        #: The multi-process server this process is part of, as an integration found it.
        self.server: _multiprocess.Server | None = None
        self.snapshots: _multiprocess.Snapshots | None = None
        #: The server's directory could not be used: its processes serve one by one.
        self.store_refused = False
        self.integrations: list[Integration] = []
        self.tracing: Tracing | None = None
        self.logs: Logs | None = None
        self.access_log = settings.access_log
        try:
            self.metrics.register(self.saturation)
            self.metrics.register(self.queue_depths)
            if registry is not None:
                # The global registry carries prometheus-client's process collector already.
                from prometheus_client.process_collector import ProcessCollector

                self.metrics.register(ProcessCollector(registry=None))
            if settings.exports_traces:
                # Imported only when used: without the SDK loaded, the request path can skip
                # looking for a current span to use as an exemplar (see metrics.py).
                from .tracing import Tracing

                self.tracing = Tracing(settings, self.metrics.export_stats("traces"))
                if self.tracing.queue is not None:
                    self.metrics.queues.add("traces", self.tracing.queue)
            if settings.logs:
                self.logs = Logs(settings, self.metrics.export_stats("logs"))
                if self.logs.queue is not None:
                    self.metrics.queues.add("logs", self.logs.queue)
            if registry is not None or "prometheus_client" in sys.modules:
                self._bind()  # a name the app registered already fails init() here
        except BaseException:
            self.metrics.close()  # leave the registry as it was
            raise

    @property
    def registry(self) -> CollectorRegistry:
        """The registry Sightline's instruments are in (prometheus-client loaded now)."""
        if self.metrics.registry is None:
            _fork.load("prometheus_client")
            self._bind()
        if self._given_registry is not None:
            return self._given_registry
        global_registry: CollectorRegistry = sys.modules["prometheus_client"].REGISTRY
        return global_registry

    def _bind(self) -> None:
        """Register the instruments, prometheus-client being loaded (the import watcher
        runs this inside the app's import of it: nothing here may import)."""
        with self._bind_lock:
            if self.metrics.registry is not None or self._closed:
                return
            registry = self._given_registry
            if registry is None:
                registry = sys.modules["prometheus_client"].REGISTRY
            # With PROMETHEUS_MULTIPROC_DIR, prometheus-client would keep every metric
            # made from now on in memory-mapped files of its own, beside Sightline's
            # snapshots: one storage, Sightline's, is enough (the values reach the
            # snapshots either way).
            if self._value_class is None:  # not twice: the original class is restored
                self._value_class = _own_prometheus_values(self.settings)
            self.metrics.bind(registry)

    def _after_fork(self) -> None:
        # A binding on another thread at the moment of fork would leave its lock held
        # for ever in the child (forks of a server's process bind first, see
        # Snapshots._before_fork).
        self._bind_lock = threading.Lock()

    def _serve_wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
        """prometheus-client's WSGI app for this process's registry, made on first use."""
        app = self._wsgi
        if app is None:
            registry = self.registry
            app = self._wsgi = sys.modules["prometheus_client"].make_wsgi_app(registry)
        return app(environ, start_response)

    async def _serve_asgi(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """prometheus-client's ASGI app for this process's registry, made on first use."""
        app = self._asgi
        if app is None:
            registry = self.registry
            app = self._asgi = sys.modules["prometheus_client"].make_asgi_app(registry)
        await app(scope, receive, send)

    def capacity(self) -> int | None:
        """Requests this process can serve at once; None when unknown, and in a server's
        main process (gunicorn's master), which serves none: its workers offer the slots."""
        snapshots = self.metrics.snapshots
        if snapshots is not None and not snapshots.worker:
            return None
        return self.settings.worker_capacity or self.detected_capacity

    def start(self) -> None:
        _safety.count_with(self._count_internal_error)
        self.saturation.gc_pauses.install()
        if self.logs is not None:
            self.logs.install()
        self.integrations = integrations.install_all(self, self.settings)
        for (system, name), (depth, age) in list(_state.tracked.items()):
            self.queue_depths.track(system, name, depth, age)
        if self.metrics.registry is None:
            integrations.watcher.watch("prometheus_client", self._bind)
            if "prometheus_client" in sys.modules:  # imported by another thread meanwhile
                self.registry  # noqa: B018 (binds, once that import has finished)
        if self.settings.multiprocess != "off":
            with _safety.internal_errors("multiprocess.start"):
                self._start_snapshots()
        if self.settings.metrics_addr is not None:
            snapshots = self.snapshots
            self.metrics_server = MetricsServer(
                self.settings.metrics_addr,
                self.metrics_app,
                store=snapshots.store if snapshots is not None else None,
                key=snapshots.key if snapshots is not None else None,
                server=self.server.pid if self.server is not None else None,
                reuse_port=self.store_refused,
                service=self.settings.service,
            ).start()
            self.metrics.server_up.server = self.metrics_server

    def join_server(self, server: _multiprocess.Server) -> None:
        """Become the main process of a multi-process server, after init() (a Celery worker
        learns its pool once it starts): from now on the metrics served are merged."""
        if self.snapshots is not None or self.settings.multiprocess == "off":
            return
        self.server = server
        with _safety.internal_errors("multiprocess.join"):
            self._start_snapshots()
            if self.metrics_server is not None:
                self.metrics_server.set_app(self.metrics_app)

    def _start_snapshots(self) -> None:
        """Decide the process model: alone, or one of a server's processes (one seam);
        in a server's, the metrics apps serve the server-wide view from now on."""
        if self.server is None and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            return  # alone: nothing to merge, and the merging machinery stays unloaded
        from . import _multiprocess

        errors = _multiprocess.Errors(self._count_snapshot_error)
        try:
            found = _multiprocess.open_store(self.server)
            if found is None:
                return
            store, store_id = found
            self.snapshots = _multiprocess.Snapshots(
                store,
                store_id,
                lambda: self.registry,
                self.server,
                self.settings.max_series,
                errors,
                self._count_snapshot_wait,
            )
        except (Refused, OSError) as refused:
            self.store_refused = True
            errors(
                getattr(refused, "reason", "unusable"),
                "the metrics of this server's processes are not merged, because of the "
                "snapshot directory (%s); this process serves its own metrics only. Remove "
                "that directory, or set PROMETHEUS_MULTIPROC_DIR (or TMPDIR) to a directory "
                "only this user can write.",
                refused,
                level=logging.ERROR,
            )
            return
        self.snapshots.start()
        self.metrics.snapshots = self.snapshots  # requests and tasks wait for it when late
        scrape = _multiprocess.Scrape(self.snapshots)
        self.metrics_app = scrape.wsgi
        self.metrics_asgi = scrape.asgi
        logger.debug("sightline: metrics merged across the server's processes in %s", store.path)

    def _count_snapshot_wait(self, seconds: float) -> None:
        self.metrics.snapshot_waits.labels().inc()
        self.metrics.snapshot_wait_seconds.labels().inc(seconds)

    def _count_snapshot_error(self, reason: str) -> None:
        self.metrics.snapshot_errors.labels(reason).inc()

    def _count_internal_error(self, where: str) -> None:
        self.metrics.internal_errors.labels(where).inc()

    def close(self, timeout: float | None = None) -> None:
        """Undo everything; ends within SIGHTLINE_SHUTDOWN_TIMEOUT (or ``timeout``, if
        shorter) whatever the backends do."""
        integrations.watcher.unwatch(self._bind)
        budget = self.settings.shutdown_timeout
        deadline = time.monotonic() + (budget if timeout is None else min(budget, timeout))
        queues: list[BatchQueue[Any]] = []
        if self.tracing is not None and self.tracing.queue is not None:
            queues.append(self.tracing.queue)
        if self.logs is not None and self.logs.queue is not None:
            queues.append(self.logs.queue)
        for queue in queues:  # both flush at once, sharing the budget
            queue.begin_close(deadline)
        if self.metrics_server is not None:  # stopped while the queues flush: in the budget
            server, self.metrics_server = self.metrics_server, None
            with _safety.internal_errors("metrics.server.close"):
                server.close(deadline)
        integrations.uninstall_all(self.integrations)
        self.saturation.gc_pauses.uninstall()
        self.saturation.loop_lag.stopped = True
        self.queue_depths.close()
        if self.logs is not None:
            with _safety.internal_errors("logs.close"):
                self.logs.close(deadline)
        if self.tracing is not None:
            with _safety.internal_errors("tracing.close"):
                self.tracing.close(deadline)
        for queue in queues:
            queue.join(deadline)
        if self.snapshots is not None:  # the last numbers of this process, for the server's
            self.snapshots.close()
        with self._bind_lock:
            self._closed = True  # no binding from now on: the instruments leave the registry
            self.metrics.close()
        if self._value_class is not None:
            values: Any = sys.modules["prometheus_client.values"]
            values.ValueClass = self._value_class
        _safety.stop_counting(self._count_internal_error)


def _own_prometheus_values(settings: Settings) -> Any:
    """Make prometheus-client keep the values of metrics made from now on in memory, not
    in its multi-process files, when PROMETHEUS_MULTIPROC_DIR is set and Sightline merges
    the processes; returns what to restore (None: nothing changed). prometheus-client is
    loaded."""
    if settings.multiprocess == "off" or not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return None
    values: Any = sys.modules["prometheus_client.values"]
    previous = values.ValueClass
    values.ValueClass = values.MutexValue
    return previous
