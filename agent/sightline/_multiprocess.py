"""Multi-process servers: one scrape shows every worker the server has had, live and past.

gunicorn and ``uvicorn --workers`` serve from several processes and recycle them
(``max_requests``). Each process keeps its metrics in memory, as a single process
does, and writes a snapshot of its registry to a directory shared by the server's
processes every second and when it exits. Whichever process answers a scrape merges
the snapshots (:class:`Aggregate`):

- counters, histograms and summaries are summed over every process the server ever
  had. An exited process's last snapshot is folded into one file of totals and
  deleted, under a file lock, so no scrape counts it twice or misses it: totals
  never go backwards, and storage is one file per live process plus one;
- gauges, and every runtime family (``process_*``, ``python_*``, ``asyncio_*``,
  in-flight requests, capacity, ``target_info``), are shown per live process,
  labelled ``process_pid``;
- histogram exemplars are kept, the newest per series;
- ``server_workers_configured``, ``_live`` and ``_busy`` give the server's saturation.

A process killed outright (SIGKILL, the OOM killer) loses what it counted since its
last snapshot, at most a second's worth; every other exit writes a final one.

The directory is ``$PROMETHEUS_MULTIPROC_DIR/sightline`` when that variable is set,
else a private directory under the system's temporary directory named after the
server's main process; Sightline creates it, and removes those of servers that are
gone when a new one starts. Nothing needs creating or wiping by hand.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar

from . import _fork, _safety

logger = logging.getLogger("sightline")

#: Seconds between two snapshots of a process's metrics.
INTERVAL = 1.0
#: Snapshots between two folds of exited processes' files by the writing thread.
FOLD_EVERY = 10
#: The label that tells the processes of a server apart in per-process families.
PID_LABEL = "process_pid"
_PER_PROCESS_PREFIXES = (
    "process_",
    "python_",
    "asyncio_",
    "http_server_active_requests",
    "http_server_worker_capacity",
    "target_info",
)
_SUMMED_TYPES = frozenset(("counter", "histogram", "summary"))
_PAST = "past.json"
_LOCK = ".lock"


@dataclass(frozen=True)
class Server:
    """The multi-process server this process belongs to, as its integration found it."""

    kind: str  # "gunicorn", "uvicorn"
    pid: int  # the process that starts the workers
    workers: int | None = None  # how many it is configured to run
    worker: bool = True  # False in the main process itself (gunicorn --preload)


def process_key(pid: int) -> str | None:
    """``<pid>-<start time in ms>`` of a running process (a reused pid is another
    process), or None if it is gone or a zombie."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return f"{pid}-{round(process.create_time() * 1000)}"
    except psutil.Error:
        return None


def directory_for(server: Server | None) -> Path | None:
    """Where the server's processes keep their snapshots (created, private to this user)."""
    explicit = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if explicit:
        path = Path(explicit) / "sightline"
    elif server is not None:
        key = process_key(server.pid)
        if key is None:
            return None
        base = Path(tempfile.gettempdir()) / f"sightline-{os.getuid()}"
        base.mkdir(mode=0o700, exist_ok=True)
        _remove_gone_servers(base, keep=key)
        path = base / key
    else:
        return None
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def _remove_gone_servers(base: Path, keep: str) -> None:
    for entry in base.iterdir():
        pid = entry.name.split("-", 1)[0]
        if entry.name != keep and pid.isdigit() and process_key(int(pid)) != entry.name:
            shutil.rmtree(entry, ignore_errors=True)


# -- snapshots


def _encode(families: Iterable[Metric]) -> list[dict[str, Any]]:
    encoded = []
    for family in families:
        samples = []
        for sample in family.samples:
            exemplar = sample.exemplar
            samples.append(
                [
                    sample.name,
                    sample.labels,
                    sample.value,
                    [exemplar.labels, exemplar.value, exemplar.timestamp] if exemplar else None,
                ]
            )
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
    """Writes this process's registry to ``<directory>/<process key>.json``, every
    :data:`INTERVAL` seconds from a daemon thread, on demand and when closed."""

    def __init__(self, directory: Path, registry: CollectorRegistry, server: Server | None):
        self.directory = directory
        self.registry = registry
        self.server = server
        self.worker = server.worker if server is not None else True
        self._key = process_key(os.getpid()) or str(os.getpid())
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        # Counts inherited from the process that forked this one (gunicorn --preload):
        # they are that process's, and are taken out of this one's snapshots.
        self._baseline: dict[tuple[str, str], float] = {}
        _fork.track(self)

    @property
    def path(self) -> Path:
        return self.directory / f"{self._key}.json"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sightline-snapshots", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        writes = 0
        while not self._stop.wait(INTERVAL):
            with _safety.internal_errors("multiprocess.snapshot"):
                self.write()
                writes += 1
                if writes % FOLD_EVERY == 0:  # storage stays bounded even if nobody scrapes
                    with _locked(self.directory):
                        fold(self.directory)

    def write(self) -> None:
        with self._lock:
            if self._closed:  # a scrape answered while exiting must not undo the last one
                return
            families = _encode(self.registry.collect())
            if self._baseline:
                _subtract(families, self._baseline)
            document = {
                "workers": self.server.workers if self.server is not None else None,
                "worker": self.worker,
                "families": families,
            }
            temporary = self.directory / f".{self._key}.tmp"
            temporary.write_text(json.dumps(document, separators=(",", ":")))
            os.replace(temporary, self.path)

    def close(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread.ident != threading.get_ident():
            thread.join(INTERVAL)
        with _safety.internal_errors("multiprocess.final_snapshot"):
            self.write()
        self._closed = True

    def _after_fork(self) -> None:
        # A forked child (gunicorn --preload) is a worker of the process that forked it.
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._key = process_key(os.getpid()) or str(os.getpid())
        self._closed = False
        self.worker = True
        if hasattr(self.registry, "_lock"):  # a registry lock held at fork stays held here
            self.registry._lock = threading.Lock()
        self._baseline = self._inherited_counts()
        self.start()

    def _inherited_counts(self) -> dict[tuple[str, str], float]:
        # Read on a helper thread with a deadline: a metric's own lock, held by a thread
        # of the parent at the moment of fork, would block here forever.
        result: dict[tuple[str, str], float] = {}

        def read() -> None:
            for family in _encode(self.registry.collect()):
                if family["type"] in _SUMMED_TYPES and not _per_process(family["name"]):
                    for name, labels, value, _ in family["samples"]:
                        result[(name, _label_key(labels))] = value

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(1.0)
        if reader.is_alive():
            logger.debug("sightline: counts inherited at fork could not be read; kept as are")
            return {}
        return result


def _subtract(families: list[dict[str, Any]], baseline: dict[tuple[str, str], float]) -> None:
    for family in families:
        if family["type"] in _SUMMED_TYPES and not _per_process(family["name"]):
            for sample in family["samples"]:
                sample[2] -= baseline.get((sample[0], _label_key(sample[1])), 0.0)


def _label_key(labels: dict[str, str]) -> str:
    return json.dumps(sorted(labels.items()))


def _per_process(name: str) -> bool:
    return name.startswith(_PER_PROCESS_PREFIXES)


# -- the merged view


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    with open(directory / _LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        document: dict[str, Any] = json.loads(path.read_text())
        return document
    except FileNotFoundError:
        return None
    except ValueError as exc:
        # Written by os.replace, a file is whole; anything else is not ours to trust.
        logger.warning("sightline: ignoring unreadable metrics snapshot %s: %s", path, exc)
        return None


class _Families:
    """Families being merged: name -> (type, help, unit, {sample key -> [value, exemplar,
    labels]})."""

    def __init__(self) -> None:
        self.families: dict[str, tuple[str, str, str, dict[tuple[str, str], list[Any]]]] = {}

    def add(self, family: dict[str, Any], extra: dict[str, str] | None = None) -> None:
        name = family["name"]
        entry = self.families.get(name)
        if entry is None:
            entry = self.families[name] = (family["type"], family["help"], family["unit"], {})
        samples = entry[3]
        summed = extra is None
        for sample_name, labels, value, exemplar in family["samples"]:
            if summed and sample_name.endswith("_created"):
                continue  # a start time, not a count: meaningless summed
            if extra:
                labels = {**extra, **labels}  # a family's own process_pid label wins
            key = (sample_name, _label_key(labels))
            held = samples.get(key)
            if held is None:
                samples[key] = [value, exemplar, labels]
                continue
            held[0] += value
            if exemplar and (not held[1] or (exemplar[2] or 0) >= (held[1][2] or 0)):
                held[1] = exemplar

    def documents(self) -> list[dict[str, Any]]:
        """The summed families in snapshot form (what the file of totals holds)."""
        return [
            {
                "name": name,
                "help": help_text,
                "type": kind,
                "unit": unit,
                "samples": [[key[0], held[2], held[0], held[1]] for key, held in samples.items()],
            }
            for name, (kind, help_text, unit, samples) in self.families.items()
        ]

    def metrics(self) -> Iterator[Metric]:
        for name, (kind, help_text, unit, samples) in self.families.items():
            metric = Metric(name, help_text, kind, unit)
            for (sample_name, _), (value, exemplar, labels) in samples.items():
                metric.add_sample(
                    sample_name,
                    labels,
                    value,
                    exemplar=Exemplar(exemplar[0], exemplar[1], exemplar[2]) if exemplar else None,
                )
            yield metric


class Aggregate(Collector):
    """The server-wide view: every snapshot in the directory, merged (module docstring)."""

    def __init__(self, snapshots: Snapshots) -> None:
        self.snapshots = snapshots

    def collect(self) -> Iterable[Metric]:
        try:
            return list(self._collect())
        except Exception as exc:
            _safety.report("multiprocess.collect", exc)
            return []

    def _collect(self) -> Iterator[Metric]:
        directory = self.snapshots.directory
        self.snapshots.write()  # this process's own numbers, current to the scrape
        with _locked(directory):
            past, live = fold(directory)
        merged = past
        per_process = _Families()
        configured: int | None = None
        workers = busy = 0
        for pid, document in live:
            for family in document["families"]:
                if family["type"] in _SUMMED_TYPES and not _per_process(family["name"]):
                    merged.add(family)
                else:
                    per_process.add(family, {PID_LABEL: pid})
            if document.get("worker", True):
                workers += 1
                busy += _in_flight(document) > 0
            if document.get("workers") is not None:
                configured = max(configured or 0, int(document["workers"]))
        yield from merged.metrics()
        yield from per_process.metrics()
        if configured is not None:
            yield GaugeMetricFamily(
                "server_workers_configured",
                "Worker processes the server is configured to run.",
                value=configured,
            )
        yield GaugeMetricFamily(
            "server_workers_live", "Worker processes running and reporting.", value=workers
        )
        yield GaugeMetricFamily(
            "server_workers_busy",
            "Worker processes with at least one request in flight.",
            value=busy,
        )


def fold(directory: Path) -> tuple[_Families, list[tuple[str, dict[str, Any]]]]:
    """Fold the snapshots of exited processes into the totals; call under :func:`_locked`.

    Returns the totals and the live processes' snapshots (pid, document).
    """
    live: list[tuple[str, dict[str, Any]]] = []
    past = _Families()
    for family in (_read(directory / _PAST) or {}).get("families", []):
        past.add(family)
    gone = []
    for path in directory.glob("*.json"):
        if path.name == _PAST:
            continue
        document = _read(path)
        pid = path.stem.split("-", 1)[0]
        if document is None:
            continue
        if pid.isdigit() and process_key(int(pid)) == path.stem:
            live.append((pid, document))
        else:
            gone.append((path, document))
    if gone:
        for _, document in gone:
            for family in document["families"]:
                if family["type"] in _SUMMED_TYPES and not _per_process(family["name"]):
                    past.add(family)
        temporary = directory / f".{_PAST}.tmp"
        temporary.write_text(json.dumps({"families": past.documents()}))
        os.replace(temporary, directory / _PAST)
        for path, _ in gone:  # only once the totals hold them
            path.unlink(missing_ok=True)
    for leftover in directory.glob(".*.tmp"):  # a process killed while writing
        pid = leftover.name[1:].split("-", 1)[0]
        if pid.isdigit() and process_key(int(pid)) is None:
            leftover.unlink(missing_ok=True)
    return past, live


# What a worker process is busy with: requests (web servers) or tasks (Celery's pool).
_WORK = ("http_server_active_requests", "worker_tasks_active")


def _in_flight(document: dict[str, Any]) -> float:
    return sum(
        float(sample[2])
        for family in document["families"]
        if family["name"] in _WORK
        for sample in family["samples"]
    )


def aggregate_registry(snapshots: Snapshots) -> CollectorRegistry:
    """A registry serving the server-wide view, for the /metrics server or path."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Aggregate(snapshots))
    return registry
