"""Saturation of the process and its container, read at scrape time (never on the request path).

What a request cannot see but a capacity planner needs: the CPU the container may
really use (cgroup v2 ``cpu.max`` or v1 CFS quota, else the cores this process may
run on), how often the kernel throttled it, the memory limit (cgroup, else the host),
threads, garbage-collector pauses, and how many requests this process can serve at
once. CPU seconds, resident memory and file descriptors come from prometheus-client's
own ``ProcessCollector``, which the agent registers next to this one.

The cgroup readers take a filesystem root so that tests can point them at a tree
laid out like a v1 or v2 host.

Every file read releases the GIL and, in a busy process, the collecting thread then
waits to get it back through many futile wakeups that slow the app's threads down; in
a multi-process server a snapshot is collected every second. So what cannot change
while a process runs (its cgroup, the cgroup version, the host's memory) is read once
per process, and each file is read with three system calls rather than the seven of
``open()``.
"""

from __future__ import annotations

import gc
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import _fork, _safety
from ._export import warn_rate_limited
from .metrics import Described, Histogram

if TYPE_CHECKING:
    import asyncio

    from prometheus_client.core import Metric

# cgroup v1 reports "no limit" as a huge page-aligned number; anything this large is unlimited.
_UNLIMITED = 1 << 60

GC_PAUSE_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0)


@dataclass(frozen=True)
class CpuStat:
    periods: int
    throttled_periods: int
    throttled_seconds: float


def _read(path: str) -> str | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        chunks = [os.read(fd, 65536)]
        while len(chunks[-1]) == 65536:  # these files are small: one read, nearly always
            chunks.append(os.read(fd, 65536))
        return b"".join(chunks).decode(errors="replace").strip()
    except OSError:
        return None
    finally:
        os.close(fd)


#: root -> what cannot change while the process runs, for the process _fixed_pid; a
#: forked child (which may have been moved to another cgroup) reads it anew.
_fixed: dict[str, tuple[dict[str, str], bool]] = {}
_fixed_pid = 0
#: The host's memory, read once: psutil reads all of /proc/meminfo for it.
_host_memory: int | None = None


def _layout(root: str) -> tuple[dict[str, str], bool]:
    """This process's cgroup paths and whether the host runs cgroup v2, read once."""
    global _fixed_pid
    if _fixed_pid != os.getpid():
        _fixed.clear()
        _fixed_pid = os.getpid()
    found = _fixed.get(root)
    if found is None:
        found = _fixed[root] = (_cgroup_paths(root), _v2(root))
    return found


def _cgroup_paths(root: str) -> dict[str, str]:
    """Map each controller ("" for the v2 unified hierarchy) to this process's cgroup path."""
    text = _read(os.path.join(root, "proc/self/cgroup")) or ""
    paths: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        for controller in parts[1].split(","):
            paths[controller] = parts[2]
    return paths


def _candidate_dirs(root: str, mount: str, path: str) -> list[str]:
    """Our cgroup directory and its ancestors, innermost first.

    Inside a container the namespaced path is usually "/" and the files sit at the
    mount point itself; on a host the path names a nested group whose parents may
    carry the limit. Either way the effective limit is the smallest on the way up.
    """
    base = os.path.join(root, "sys/fs/cgroup", mount)
    dirs = []
    parts = [p for p in path.split("/") if p]
    while True:
        dirs.append(os.path.join(base, *parts))
        if not parts:
            break
        parts.pop()
    return dirs


def _v2(root: str) -> bool:
    return os.path.exists(os.path.join(root, "sys/fs/cgroup/cgroup.controllers"))


def cpu_limit_cores(root: str = "/") -> float:
    """CPU cores this process may use: the tightest cgroup quota, else the CPUs it may run on."""
    limits: list[float] = []
    paths, v2 = _layout(root)
    if v2:
        for d in _candidate_dirs(root, "", paths.get("", "/")):
            text = _read(os.path.join(d, "cpu.max"))
            if text:
                quota, _, period = text.partition(" ")
                if quota != "max" and period:
                    limits += _quota(quota, period)
    else:
        for mount in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
            for d in _candidate_dirs(root, mount, paths.get("cpu", "/")):
                cfs_quota = _read(os.path.join(d, "cpu.cfs_quota_us"))
                cfs_period = _read(os.path.join(d, "cpu.cfs_period_us"))
                if cfs_quota and cfs_period:
                    limits += _quota(cfs_quota, cfs_period)
            if limits:
                break
    try:
        cores = float(len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        cores = float(os.cpu_count() or 1)
    return min([cores, *limits])


def _quota(quota: str, period: str) -> list[float]:
    """A CFS quota over its period, in cores; none for no quota (v1's -1) or one that does
    not parse, which is reported (an internal error) while the other levels still count:
    the gauge is what tells Sightline's targets apart in the rules."""
    try:
        cores = int(quota) / int(period)
    except (ValueError, ZeroDivisionError) as exc:
        _safety.report("saturation.cpu_limit", exc)
        return []
    return [cores] if cores > 0 else []


def cpu_stat(root: str = "/") -> CpuStat | None:
    """CFS throttling counters of this process's cgroup, or None where the kernel keeps none."""
    paths, v2 = _layout(root)
    if v2:
        candidates = [(_candidate_dirs(root, "", paths.get("", "/"))[0], 1e-6, "throttled_usec")]
    else:
        candidates = [
            (_candidate_dirs(root, mount, paths.get("cpu", "/"))[0], 1e-9, "throttled_time")
            for mount in ("cpu", "cpu,cpuacct", "cpuacct,cpu")
        ]
    for directory, scale, time_key in candidates:
        text = _read(os.path.join(directory, "cpu.stat"))
        if text is None:
            continue
        fields = dict(line.split(" ", 1) for line in text.splitlines() if " " in line)
        if "nr_periods" not in fields:
            continue
        return CpuStat(
            periods=int(fields["nr_periods"]),
            throttled_periods=int(fields.get("nr_throttled", "0")),
            throttled_seconds=int(fields.get(time_key, "0")) * scale,
        )
    return None


def memory_limit_bytes(root: str = "/") -> int:
    """The tightest cgroup memory limit on the way to the root, else the host's memory."""
    limits: list[int] = []
    paths, v2 = _layout(root)
    if v2:
        for d in _candidate_dirs(root, "", paths.get("", "/")):
            text = _read(os.path.join(d, "memory.max"))
            if text and text != "max":
                limits.append(int(text))
    else:
        for d in _candidate_dirs(root, "memory", paths.get("memory", "/")):
            text = _read(os.path.join(d, "memory.limit_in_bytes"))
            if text and 0 < int(text) < _UNLIMITED:
                limits.append(int(text))
    global _host_memory
    if _host_memory is None:
        import psutil  # loaded by the first scrape, not by init()

        _host_memory = psutil.virtual_memory().total
    return min([_host_memory, *limits])


class GCPauses:
    """Times every garbage collection through ``gc.callbacks`` (well under a microsecond)."""

    def __init__(self) -> None:
        self._started: dict[int, float] = {}
        self.histogram = Histogram(
            "python_gc_pause_seconds",
            "Time the interpreter stopped for garbage collection, per generation.",
            ["generation"],
            GC_PAUSE_BUCKETS,
            max_series=3,
            locked=False,  # see UnlockedHistogramChild
        )
        self._generations = [self.histogram.child((str(g),)) for g in range(3)]

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        try:
            if phase == "start":
                self._started[threading.get_ident()] = time.perf_counter()
                return
            started = self._started.pop(threading.get_ident(), None)
            if started is not None:
                generation = min(max(int(info.get("generation", 0)), 0), 2)
                self._generations[generation].observe(time.perf_counter() - started)
        except Exception as exc:
            _safety.report("saturation.gc", exc)

    def install(self) -> None:
        if self not in gc.callbacks:
            gc.callbacks.append(self)

    def uninstall(self) -> None:
        while self in gc.callbacks:
            gc.callbacks.remove(self)


LOOP_LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
LOOP_LAG_INTERVAL = 0.5


class LoopLag:
    """How late the asyncio event loop runs a timer: a blocked loop delays every request.

    The first request the ASGI core sees on a loop starts a timer on it that re-arms
    itself every half second and records how late it fired; nothing runs per request
    but an identity check.
    """

    def __init__(self) -> None:
        self.histogram = Histogram(
            "asyncio_event_loop_lag_seconds",
            "How late the event loop ran a timer due now: time the loop was blocked.",
            [],
            LOOP_LAG_BUCKETS,
            max_series=1,
        )
        self._child = self.histogram.child(())
        self._loops: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()
        self._last: weakref.ref[asyncio.AbstractEventLoop] | None = None
        self.stopped = False

    def watch(self, loop: asyncio.AbstractEventLoop) -> None:
        last = self._last
        if last is not None and last() is loop:
            return
        self._last = weakref.ref(loop)
        if loop not in self._loops:
            self._loops.add(loop)
            self._arm(loop)

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        due = loop.time() + LOOP_LAG_INTERVAL
        loop.call_at(due, self._fire, loop, due)

    def _fire(self, loop: asyncio.AbstractEventLoop, due: float) -> None:
        try:
            self._child.observe(max(0.0, loop.time() - due))
            if not self.stopped and not loop.is_closed():
                self._arm(loop)
        except Exception as exc:
            _safety.report("saturation.loop_lag", exc)


class SaturationCollector(Described):
    """Collects the saturation signals at scrape time; see docs/metrics.md for each one."""

    def __init__(self, capacity: Callable[[], int | None], root: str = "/") -> None:
        self._capacity = capacity
        self._root = root
        # The integral of the capacity over time, from init() (see capacity_seconds).
        self._capacity_seconds = 0.0
        self._capacity_read = time.perf_counter()
        self._capacity_lock = threading.Lock()
        _fork.track(self)
        self._process: Any = None  # psutil's, made by the first scrape (psutil loads then)
        self.gc_pauses = GCPauses()
        self.loop_lag = LoopLag()

    def describe(self) -> Iterable[Metric]:
        """Every family :meth:`collect` may yield, without reading anything: registering
        this collector in init() loads no psutil and reads no cgroup file."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        for name in ("process_cpu_limit_cores", "process_memory_limit_bytes", "process_threads"):
            yield GaugeMetricFamily(name, "")
        for name in ("periods", "throttled_periods", "throttled_seconds"):
            yield CounterMetricFamily(f"process_cpu_{name}", "")
        yield from self.gc_pauses.histogram.describe()
        yield from self.loop_lag.histogram.describe()
        yield GaugeMetricFamily("http_server_worker_capacity", "")
        yield CounterMetricFamily("http_server_capacity_seconds", "")

    def _after_fork(self) -> None:
        self._capacity_lock = threading.Lock()
        # The child offers its own slots from now on: the parent's time since its last
        # read is not the child's. (The total so far stays: a snapshot's baseline, taken
        # at fork, subtracts what the child inherited, as for every counter.)
        self._capacity_read = time.perf_counter()

    def capacity_seconds(self, capacity: int) -> float:
        """Request-slot seconds this process has offered: the capacity integrated over
        time. Each read adds the capacity as it is now for the time since the last read
        (from init() on), so the ratio of the busy and capacity counters' rates is the
        share of slots in use, right even for a series younger than the rate's window."""
        with self._capacity_lock:
            now = time.perf_counter()
            self._capacity_seconds += capacity * (now - self._capacity_read)
            self._capacity_read = now
            return self._capacity_seconds

    def collect(self) -> Iterable[Metric]:
        # Each reading apart: a cgroup file that does not parse loses its own families
        # (reported as an internal error), not the limits and counters beside it.
        # process_cpu_limit_cores first, and on its own: the rules tell Sightline's
        # targets by it (SightlineServiceNotLabelled).
        for part in (self._cpu_limit, self._cpu_stat, self._memory, self._threads_and_capacity):
            try:
                yield from part()
            except Exception as exc:
                _safety.report(f"saturation.{part.__name__.strip('_')}", exc)

    def _cpu_limit(self) -> Iterable[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        yield GaugeMetricFamily(
            "process_cpu_limit_cores",
            "CPU cores this process may use: the cgroup quota, else the CPUs it may run on.",
            value=cpu_limit_cores(self._root),
        )

    def _cpu_stat(self) -> Iterable[Metric]:
        from prometheus_client.core import CounterMetricFamily

        stat = cpu_stat(self._root)
        if stat is not None:
            yield CounterMetricFamily(
                "process_cpu_periods",
                "CFS scheduling periods elapsed for this cgroup.",
                value=stat.periods,
            )
            yield CounterMetricFamily(
                "process_cpu_throttled_periods",
                "CFS periods in which this cgroup was throttled (its CPU quota ran out).",
                value=stat.throttled_periods,
            )
            yield CounterMetricFamily(
                "process_cpu_throttled_seconds",
                "Time this cgroup's threads were held back by CPU throttling.",
                value=stat.throttled_seconds,
            )

    def _memory(self) -> Iterable[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        yield GaugeMetricFamily(
            "process_memory_limit_bytes",
            "Memory this process may use: the cgroup limit, else the host's memory.",
            value=memory_limit_bytes(self._root),
        )

    def _threads_and_capacity(self) -> Iterable[Metric]:
        import psutil  # loaded by the first scrape, not by init()
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        if self._process is None or self._process.pid != os.getpid():  # or forked since
            self._process = psutil.Process()
        yield GaugeMetricFamily(
            "process_threads",
            "Operating-system threads in this process.",
            value=self._process.num_threads(),
        )
        yield from self.gc_pauses.histogram.collect()
        yield from self.loop_lag.histogram.collect()
        capacity = self._capacity()
        if capacity is not None:
            yield GaugeMetricFamily(
                "http_server_worker_capacity",
                "Requests this process can serve at once.",
                value=capacity,
            )
            yield CounterMetricFamily(
                "http_server_capacity_seconds",
                "Request-slot seconds this process has offered (the rate of "
                "http_server_busy_seconds_total over this rate is the share in use).",
                value=self.capacity_seconds(capacity),
            )
        else:
            with self._capacity_lock:  # no capacity known: none offered in the meantime
                self._capacity_read = time.perf_counter()


#: How a queue's depth and the age of its oldest message are read (None: not known).
DepthReader = Callable[[], float]
AgeReader = Callable[[], "float | None"]
Registries = dict[str, Callable[[], float]]


class QueueDepths(Described):
    """The depth of the queues background workers consume, and where the broker can tell,
    the age of the oldest waiting message.

    A daemon thread reads every tracked queue every ``interval`` seconds, so a slow or
    unreachable broker never touches a task or a scrape: the scrape shows the last
    reading. A queue whose reading fails is left out until it succeeds again (an absent
    series, not a stale one). A forked child (a pre-fork pool's worker) does not sample:
    its parent does, once for the whole worker.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._sources: dict[tuple[str, str], tuple[DepthReader, AgeReader | None, Registries]] = {}
        self._values: dict[tuple[str, str], tuple[float, float | None, dict[str, float]]] = {}
        self._failures: dict[tuple[str, str, str], int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        _fork.track(self)

    def track(
        self,
        system: str,
        queue: str,
        depth: DepthReader,
        age: AgeReader | None = None,
        registries: Registries | None = None,
    ) -> None:
        """Read ``depth`` (and ``age``, and each of ``registries``: jobs a queue holds in
        other states, e.g. RQ's started and failed) every interval."""
        with self._lock:
            self._sources[(system, queue)] = (depth, age, registries or {})
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="sightline-queues", daemon=True
                )
                self._thread.start()

    def untrack(self, system: str, queue: str) -> None:
        with self._lock:
            self._sources.pop((system, queue), None)
            self._values.pop((system, queue), None)

    def _run(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self.interval):
                return

    def sample(self) -> None:
        with self._lock:
            sources = list(self._sources.items())
        for key, (depth, age, registries) in sources:
            try:
                count = float(depth())
                held = {state: float(read()) for state, read in registries.items()}
            except Exception as exc:
                self._values.pop(key, None)
                self._failed(key, "depth", exc)
                continue
            oldest = None
            if age is not None:
                # A broker that tells the depth but not the age still shows the depth.
                try:
                    oldest = age()
                except Exception as exc:
                    self._failed(key, "age", exc)
            if key in self._sources:
                self._values[key] = (count, oldest, held)

    def _failed(self, key: tuple[str, str], reading: str, exc: Exception) -> None:
        failures = (*key, reading)
        self._failures[failures] = self._failures.get(failures, 0) + 1
        warn_rate_limited(
            "queues",
            f"{reading}:{type(exc).__name__}",
            "sightline: cannot read the %s of %s queue %r (%s); retrying",
            reading,
            key[0],
            key[1],
            exc,
        )

    def close(self) -> None:
        self._stop.set()

    def _after_fork(self) -> None:
        self._sources = {}
        self._values = {}
        self._failures = {}
        self._thread = None
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def collect(self) -> Iterable[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        depth = GaugeMetricFamily(
            "worker_queue_depth",
            "Messages waiting in a background-task queue (sampled off the task path).",
            labels=["task_system", "task_queue"],
        )
        age = GaugeMetricFamily(
            "worker_queue_oldest_age_seconds",
            "Age of the oldest message waiting in a queue, where the broker can tell.",
            labels=["task_system", "task_queue"],
        )
        held = GaugeMetricFamily(
            "worker_queue_registry_jobs",
            "Jobs of a queue in another state than waiting (RQ: started, failed).",
            labels=["task_system", "task_queue", "registry"],
        )
        for key, (count, oldest, registries) in list(self._values.items()):
            depth.add_metric(list(key), count)
            if oldest is not None:
                age.add_metric(list(key), oldest)
            for state, jobs in registries.items():
                held.add_metric([*key, state], jobs)
        failed = CounterMetricFamily(
            "sightline_queue_read_failures",
            "Readings of a queue's depth or oldest-message age that failed (logged).",
            labels=["task_system", "task_queue", "reading"],
        )
        for labels, n in list(self._failures.items()):
            failed.add_metric(list(labels), n)
        yield depth
        yield age
        yield held
        yield failed
