"""Multi-process servers: one scrape shows every worker the server has had, live and past.

gunicorn and ``uvicorn --workers`` serve from several processes and recycle them
(``max_requests``). Each process keeps its metrics in memory, as a single process
does, and writes a snapshot of its registry to a private directory shared by the
server's processes (``_store.Store``) every second and when it exits. Whichever
process answers a scrape merges the snapshots (:class:`Aggregate`, with ``_merge``), and
they all answer scrapes on one shared socket (``_scrape``):

- counters, histograms and summaries are summed over every process the server ever
  had. An exited process's last snapshot is folded into one file of totals, under a
  file lock. The totals record which processes they hold, so a snapshot can never be
  folded twice (a process that dies between writing the totals and deleting what it
  folded leaves nothing to count again), and they are replaced atomically and synced
  to disk. Totals never go backwards, and storage is one file per live process plus one;
- gauges, and every runtime family (``process_*``, ``python_*``, ``asyncio_*``,
  in-flight requests, capacity, ``target_info``), are shown per live process,
  labelled ``process_pid``;
- ``SIGHTLINE_MAX_SERIES`` caps the label sets of each family in every snapshot, in the
  totals and in the merged view: the label sets admitted are remembered in the totals,
  so a series never moves in or out of the overflow series;
- histogram exemplars are kept, the newest per series;
- ``server_workers_configured``, ``_live`` and ``_busy`` give the server's saturation;
  each snapshot carries its process's busy share over its last second or two (from the
  exact busy-seconds counter, never a sample of the in-flight gauge), which
  ``server_workers_busy`` adds up;
  ``sightline_snapshot_age_seconds`` how old each live process's snapshot is.

A worker too busy for its snapshot thread to win the GIL makes its next request or task
wait for the thread, once it is late (:meth:`Snapshots.park`); a running process whose
snapshot is old all the same is counted and logged at each merge (``stale_snapshot``).

Nothing in the directory is trusted: a file that is not a whole, valid snapshot of
this store (its schema, its store, its file name, its size, its owner) is skipped with
a rate-limited warning and counted in ``sightline_snapshot_errors_total``, never
folded; a scrape reads a bounded number of bounded files. A scrape that cannot merge
(the lock held by a stopped process, a full disk) serves the last merged view, and a
process whose own snapshot cannot be written still shows its own numbers.

A process is known by its pid and its start time since boot (exact, unlike a start
time on the wall clock, which the kernel rounds), so the processes sharing a store must
share a PID namespace (one container, or one pod with a shared process namespace). A
process killed outright (SIGKILL, the OOM killer) loses what it counted since its last
snapshot, at most a second's worth; every other exit writes a final one.

The directory is ``$PROMETHEUS_MULTIPROC_DIR/sightline`` when that variable is set,
else ``<temporary directory>/sightline-<uid>/<server's main process>``; Sightline
creates it (0700), refuses one it does not own or that others can write (the process
then serves its own metrics alone, and says so), and removes those of servers that are
gone when a new one starts. Nothing needs creating or wiping by hand.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import _exposition, _fork, _safety
from ._exposition import Family
from ._merge import (
    SCHEMA,
    SUMMED_TYPES,
    Merge,
    child_key,
    is_per_process,
    label_key,
    leftovers,
    overflow_labels,
)
from ._process import process_key, running
from ._store import Store

if TYPE_CHECKING:
    from prometheus_client.core import Metric
    from prometheus_client.registry import CollectorRegistry

logger = logging.getLogger("sightline")

#: Seconds between two snapshots of a process's metrics.
INTERVAL = 1.0
#: How late the snapshot thread may be before requests and tasks stop to let it write.
LATE_AFTER = 0.05
#: How long a request or task waits for a late snapshot thread, at most once an interval.
PARK_TIMEOUT = 0.25
#: The shortest time over which a snapshot measures its process's busy share.
BUSY_WINDOW = 1.0
#: The counters the busy share is read from: requests and tasks (metrics.InFlight and
#: metrics.TaskSlots).
BUSY_FAMILIES = ("http_server_busy_seconds", "worker_busy_seconds")
#: Snapshots between two folds of exited processes' files by the writing thread.
FOLD_EVERY = 10
#: How long a scrape waits for another process's merge before serving its last view.
LOCK_TIMEOUT = 2.0
_WARN_EVERY_SECONDS = 60.0


@dataclass(frozen=True)
class Server:
    """The multi-process server this process belongs to, as its integration found it."""

    kind: str  # "gunicorn", "uvicorn"
    pid: int  # the process that starts the workers
    workers: int | None = None  # how many it is configured to run
    worker: bool = True  # False in the main process itself (gunicorn --preload)


def max_snapshot_bytes(max_series: int) -> int:
    """The largest snapshot a scrape reads: 32 MiB, or 16 KiB per series of the cap if
    that is more. Sightline's own families at the default cap (2,000) take about 20 MiB."""
    return max(32 << 20, max_series * (16 << 10))


class Errors:
    """Problems with the snapshot store: counted by reason, and logged at most once a
    minute per reason (a broken file is seen by every scrape)."""

    def __init__(self, count: Callable[[str], None] | None = None) -> None:
        self._count = count
        self._last: dict[str, float] = {}

    def __call__(
        self, reason: str, message: str, *args: object, level: int = logging.WARNING
    ) -> None:
        if self._count is not None:
            with _safety.internal_errors("multiprocess.count"):
                self._count(reason)
        now = time.monotonic()
        last = self._last.get(reason)
        if last is None or now - last >= _WARN_EVERY_SECONDS:
            self._last[reason] = now
            logger.log(level, "sightline: " + message, *args)


#: prometheus-client's multi-process files: ``counter_<pid>.db``, ``gauge_livesum_<pid>.db``...
_PROMETHEUS_FILE = re.compile(r"[a-z]+(?:_[a-z]+)?_(\d+)\.db")


def remove_prometheus_files(folder: str, pid: int | None = None) -> None:
    """Remove prometheus-client's files of process ``pid``, or of every process that is
    no longer running: their values are in Sightline's snapshots and totals (a metric
    made before ``init()`` still writes one), and nothing else reads them."""
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        match = _PROMETHEUS_FILE.fullmatch(name)
        if match is None:
            continue
        owner = int(match.group(1))
        if owner == pid or (pid is None and not _alive(owner)):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(folder, name))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's: alive
        return True
    return True


def open_store(server: Server | None) -> tuple[Store, str] | None:
    """The store the server's processes share and its identity, None if this process is
    not part of one; raises :class:`~sightline._store.Refused` for an untrusted one."""
    explicit = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if explicit:
        remove_prometheus_files(explicit)
        return Store.open(Path(explicit), "sightline"), "shared"
    if server is None:
        return None
    key = process_key(server.pid)
    if key is None:
        return None
    base = Store.open(Path(tempfile.gettempdir()), f"sightline-{os.geteuid()}")
    try:
        for name in base.names():
            if name != key and name.split("-", 1)[0].isdigit() and not running(name):
                base.remove_child(name)  # a server that is gone
        return base.child(key), key
    finally:
        base.close()


# -- snapshots


def _encode(families: Iterable[Metric], cap: int) -> list[dict[str, Any]]:
    encoded = []
    for family in families:
        samples = []
        children: set[tuple[tuple[str, str], ...]] = set()
        overflow: dict[tuple[str, tuple[tuple[str, str], ...]], list[Any]] = {}
        for sample in family.samples:
            exemplar = sample.exemplar
            labels = sample.labels
            child = child_key(labels)
            if child not in children:
                if len(children) >= cap:
                    labels = overflow_labels(labels)
                    key = (sample.name, tuple(sorted(labels.items())))
                    held = overflow.get(key)
                    if held is None:
                        overflow[key] = [sample.name, labels, sample.value, None]
                    else:
                        held[2] += sample.value
                    continue
                children.add(child)
            samples.append(
                [
                    sample.name,
                    labels,
                    sample.value,
                    [exemplar.labels, exemplar.value, exemplar.timestamp] if exemplar else None,
                ]
            )
        samples.extend(overflow.values())
        encoded.append(
            {
                "name": family.name,
                "help": family.documentation,
                "type": family.type,
                "unit": family.unit,
                "samples": samples,
            }
        )
    return encoded


class Snapshots:
    """Writes this process's registry to ``<process key>.json`` in the store, every
    :data:`INTERVAL` seconds from a daemon thread, on demand and when closed."""

    def __init__(
        self,
        store: Store,
        store_id: str,
        registry: CollectorRegistry | Callable[[], CollectorRegistry],
        server: Server | None,
        max_series: int = 2000,
        errors: Errors | None = None,
        waited: Callable[[float], None] | None = None,
    ) -> None:
        self.store = store
        self._waited = waited  # told how long each wait for the thread took
        self.store_id = store_id
        # A function giving the registry is called at the first read (a write, a scrape,
        # a fork), on whichever thread does it: prometheus-client may be loaded only then.
        self._registry: CollectorRegistry | None = None if callable(registry) else registry
        self._registry_of = registry if callable(registry) else None
        self.server = server
        self.max_series = max_series
        self.max_bytes = max_snapshot_bytes(max_series)
        self.errors = errors or Errors()
        self.worker = server.worker if server is not None else True
        key = process_key(os.getpid())
        if key is None:  # only with no way to tell processes apart: never join blind
            raise OSError(f"cannot tell process {os.getpid()} apart from a later one")
        self.key = key
        self._lock = threading.Lock()
        # Held while the registry is read: a fork waits for it (see _before_fork).
        self._collecting = threading.Lock()
        self._collecting_held = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        #: When the thread's next snapshot is late (``time.perf_counter()``); a request or
        #: task ending after it waits for the thread (see :meth:`park`).
        self.late_at = math.inf
        self._written = threading.Condition()  # guards late_at, _writes and _misses
        self._writes = 0  # by the thread
        self._misses = 0  # waits in a row that the thread did not end in time
        # Counts inherited from the process that forked this one (gunicorn --preload):
        # they are that process's, and are taken out of this one's snapshots.
        self._baseline: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        #: The document last written: what the file holds, without reading it back.
        self.written: dict[str, Any] | None = None
        #: (perf_counter, busy seconds) at recent documents, oldest first: the busy share
        #: of the next is measured from the newest at least BUSY_WINDOW old.
        self._busy_points: list[tuple[float, float]] = []
        _fork.track(self)

    @property
    def name(self) -> str:
        return f"{self.key}.json"

    @property
    def registry(self) -> CollectorRegistry:
        registry = self._registry
        if registry is None:
            assert self._registry_of is not None
            registry = self._registry = self._registry_of()
        return registry

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sightline-snapshots", daemon=True)
        self.late_at = _late_from_now()
        self._thread.start()

    def _run(self) -> None:
        writes = 0
        while not self._stop.wait(INTERVAL):
            with _safety.internal_errors("multiprocess.snapshot"):
                try:
                    self.write()
                finally:
                    self._wrote()
                writes += 1
                # Storage stays bounded even if nobody scrapes; while every process runs
                # there is nothing to fold, and no merge is run for nothing.
                if writes % FOLD_EVERY == 0 and leftovers(self.store):
                    with self.store.lock(timeout=0) as locked:
                        if locked:
                            Merge(self).run()
                    self._schedule()  # the next interval starts after the fold

    def _schedule(self) -> None:
        with self._written:
            self.late_at = _late_from_now()

    def _wrote(self) -> None:
        """The thread has written (or failed to write) its snapshot: wake the requests
        and tasks waiting for it, and set when the next one is late."""
        with self._written:
            self.late_at = _late_from_now()
            self._writes += 1
            self._misses = 0
            self._written.notify_all()

    def park(self) -> None:
        """Wait, at most :data:`PARK_TIMEOUT`, for the snapshot thread to write: called at
        the end of a request or task once the thread is late (``late_at``), while the
        work still counts as in flight. Never raises.

        Why: a thread woken by a timer wants the GIL at once, and in a process whose
        request thread never blocks it waits for it through futile wakeups, woken at
        each of that thread's GIL releases only to lose the race again. Each file a
        snapshot reads or writes releases the GIL, so a worker serving back to back wrote
        one snapshot in eight seconds: the merged view froze exactly when it mattered. A
        request that waits here releases the GIL for the thread, whose snapshot then
        takes a few milliseconds. Only a worker so busy that the thread cannot run ever
        waits, once an interval, and its snapshot shows it busy: it is. A thread that
        does not write in time (a slow disk) is waited for less and less often.
        """
        try:
            thread = self._thread
            if thread is None or not thread.is_alive():
                self.late_at = math.inf  # nothing to wait for (its error is reported)
                return
            with self._written:
                started = time.perf_counter()
                if started < self.late_at:
                    return  # written since the caller looked
                seen = self._writes
                written = self._written.wait_for(
                    lambda: self._writes != seen or self._stop.is_set(), PARK_TIMEOUT
                )
                if not written:
                    # Backing off: a thread stuck for good costs a request 0.25 s every
                    # 64 s at most, not every second.
                    self._misses += 1
                    self.late_at = time.perf_counter() + INTERVAL * 2 ** min(self._misses, 6)
            if self._waited is not None:
                self._waited(time.perf_counter() - started)
            if written:
                return
            self.errors(
                "late_snapshot",
                "this process's metrics snapshot thread did not write within %.2f s of "
                "being waited for (the process held up, or the store's disk slow); other "
                "processes show this process's numbers as of its last snapshot. See "
                "sightline_snapshot_age_seconds for how old they are.",
                PARK_TIMEOUT,
            )
        except Exception as exc:
            _safety.report("multiprocess.park", exc)

    def document(self, final: bool = False) -> dict[str, Any]:
        with self._collecting:
            families = _encode(self.registry.collect(), self.max_series)
            busy = self._busy_share(time.perf_counter(), _busy_seconds(families))
        if self._baseline:
            _subtract(families, self._baseline)
        return {
            "schema": SCHEMA,
            "store": self.store_id,
            "process": self.key,
            "final": final,
            "time": time.time(),
            "workers": self.server.workers if self.server is not None else None,
            "worker": self.worker,
            "busy": busy,
            "families": families,
        }

    def _busy_share(self, now: float, busy: float | None) -> float | None:
        """The mean work in flight since a document at least BUSY_WINDOW ago (or since
        the first, in a process younger than that); None for the first document."""
        if busy is None:
            return None
        points = self._busy_points
        base: tuple[float, float] | None = points[0] if points else None
        for i in range(len(points) - 1, -1, -1):
            if now - points[i][0] >= BUSY_WINDOW:
                base = points[i]
                del points[:i]
                break
        points.append((now, busy))
        if len(points) > 64:  # documents faster than the window: keep the bound
            del points[1:-32]
        if base is None or now <= base[0]:
            return None
        return max(0.0, (busy - base[1]) / (now - base[0]))

    def write(self, final: bool = False) -> bool:
        """Write this process's snapshot; False (counted, logged) if it cannot be."""
        with self._lock:
            if self._closed:  # a scrape answered while exiting must not undo the last one
                return True
            document = self.document(final)
            data = json.dumps(document, separators=(",", ":")).encode()
            try:
                self.store.write(self.name, data)
            except OSError as exc:
                self.errors(
                    "write_failed",
                    "cannot write this process's metrics snapshot in %s (%s); other processes "
                    "show its numbers as of its last snapshot",
                    self.store.path,
                    exc.strerror or exc,
                )
                return False
            self.written = document
            return True

    def close(self) -> None:
        self.late_at = math.inf
        self._stop.set()
        with self._written:
            self._written.notify_all()  # a request waiting for the thread goes on
        thread = self._thread
        if thread is not None and thread.ident != threading.get_ident():
            thread.join(INTERVAL)
        with _safety.internal_errors("multiprocess.final_snapshot"):
            if self.write(final=True) and self.store_id == "shared":
                remove_prometheus_files(os.environ.get("PROMETHEUS_MULTIPROC_DIR", ""), os.getpid())
        self._closed = True

    def _before_fork(self) -> None:
        # The registry is had (prometheus-client loaded and the instruments bound) before
        # the fork, so that the child reads its inherited counts without importing or
        # binding anything while other fork handlers run.
        with _safety.internal_errors("multiprocess.fork_registry"):
            self.registry  # noqa: B018
        # A fork while this process's threads read the registry (a snapshot, a scrape)
        # would leave the locks of the metrics being read held for ever in the child, and
        # its first request recording one of them would never return. So the fork waits
        # for the read to end (gunicorn forks workers from a master that runs init()).
        self._collecting_held = self._collecting.acquire(timeout=2.0)

    def _after_fork_in_parent(self) -> None:
        if self._collecting_held:
            self._collecting_held = False
            self._collecting.release()

    def _after_fork(self) -> None:
        # A child the server's main process forked (gunicorn --preload, or init() in an
        # on_starting hook) is one of its workers. A child of anything else (a helper
        # process a worker forks, a multiprocessing pool) is not: it writes no snapshot,
        # so it is neither counted as a worker nor able to repeat its parent's counts.
        self._lock = threading.Lock()
        self._collecting = threading.Lock()
        self._collecting_held = False
        self._stop = threading.Event()
        self._written = threading.Condition()
        self._writes = 0
        self._misses = 0
        self._busy_points = []  # the parent's work is not this process's
        self.late_at = math.inf  # until start()
        server = self.server
        key = process_key(os.getpid())
        if key is None or (server is not None and os.getppid() != server.pid):
            self._closed = True  # also: cannot tell this process apart; write nothing wrong
            return
        self.key = key
        self._closed = False
        self.worker = True
        registry: Any = self._registry  # had before the fork (see _before_fork)
        if hasattr(registry, "_lock"):  # a registry lock held at fork stays held here
            registry._lock = threading.Lock()
        self._baseline = self._inherited_counts()
        self.start()

    def _inherited_counts(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        # Read on a helper thread with a deadline: a metric's own lock, held by a thread
        # of the parent at the moment of fork, would block here forever.
        result: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        registry = self._registry
        if registry is None:  # not had before the fork (its error is logged then)
            logger.debug("sightline: counts inherited at fork could not be read; kept as are")
            return result

        def read() -> None:
            for family in _encode(registry.collect(), self.max_series):
                if family["type"] in SUMMED_TYPES and not is_per_process(family["name"]):
                    for name, labels, value, _ in family["samples"]:
                        result[(name, label_key(labels))] = value

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(1.0)
        if reader.is_alive():
            logger.debug("sightline: counts inherited at fork could not be read; kept as are")
            return {}
        return result


def _late_from_now() -> float:
    """When a snapshot the thread is about to wait an interval for will be late."""
    return time.perf_counter() + INTERVAL + LATE_AFTER


def _busy_seconds(families: list[dict[str, Any]]) -> float | None:
    """The process's busy seconds (requests and tasks), from its encoded families."""
    found = [
        float(sample[2])
        for family in families
        if family["name"] in BUSY_FAMILIES
        for sample in family["samples"]
    ]
    return sum(found) if found else None


def _subtract(
    families: list[dict[str, Any]], baseline: dict[tuple[str, tuple[tuple[str, str], ...]], float]
) -> None:
    for family in families:
        if family["type"] in SUMMED_TYPES and not is_per_process(family["name"]):
            for sample in family["samples"]:
                sample[2] -= baseline.get((sample[0], label_key(sample[1])), 0.0)


class Aggregate:
    """The server-wide view: every snapshot in the store, merged (module docstring).

    A scrape never comes back empty: if the merge cannot run, the last merged view is
    served, or this process's own numbers before there is one.
    """

    def __init__(self, snapshots: Snapshots) -> None:
        self.snapshots = snapshots
        self._last: list[Family] | None = None

    def collect(self) -> Iterable[Metric]:
        return _exposition.metrics(self.families())

    def families(self) -> list[Family]:
        """The merged families (what a scrape shows), in the merge's own shape."""
        try:
            families = self._merge()
        except Exception as exc:
            _safety.report("multiprocess.collect", exc)
            families = None
        if families is None:
            return self._last if self._last is not None else self._alone()
        self._last = families
        return families

    def _merge(self) -> list[Family] | None:
        snapshots = self.snapshots
        # This process's own numbers, current to the scrape: written first, so that no
        # scrape answered by another process can show less, and merged as written.
        written = snapshots.written if snapshots.write() else None
        own = None if written is not None else snapshots.document()
        with snapshots.store.lock(timeout=LOCK_TIMEOUT) as locked:
            if not locked:
                snapshots.errors(
                    "lock_timeout",
                    "another process has held the metrics lock in %s for %.0f s; this scrape "
                    "shows the last merged view",
                    snapshots.store.path,
                    LOCK_TIMEOUT,
                )
                return None
            view = Merge(snapshots, own, written).run()
        return view.families()

    def _alone(self) -> list[Family]:
        try:
            with self.snapshots._collecting:
                return _exposition.families_of(self.snapshots.registry.collect())
        except Exception as exc:
            _safety.report("multiprocess.collect_alone", exc)
            return []


class Scrape:
    """What serves the server-wide view: a registry (for prometheus-client's own uses) and
    the WSGI and ASGI apps for the /metrics server or path, which write the merged
    families themselves (``_exposition``)."""

    def __init__(self, snapshots: Snapshots) -> None:
        self._aggregate = Aggregate(snapshots)
        self.wsgi = _exposition.make_wsgi_app(self._aggregate.families, lambda: self.registry)
        self.asgi = _exposition.make_asgi_app(self._aggregate.families, lambda: self.registry)

    @cached_property
    def registry(self) -> CollectorRegistry:
        """A registry of the view alone, made on first use (prometheus-client loads then)."""
        registry: CollectorRegistry = _fork.load("prometheus_client").CollectorRegistry(
            auto_describe=False
        )
        registry.register(self._aggregate)
        return registry


def aggregate_registry(snapshots: Snapshots) -> CollectorRegistry:
    """A registry of the server-wide view alone."""
    return Scrape(snapshots).registry
