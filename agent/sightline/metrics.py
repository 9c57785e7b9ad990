"""Every instrument the agent exposes, declared once. docs/metrics.md is the contract.

Names follow Prometheus conventions in base units; label names are OpenTelemetry's
stable semantic-convention attribute names with dots turned into underscores.
Every instrument is a lean collector of Sightline's own (:class:`Histogram`,
:class:`InFlight`, :class:`Counter`, :class:`Gauge`); labelled histograms fold label
sets past ``SIGHTLINE_MAX_SERIES`` into one overflow series. Recording needs nothing
from prometheus-client: it is imported when something first reads the values (a
scrape, a snapshot, or the app importing it), and only then are the instruments
registered (see :meth:`Metrics.bind` and docs/performance.md, "Start-up").
"""

from __future__ import annotations

import sys
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.semconv.attributes import (
    http_attributes,
)

from . import _fork, _resource
from ._export import ExportStats
from ._settings import Settings

if TYPE_CHECKING:
    from prometheus_client.core import Metric
    from prometheus_client.registry import Collector, CollectorRegistry

    from ._multiprocess import Snapshots

    #: An exemplar as recorded: its labels, the value and when (``time.time()``).
    Exemplar = tuple[dict[str, str], float, float]


def prometheus_label(attribute: str) -> str:
    return attribute.replace(".", "_")


METHOD = prometheus_label(http_attributes.HTTP_REQUEST_METHOD)
ROUTE = prometheus_label(http_attributes.HTTP_ROUTE)
STATUS = prometheus_label(http_attributes.HTTP_RESPONSE_STATUS_CODE)
SERVER_ADDRESS = "server_address"  # server.address: the host called, without the port
ERROR_TYPE = "error_type"  # error.type: the exception of a request that got no response
DB_SYSTEM = "db_system_name"  # db.system.name: redis, postgresql, sqlite, ...
DB_OPERATION = "db_operation_name"  # db.operation.name: GET, SELECT, ...
POOL_NAME = "db_client_connection_pool_name"  # db.client.connection.pool.name

#: ``db.client.operation.duration`` boundaries from OpenTelemetry's database conventions.
DB_DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0)

#: ``http.server.request.duration`` boundaries from OpenTelemetry's stable HTTP conventions.
HTTP_DURATION_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)
#: Time spent queued in front of the app (proxy → worker) can be far longer than a request.
QUEUE_DURATION_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)

#: Background tasks run from milliseconds to many minutes.
TASK_DURATION_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
)
#: A backlog can keep tasks waiting for hours.
TASK_WAIT_BUCKETS = (
    0.005,
    0.01,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    1800.0,
    3600.0,
    7200.0,
)
TASK_LABELS = ("task_system", "task_queue", "task_name")

#: Route label of a request that matched no route template (404s, apps without a router).
UNMATCHED_ROUTE = "_unmatched"
#: Method label of a request whose method is not one of the standard HTTP methods.
OTHER_METHOD = "_OTHER"
#: Every label of the one series that takes label sets past the cardinality cap.
OVERFLOW = "_overflow"

_SDK_TRACE = "opentelemetry.sdk.trace"
_perf_counter = time.perf_counter

KNOWN_METHODS = frozenset(
    ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
)


class Described:
    """A custom collector whose names the registry learns at registration, so a name the
    app registered already is refused there instead of doubling series at scrape time.

    ``collect`` runs only through a registry, so prometheus-client is loaded by then:
    collectors import its metric families there.
    """

    def collect(self) -> Iterable[Metric]:
        raise NotImplementedError

    def describe(self) -> Iterable[Metric]:
        return list(self.collect())


class Histogram(Described):
    """A labelled histogram built for the request path, with a cap on label sets.

    prometheus-client's ``Histogram`` takes two locks and walks its buckets in Python
    on every observation; this one finds the bucket with :func:`bisect.bisect_left` and
    updates count, sum and exemplar under one lock. ``child(key)`` costs one dict lookup
    once a label set has been seen. The first ``max_series`` label sets get their own
    series; later ones share the overflow series (every label ``_overflow``) and count
    into ``sightline_series_folded_total``.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        max_series: int,
        folded: Counter | None = None,
        locked: bool = True,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.bounds = tuple(buckets)
        self._les = [repr(float(b)) for b in self.bounds] + ["+Inf"]
        self._max = max_series
        self._children: dict[tuple[str, ...], HistogramChild] = {}
        self._overflow: HistogramChild | None = None
        self._lock = threading.Lock()
        # Exposed from the start, so a query for folded samples finds a zero, not nothing.
        self._folded = folded.labels(name) if folded is not None else None
        self._child_class = HistogramChild if locked else UnlockedHistogramChild
        _fork.track(self)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        for child in [*self._children.values(), self._overflow]:
            if child is not None:
                child._lock = threading.Lock()

    def child(self, key: tuple[str, ...]) -> HistogramChild:
        child = self._children.get(key)
        return child if child is not None else self._new_child(key)

    def _new_child(self, key: tuple[str, ...]) -> HistogramChild:
        with self._lock:
            child = self._children.get(key)
            if child is not None:
                return child
            if len(self._children) < self._max:
                child = self._children[key] = self._child_class(self.bounds)
                return child
            if self._overflow is None:
                self._overflow = self._child_class(self.bounds)
        if self._folded is not None:
            self._folded.inc()
        return self._overflow

    def series(self) -> int:
        """Label sets holding their own series (the overflow series not counted)."""
        return len(self._children)

    def total(self) -> float:
        """The sum of every observation, over all series."""
        children = list(self._children.values())
        if self._overflow is not None:
            children.append(self._overflow)
        return sum(child.total for child in children)  # a float read is atomic

    def collect(self) -> Iterable[Metric]:
        from prometheus_client.core import HistogramMetricFamily
        from prometheus_client.samples import Exemplar, Sample

        # The samples HistogramMetricFamily.add_metric makes, built directly: a snapshot
        # collects every histogram once a second in every process.
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        children = list(self._children.items())
        if self._overflow is not None:
            children.append(((OVERFLOW,) * len(self.labelnames), self._overflow))
        bucket, count, total_name = f"{self.name}_bucket", f"{self.name}_count", f"{self.name}_sum"
        les = self._les
        append = family.samples.append
        for key, child in children:
            counts, total, exemplars = child.snapshot()
            base = dict(zip(self.labelnames, key, strict=True))
            cumulative = 0
            for i, le in enumerate(les):
                cumulative += counts[i]
                labels = base.copy()
                labels["le"] = le
                exemplar = exemplars[i]
                if exemplar is None:
                    append(Sample(bucket, labels, cumulative))
                else:
                    append(Sample(bucket, labels, cumulative, None, Exemplar(*exemplar)))
            append(Sample(count, base, cumulative))
            append(Sample(total_name, base.copy(), total))
        yield family


class HistogramChild:
    __slots__ = ("_lock", "bounds", "counts", "exemplars", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.exemplars: list[Exemplar | None] = [None] * (len(bounds) + 1)
        self.total = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float, exemplar: dict[str, str] | None = None) -> None:
        i = bisect_left(self.bounds, value)
        with self._lock:
            self.counts[i] += 1
            self.total += value
            if exemplar is not None:
                self.exemplars[i] = (exemplar, value, time.time())

    def snapshot(self) -> tuple[list[int], float, list[Exemplar | None]]:
        with self._lock:
            return list(self.counts), self.total, list(self.exemplars)


class UnlockedHistogramChild(HistogramChild):
    """For observations made only from ``gc.callbacks``, which never run concurrently.

    A lock there could deadlock: a collection can start while the scraping thread holds
    the lock and allocates, and its callback would then wait on that same thread.
    """

    __slots__ = ()

    def observe(self, value: float, exemplar: dict[str, str] | None = None) -> None:
        i = bisect_left(self.bounds, value)
        self.counts[i] += 1
        self.total += value

    def snapshot(self) -> tuple[list[int], float, list[Exemplar | None]]:
        return list(self.counts), self.total, list(self.exemplars)


class InFlight(Described):
    """An unlabelled gauge of work in progress, and its integral over time: busy seconds.

    The work in flight is a dict that the request path adds itself to and pops itself
    from (one C operation each, atomic under the GIL, no lock, no Python frame): the key
    is the ``id()`` of the request, so nothing keeps a request alive, and the value its
    ``perf_counter()`` start. The gauge is the dict's size.

    A gauge read at one moment is a sample, and the threads that read it (a scrape, a
    snapshot) get the GIL mostly while the request thread is blocked, which under a sync
    server is between requests: sampled, a busy worker looks idle. The busy counter
    (``<busy_name>_total``) is exact whenever it is read: the seconds of finished work
    (``completed()``, the duration histogram's sum) plus the time so far of the work in
    flight, so its rate is the mean amount of work in flight. A request is taken out of
    the dict before its duration is added to the sum, and a read takes the sum before the
    dict, so a request ending meanwhile is in neither: a read can come out a little low,
    never high. The counter keeps the highest value read and never goes back.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        busy_name: str,
        busy_documentation: str,
        completed: Callable[[], float],
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.busy_name = busy_name
        self.busy_documentation = busy_documentation
        self._completed = completed
        self._active: dict[int, float] = {}
        self._busy = 0.0
        self._read_lock = threading.Lock()  # two reads at once keep the counter monotonic
        _fork.track(self)

    def _after_fork(self) -> None:
        self._read_lock = threading.Lock()
        self._active.clear()  # the parent's requests are not this process's

    @property
    def value(self) -> int:
        return len(self._active)

    def busy_seconds(self) -> float:
        """Seconds of work done so far, in-flight work included up to now."""
        with self._read_lock:
            completed = self._completed()  # first: see the class docstring
            now = _perf_counter()
            running = sum(now - started for started in self._active.copy().values())
            busy = completed + running
            if busy > self._busy:
                self._busy = busy
            return self._busy

    def collect(self) -> Iterable[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        yield GaugeMetricFamily(self.name, self.documentation, value=self.value)
        yield CounterMetricFamily(
            self.busy_name, self.busy_documentation, value=self.busy_seconds()
        )


class TaskSlots(Described):
    """:class:`InFlight`'s gauge and busy counter, per task system: ``worker_tasks_active``
    and ``worker_busy_seconds_total``, labelled ``task_system``.

    A run adds itself to its system's dict of tasks running (by ``id()``, with its
    ``perf_counter()`` start; one C operation) and :meth:`finish` takes it out and adds
    its duration to the system's finished seconds under one lock, which a read holds too:
    busy seconds (finished, plus the time so far of the tasks running) are exact whatever
    the duration histogram's cardinality guard folds. A task's duration is measured
    before it may wait for a late snapshot (:meth:`Snapshots.park`), and a read during
    that wait counts its time so far past it: each system keeps its highest reading, so
    the counter never goes back.
    """

    def __init__(self) -> None:
        self._active: dict[str, dict[int, float]] = {}
        self._done: dict[str, float] = {}
        self._busy: dict[str, float] = {}  # the highest reading of each system
        self._lock = threading.Lock()
        _fork.track(self)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        for active in list(self._active.values()):
            active.clear()  # the parent's tasks are not this process's

    def system(self, name: str) -> dict[int, float]:
        """The tasks of ``name`` running (exposed, as 0, from this call on)."""
        active = self._active.get(name)
        if active is None:
            active = self._active.setdefault(name, {})
        return active

    def finish(self, name: str, key: int, seconds: float | None) -> None:
        """Task ``key`` of ``name`` has ended after ``seconds`` (None: it is given up on,
        its time unknown, as when a redelivered task replaces it)."""
        with self._lock:
            if self.system(name).pop(key, None) is not None and seconds is not None:
                self._done[name] = self._done.get(name, 0.0) + seconds

    def busy_seconds(self) -> dict[str, tuple[int, float]]:
        """Each system's tasks running and its busy seconds so far."""
        with self._lock:
            now = _perf_counter()
            found = {}
            for name, active in list(self._active.items()):
                starts = list(active.copy().values())
                running = sum(max(0.0, now - started) for started in starts)
                busy = max(self._busy.get(name, 0.0), self._done.get(name, 0.0) + running)
                self._busy[name] = busy
                found[name] = (len(starts), busy)
            return found

    def collect(self) -> Iterable[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        running = GaugeMetricFamily(
            "worker_tasks_active",
            "Background tasks running in this process.",
            labels=["task_system"],
        )
        busy = CounterMetricFamily(
            "worker_busy_seconds",
            "Task-seconds spent running (its rate is the mean number of tasks running, exact "
            "however rarely it is read).",
            labels=["task_system"],
        )
        for name, (count, seconds) in self.busy_seconds().items():
            running.add_metric([name], count)
            busy.add_metric([name], seconds)
        yield running
        yield busy


class Counter(Described):
    """A labelled counter with prometheus-client's interface (``labels(...).inc(n)``),
    exposed as its ``Counter`` is: ``<name>_total`` and, unless
    ``PROMETHEUS_DISABLE_CREATED_SERIES`` is set, ``<name>_created``."""

    kind = "counter"

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], _Value] = {}
        self._lock = threading.Lock()
        _fork.track(self)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        for child in list(self._children.values()):
            child._lock = threading.Lock()

    def labels(self, *values: object) -> _Value:
        key = tuple(str(v) for v in values)
        child = self._children.get(key)
        if child is None:
            if len(key) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}, not {key}")
            with self._lock:
                child = self._children.setdefault(key, _Value())
        return child

    def clear(self) -> None:
        with self._lock:
            self._children.clear()

    def collect(self) -> Iterable[Metric]:
        from prometheus_client import metrics
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        family: Metric
        if self.kind == "counter":
            created = metrics._use_created
            family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
            for key, child in list(self._children.items()):
                family.add_metric(key, child.value, created=child.created if created else None)
        else:
            family = GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)
            for key, child in list(self._children.items()):
                family.add_metric(key, child.value)
        yield family


class Gauge(Counter):
    """A labelled gauge with prometheus-client's interface (``labels(...).set(v)``,
    ``inc``, ``dec``)."""

    kind = "gauge"


class Capacity(Gauge):
    """A labelled gauge of slots, and its integral over time: ``<name>_seconds_total``,
    the slot-seconds offered. Each read adds every series' value as it is now for the
    time since the last read (since it was set, the first time), so the rate of a busy
    counter over this one's is the share of slots in use, whatever the series' age."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]) -> None:
        super().__init__(name, documentation, labelnames)
        self._seconds: dict[tuple[str, ...], float] = {}
        self._read_at: dict[tuple[str, ...], float] = {}

    def _after_fork(self) -> None:
        # A forked process (a Celery pool process, an RQ work horse) offers none of the
        # slots of the process that forked it: that one goes on reporting them.
        super()._after_fork()
        self._children.clear()
        self._seconds.clear()
        self._read_at.clear()

    def collect(self) -> Iterable[Metric]:
        from prometheus_client.core import CounterMetricFamily

        yield from super().collect()
        family = CounterMetricFamily(
            f"{self.name}_seconds",
            f"Slot-seconds offered: {self.name} integrated over time.",
            labels=self.labelnames,
        )
        with self._lock:
            now = _perf_counter()  # monotonic: a clock step adds or takes no slot-seconds
            for key, child in list(self._children.items()):
                since = self._read_at.get(key)
                if since is None:  # first read: from when it was set, on this clock
                    since = now - max(0.0, time.time() - child.created)
                seconds = self._seconds.get(key, 0.0) + child.value * max(0.0, now - since)
                self._seconds[key], self._read_at[key] = seconds, now
                family.add_metric(key, seconds)
        yield family


class _Value:
    """One series of a :class:`Counter` or :class:`Gauge`."""

    __slots__ = ("_lock", "created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()
        self._lock = threading.Lock()

    def inc(self, amount: float = 1) -> None:
        with self._lock:
            self.value += amount

    def dec(self, amount: float = 1) -> None:
        with self._lock:
            self.value -= amount

    def set(self, value: float) -> None:
        self.value = float(value)


class Metrics:
    """The agent's instruments, registered in one registry and removable as a whole.

    Made without a registry, they record from the start and are registered by
    :meth:`bind`, once prometheus-client is loaded.
    """

    def __init__(self, settings: Settings, registry: CollectorRegistry | None = None) -> None:
        self._registry: CollectorRegistry | None = None
        self._collectors: list[Any] = []
        # Binding (on whichever thread first reads the metrics) and registering a collector
        # (an integration, at the app's import of its library) must not interleave.
        self._lock = threading.Lock()
        _fork.track(self)
        #: A multi-process server's snapshots: a request or task ending once their thread
        #: is late waits for it (``Snapshots.park``).
        self.snapshots: Snapshots | None = None

        self.series_folded = self._add(
            Counter(
                "sightline_series_folded",
                "Observations folded into a metric's overflow series by the cardinality guard.",
                ["metric"],
            )
        )
        self.internal_errors = self._add(
            Counter(
                "sightline_internal_errors",
                "Errors inside the agent that were suppressed instead of reaching the app.",
                ["component"],
            )
        )
        self.exported = self._add(
            Counter(
                "sightline_exported",
                "Spans or log records delivered to their backend.",
                ["signal"],
            )
        )
        self.dropped = self._add(
            Counter(
                "sightline_dropped",
                "Spans or log records given up on, by reason.",
                ["signal", "reason"],
            )
        )
        self.retried = self._add(
            Counter(
                "sightline_export_retried",
                "Spans or log records sent again after a failed attempt, by the failure.",
                ["signal", "reason"],
            )
        )
        self.export_failures = self._add(
            Counter(
                "sightline_export_failures",
                "Failed export attempts (HTTP requests), by reason.",
                ["signal", "reason"],
            )
        )
        self.snapshot_errors = self._add(
            Counter(
                "sightline_snapshot_errors",
                "Problems with the multi-process snapshot directory, by reason: a refused "
                "directory, a file skipped, a write that failed, a merge that waited too long, "
                "a snapshot late or stale.",
                ["reason"],
            )
        )
        self.snapshot_waits = self._add(
            Counter(
                "sightline_snapshot_waits",
                "Requests and tasks that waited for this process's late snapshot thread.",
                [],
            )
        )
        self.snapshot_wait_seconds = self._add(
            Counter(
                "sightline_snapshot_wait_seconds",
                "Seconds requests and tasks waited for this process's late snapshot thread.",
                [],
            )
        )
        self.queues = self._add(_Queues())
        self.server_up = self._add(_ServerUp())
        self.request_duration = self._add(
            Histogram(
                "http_server_request_duration_seconds",
                "Duration of HTTP server requests, until the response body is sent or closed.",
                [METHOD, ROUTE, STATUS],
                HTTP_DURATION_BUCKETS,
                settings.max_series,
                self.series_folded,
            )
        )
        self.active_requests = self._add(
            InFlight(
                "http_server_active_requests",
                "HTTP server requests in flight.",
                "http_server_busy_seconds",
                "Request-seconds spent in flight (its rate is the mean number of requests "
                "in flight, exact however rarely it is read).",
                self.request_duration.total,
            )
        )
        #: The requests in flight, by ``id()``, with their starts: what the request path
        #: adds itself to and pops itself from (see InFlight).
        self.requests_in_flight: dict[int, float] = self.active_requests._active
        self.queue_duration = self._add(
            Histogram(
                "http_server_request_queue_duration_seconds",
                "Time a request waited between the front proxy (X-Request-Start) and the app.",
                [],
                QUEUE_DURATION_BUCKETS,
                1,
                self.series_folded,
            )
        ).child(())
        self.client_duration = self._add(
            Histogram(
                "http_client_request_duration_seconds",
                "Duration of outgoing HTTP requests, until the response headers arrive.",
                [METHOD, SERVER_ADDRESS, STATUS, ERROR_TYPE],
                HTTP_DURATION_BUCKETS,
                settings.max_series,
                self.series_folded,
            )
        )
        self.db_duration = self._add(
            Histogram(
                "db_client_operation_duration_seconds",
                "Duration of database and cache operations, by system, operation and error.",
                [DB_SYSTEM, DB_OPERATION, ERROR_TYPE],
                DB_DURATION_BUCKETS,
                settings.max_series,
                self.series_folded,
            )
        )
        self.pool_wait = self._add(
            Histogram(
                "db_client_connection_wait_time_seconds",
                "Time taken to get a connection from a pool (waiting for one, or opening one).",
                [DB_SYSTEM, POOL_NAME],
                DB_DURATION_BUCKETS,
                settings.max_series,
                self.series_folded,
            )
        )
        self.pool_timeouts = self._add(
            Counter(
                "db_client_connection_timeouts",
                "Requests for a pool connection that gave up waiting.",
                [DB_SYSTEM, POOL_NAME],
            )
        )
        self.cache_lookups = self._add(
            Counter(
                "cache_lookups",
                "Cache reads, by whether the key was found (hit) or not (miss).",
                [DB_SYSTEM, "cache_result"],
            )
        )
        self.task_duration = self._add(
            Histogram(
                "worker_task_duration_seconds",
                "Time a background task ran, by outcome.",
                [*TASK_LABELS, "task_outcome"],
                TASK_DURATION_BUCKETS,
                settings.max_series,
                self.series_folded,
            )
        )
        self.task_wait = self._add(
            Histogram(
                "worker_task_wait_seconds",
                "Time a background task waited between being published and starting.",
                TASK_LABELS,
                TASK_WAIT_BUCKETS,
                settings.max_series,
                self.series_folded,
            )
        )
        self.tasks_published = self._add(
            Counter(
                "worker_tasks_published",
                "Background tasks published (sent to a queue).",
                TASK_LABELS,
            )
        )
        self.tasks_active: TaskSlots = self._add(TaskSlots())
        self.worker_capacity = self._add(
            Capacity(
                "worker_capacity",
                "Background tasks this worker can run at once (its concurrency).",
                ["task_system"],
            )
        )
        self._add(_TargetInfo(settings))
        if registry is not None:
            self.bind(registry)
        self.exemplars = settings.exemplars
        # Read directly on the request path: a seen label set costs one dict lookup.
        self._request_children = self.request_duration._children
        # Children of labelled task instruments, looked up once (as Histogram.child does).
        self._published_children: dict[tuple[str, str, str], Any] = {}
        self._lookup_children: dict[tuple[str, str], Any] = {}
        self._timeout_children: dict[tuple[str, str], Any] = {}
        self._max_series = settings.max_series

    def _add(self, collector: Any) -> Any:
        self._collectors.append(collector)
        return collector

    @property
    def registry(self) -> CollectorRegistry | None:
        """The registry the instruments are in; None before :meth:`bind`."""
        return self._registry

    def bind(self, registry: CollectorRegistry) -> None:
        """Register every instrument in ``registry``, all or none: a name the app has
        registered already raises ``ValueError`` and leaves the registry as it was."""
        registered: list[Collector] = []
        with self._lock:
            try:
                for collector in self._collectors:
                    registry.register(collector)
                    registered.append(collector)
            except ValueError:  # take nothing, leave theirs
                for collector in registered:
                    registry.unregister(collector)
                raise
            self._registry = registry

    def _after_fork(self) -> None:
        self._lock = threading.Lock()

    def register(self, collector: Any) -> None:
        with self._lock:
            if self._registry is not None:
                self._registry.register(collector)
            self._collectors.append(collector)

    def close(self) -> None:
        with self._lock:
            registry, self._registry = self._registry, None
            if registry is not None:
                for collector in self._collectors:
                    try:
                        registry.unregister(collector)
                    except KeyError:
                        pass
            self._collectors.clear()

    def active_tasks(self, system: str) -> dict[int, float]:
        """The tasks of ``system`` running (see :class:`TaskSlots`), exposed from now on."""
        return self.tasks_active.system(system)

    def published(self, system: str, queue: str, name: str) -> None:
        key = (system, queue, name)
        child = self._published_children.get(key)
        if child is None:
            child = self._published_children[key] = self.tasks_published.labels(*key)
        child.inc()

    def export_stats(self, signal: str) -> ExportStats:
        return ExportStats(signal, self.exported, self.dropped, self.retried, self.export_failures)

    def observe_request(
        self, method: str, route: str, status: str, seconds: float, span: Any = None
    ) -> None:
        """Record one request; a recording span (given, or current) becomes the exemplar."""
        key = (method, route, status)
        child = self._request_children.get(key) or self.request_duration.child(key)
        if self.exemplars:
            if span is None:
                # Without the SDK loaded no span can be recording: skip the context lookup.
                if _SDK_TRACE not in sys.modules:
                    child.observe(seconds)
                    return
                span = trace.get_current_span()
            if span.is_recording():
                trace_id, span_id = hex_ids(span)
                child.observe(seconds, {"trace_id": trace_id, "span_id": span_id})
                return
        child.observe(seconds)

    def observe_client(
        self, method: str, host: str, status: str, error: str, seconds: float
    ) -> None:
        """Record one outgoing request: ``status`` empty when no response came, ``error``
        the exception's class then."""
        if method not in KNOWN_METHODS:
            method = method.upper() if method.upper() in KNOWN_METHODS else OTHER_METHOD
        self.client_duration.child((method, host.lower(), status, error)).observe(seconds)

    def observe_db(self, system: str, operation: str, error: str, seconds: float) -> None:
        self.db_duration.child((system, operation, error)).observe(seconds)

    def pool_timeout(self, key: tuple[str, str]) -> None:
        """Count a checkout that gave up; past ``max_series`` pools, into ``_overflow``."""
        child = self._timeout_children.get(key)
        if child is None:
            if len(self._timeout_children) >= self._max_series:
                key = (OVERFLOW, OVERFLOW)
            child = self._timeout_children.setdefault(key, self.pool_timeouts.labels(*key))
        child.inc()

    def cache_lookup(self, system: str, hits: int, misses: int) -> None:
        for result, n in (("hit", hits), ("miss", misses)):
            if n:
                key = (system, result)
                child = self._lookup_children.get(key)
                if child is None:
                    child = self._lookup_children[key] = self.cache_lookups.labels(*key)
                child.inc(n)


def hex_ids(span: Any) -> tuple[str, str]:
    """A span's (trace_id, span_id) in hex; Sightline's own spans have them formatted once."""
    ids: tuple[str, str] | None = getattr(span, "hex_ids", None)
    if ids is None:
        ctx = span.get_span_context()
        ids = (format(ctx.trace_id, "032x"), format(ctx.span_id, "016x"))
    return ids


def resource_labels(settings: Settings) -> dict[str, str]:
    """``target_info`` labels: the resource attributes, dots turned into underscores."""
    attributes = _resource.attributes(settings)
    labels: dict[str, str] = {}
    for key, value in attributes.items():
        label = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in key)
        if label and not label[0].isdigit() and not label.startswith("__"):
            labels[label] = str(value)
    return labels


class _TargetInfo(Described):
    """``target_info``, built at scrape time so a forked worker shows its own instance id."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def collect(self) -> Iterable[Metric]:
        from prometheus_client.core import InfoMetricFamily

        yield InfoMetricFamily(
            "target",
            "Resource attributes of this process, as in OpenTelemetry.",
            value=resource_labels(self._settings),
        )


class _ServerUp(Described):
    """``sightline_metrics_server_up``: 1 when this process serves its metrics port, 0 when
    it could not (the port taken, by whom is logged); absent while it is being obtained or
    with no port configured. Seen where the metrics still are: the app's own path, the
    merged page of the server's other processes."""

    def __init__(self) -> None:
        self.server: Any = None

    def collect(self) -> Iterable[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        server = self.server
        family = GaugeMetricFamily(
            "sightline_metrics_server_up",
            "Whether this process serves metrics on SIGHTLINE_METRICS_ADDR (0: it could not).",
        )
        if server is not None and server.up is not None:
            family.add_metric([], 1.0 if server.up else 0.0)
        yield family


class _Queues(Described):
    """Fill and bound of every export queue, read at scrape time."""

    def __init__(self) -> None:
        self._queues: dict[str, Any] = {}

    def add(self, signal: str, queue: Any) -> None:
        """Report ``queue`` (a :class:`~sightline._export.BatchQueue`) as ``signal``'s."""
        self._queues[signal] = queue

    def collect(self) -> Iterable[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        items = GaugeMetricFamily(
            "sightline_queue_items", "Items waiting in an export queue.", labels=["signal"]
        )
        capacity = GaugeMetricFamily(
            "sightline_queue_capacity",
            "Items an export queue holds before dropping new ones.",
            labels=["signal"],
        )
        size = GaugeMetricFamily(
            "sightline_queue_bytes",
            "Bytes (estimated for spans) waiting in an export queue.",
            labels=["signal"],
        )
        bound = GaugeMetricFamily(
            "sightline_queue_capacity_bytes",
            "Bytes an export queue holds before dropping new items.",
            labels=["signal"],
        )
        for signal, queue in list(self._queues.items()):
            items.add_metric([signal], len(queue))
            capacity.add_metric([signal], queue.max_items)
            if queue.max_bytes is not None:
                size.add_metric([signal], queue.bytes)
                bound.add_metric([signal], queue.max_bytes)
        yield items
        yield capacity
        yield size
        yield bound
