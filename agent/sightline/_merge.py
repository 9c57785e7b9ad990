"""Merging the snapshots of a server's processes, under the store's lock: each file is
checked before it is trusted, those of exited processes are folded into the totals, the
series cap holds, and the rest is summed or shown per process (see ``_multiprocess``).

The totals (``totals.json``) hold the summed families of every process folded so far,
the keys of the processes folded whose files may still exist (so that one left behind
by a process that died half-way through folding is never folded again), and the label
sets that have a series of their own (so that none moves in or out of the overflow
series). They are replaced atomically and synced to disk.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._exposition import LABEL_NAME, METRIC_NAME, Family
from ._keeper import offered_by
from ._process import running
from ._store import Skipped

if TYPE_CHECKING:
    from ._multiprocess import Snapshots
    from ._store import Store

#: Snapshot files one merge reads at most; live processes are far fewer.
MAX_FILES = 512
#: The label that tells the processes of a server apart in per-process families.
PID_LABEL = "process_pid"
SCHEMA = 2
#: Seconds after which a running process's snapshot is stale: counted and logged at merge.
STALE_AFTER = 10.0
TOTALS = "totals.json"
OVERFLOW = "_overflow"
_PER_PROCESS_PREFIXES = (
    "process_",
    "python_",
    "asyncio_",
    "http_server_active_requests",
    "http_server_worker_capacity",
    "sightline_metrics_server_up",
    "target_info",
)
SUMMED_TYPES = frozenset(("counter", "histogram", "summary"))
_TYPES = frozenset(
    ("counter", "gauge", "histogram", "summary", "info", "stateset", "gaugehistogram", "unknown")
)
_POSITION_LABELS = frozenset(("le", "quantile"))  # a sample's place in its series
_SNAPSHOT = re.compile(r"(\d+)-(\d+)\.json")


def child_key(labels: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """The series a sample belongs to: its labels without its place (``le``, ``quantile``)."""
    return tuple(sorted((k, v) for k, v in labels.items() if k not in _POSITION_LABELS))


def overflow_labels(labels: dict[str, str]) -> dict[str, str]:
    return {k: (v if k in _POSITION_LABELS else OVERFLOW) for k, v in labels.items()}


def label_key(labels: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


Keys = dict[tuple[tuple[str, str], ...], tuple[tuple[tuple[str, str], ...], ...]]


def _keys(labels: dict[str, str], seen: Keys) -> tuple[tuple[tuple[str, str], ...], ...]:
    """``(child_key(labels), label_key(labels))``, computed once per label set a merge
    meets: ``seen`` holds them by the labels as written, and every process writes a
    series' labels in the same order, so N processes' copies are sorted once."""
    written = tuple(labels.items())
    keys = seen.get(written)
    if keys is None:
        keys = seen[written] = (child_key(labels), label_key(labels))
    return keys


def is_per_process(name: str) -> bool:
    return name.startswith(_PER_PROCESS_PREFIXES)


# -- validation


def _valid_families(families: Any) -> bool:
    """Whether ``families`` has exactly the shape :func:`_encode` writes, with names the
    exposition can carry (a bad label name would break the whole page)."""
    if type(families) is not list:
        return False
    names: set[str] = set()  # label names found valid
    sample_names: set[str] = set()  # sample names found valid
    for family in families:
        if type(family) is not dict:
            return False
        name, samples = family.get("name"), family.get("samples")
        if (
            type(name) is not str
            or not METRIC_NAME.fullmatch(name)
            or family.get("type") not in _TYPES
            or type(family.get("help")) is not str
            or type(family.get("unit")) is not str
            or type(samples) is not list
        ):
            return False
        for sample in samples:
            if type(sample) is not list or len(sample) != 4:
                return False
            sample_name, labels, value, exemplar = sample
            if (
                type(sample_name) is not str
                or not sample_name.startswith(name)
                or type(labels) is not dict
                or type(value) not in (int, float)
            ):
                return False
            if sample_name not in sample_names:
                if not METRIC_NAME.fullmatch(sample_name):
                    return False
                sample_names.add(sample_name)
            for key, text in labels.items():
                if type(text) is not str:
                    return False
                if key not in names:
                    if not LABEL_NAME.fullmatch(key):
                        return False
                    names.add(key)
            if exemplar is not None and not _valid_exemplar(exemplar):
                return False
    return True


def _valid_exemplar(exemplar: Any) -> bool:
    return (
        type(exemplar) is list
        and len(exemplar) == 3
        and type(exemplar[0]) is dict
        and all(type(k) is str and type(v) is str for k, v in exemplar[0].items())
        and type(exemplar[1]) in (int, float)
        and (exemplar[2] is None or type(exemplar[2]) in (int, float))
    )


# -- the merged view


class _Families:
    """Families being merged: name -> (type, help, unit, {sample key -> [value, exemplar,
    labels]}). With ``cap``, summed families keep at most ``cap`` series each; ``admitted``
    are the series that have their own (the rest share the overflow series)."""

    def __init__(
        self,
        cap: int | None = None,
        admitted: dict[str, set[tuple[Any, ...]]] | None = None,
        keys: Keys | None = None,
    ) -> None:
        self.families: dict[str, tuple[str, str, str, dict[tuple[Any, ...], list[Any]]]] = {}
        self.cap = cap
        self.admitted = admitted if admitted is not None else {}
        self.admissions = 0  # series admitted since loading
        self.keys: Keys = keys if keys is not None else {}  # shared by one merge's families

    def add(self, family: dict[str, Any], extra: dict[str, str] | None = None) -> None:
        name = family["name"]
        entry = self.families.get(name)
        if entry is None:
            entry = self.families[name] = (family["type"], family["help"], family["unit"], {})
        elif entry[0] != family["type"]:
            return  # the same name with another type (another version of the app): not mixed
        samples = entry[3]
        summed = extra is None
        admitted = self.admitted.setdefault(name, set()) if summed and self.cap else None
        for sample_name, labels, value, exemplar in family["samples"]:
            if summed and sample_name.endswith("_created"):
                continue  # a start time, not a count: meaningless summed
            if extra:
                labels = {**extra, **labels}  # a family's own process_pid label wins
                key = label_key(labels)
            else:
                child, key = _keys(labels, self.keys)
                if admitted is not None and child not in admitted:
                    if len(admitted) < self.cap:  # type: ignore[operator]
                        admitted.add(child)
                        self.admissions += 1
                    else:
                        labels = overflow_labels(labels)
                        key = label_key(labels)
            _accumulate(samples, (sample_name, key), value, exemplar, labels)

    def absorb(self, other: _Families) -> None:
        """Add ``other``'s samples (merged under the same admissions) to these."""
        for name, (kind, help_text, unit, samples) in other.families.items():
            entry = self.families.get(name)
            if entry is None:
                entry = self.families[name] = (kind, help_text, unit, {})
            elif entry[0] != kind:
                continue
            mine = entry[3]
            for key, (value, exemplar, labels) in samples.items():
                _accumulate(mine, key, value, exemplar, labels)

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

    def rows(self) -> Iterator[Family]:
        for name, (kind, help_text, unit, samples) in self.families.items():
            yield name, kind, help_text, unit, samples


def _accumulate(
    samples: dict[tuple[Any, ...], list[Any]],
    key: tuple[Any, ...],
    value: float,
    exemplar: Any,
    labels: dict[str, str],
) -> None:
    """Add a sample to its series: values summed, the newest exemplar kept."""
    held = samples.get(key)
    if held is None:
        samples[key] = [value, exemplar, labels]
        return
    held[0] += value
    if exemplar and (not held[1] or (exemplar[2] or 0) >= (held[1][2] or 0)):
        held[1] = exemplar


@dataclass
class View:
    """What one merge found: the summed families and the live processes' own."""

    summed: _Families
    per_process: _Families
    configured: int | None
    workers: int
    busy: float

    def families(self) -> list[Family]:
        """Every family of the merged page, in the order it is shown."""
        found = [*self.summed.rows(), *self.per_process.rows()]
        if self.configured is not None:
            found.append(
                _gauge(
                    "server_workers_configured",
                    "Worker processes the server is configured to run.",
                    self.configured,
                )
            )
        found.append(
            _gauge("server_workers_live", "Worker processes running and reporting.", self.workers)
        )
        found.append(
            _gauge(
                "server_workers_busy",
                "Worker processes busy: each one's share of its last second or two with a "
                "request or task in flight (one-at-a-time workers; threaded and async ones "
                "count their mean number in flight, up to one).",
                self.busy,
            )
        )
        return found


def _gauge(name: str, help_text: str, value: float) -> Family:
    return name, "gauge", help_text, "", {(name, ()): [value, None, {}]}


def leftovers(store: Store) -> bool:
    """Whether a merge has anything to fold or tidy in ``store``: a snapshot or socket of
    a process that is gone, a temporary file, or a file that is not the store's. Cheap: it
    reads no file, so a writer can ask it often while every process runs."""
    for name in store.names():
        if name == TOTALS or name.endswith((".lock", ".invalid")):  # locks; set aside
            continue
        match = _SNAPSHOT.fullmatch(name)
        if match is not None:
            if not running(name[: -len(".json")]):
                return True
        elif name.endswith(".sock"):
            key = offered_by(name)
            if key is not None and not running(key):
                return True
        else:
            return True
    return False


class Merge:
    """One pass over the store, under its lock: read and check every snapshot, fold those
    of exited processes into the totals, and merge the rest (module docstring)."""

    def __init__(
        self,
        snapshots: Snapshots,
        own: dict[str, Any] | None = None,
        written: dict[str, Any] | None = None,
    ) -> None:
        self.snapshots = snapshots
        self.store = snapshots.store
        self.errors = snapshots.errors
        self.own = own  # this process's numbers, when its snapshot could not be written
        self.written = written  # what this process's snapshot holds, as it wrote it

    def run(self) -> View:
        store, snapshots = self.store, self.snapshots
        totals = self._read_totals()
        admitted = {
            name: {tuple(tuple(pair) for pair in child) for child in children}
            for name, children in totals.get("admitted", {}).items()
        }
        keys: Keys = {}  # dropped with the merge
        past = _Families(snapshots.max_series, admitted, keys)
        for family in totals.get("families", []):
            past.add(family)
        folded = set(totals.get("folded", []))
        names = sorted(store.names())
        live: list[tuple[str, dict[str, Any]]] = []  # (pid, document)
        gone: list[tuple[str, dict[str, Any]]] = []  # (file name, document)
        read = 0
        now = time.time()
        written = self.written
        for name in names:
            match = _SNAPSHOT.fullmatch(name)
            if match is None:
                self._tidy(name, now)
                continue
            key = name[: -len(".json")]
            if key in folded:
                store.unlink(name)  # folded already: its process died before deleting it
                continue
            if written is not None and key == written["process"]:
                live.append((match.group(1), written))  # not read back
                continue
            # Whether its process runs, asked before reading: one found gone can no longer
            # write, so what is read is its last word, safe to fold.
            still_running = running(key)
            read += 1
            if read > MAX_FILES:
                self.errors(
                    "too_many_files",
                    "more than %d metrics snapshots in %s; the rest are left for later merges",
                    MAX_FILES,
                    store.path,
                )
                break
            document = self._read(name, key)
            if document is None:
                continue
            if still_running:
                live.append((match.group(1), document))
            else:
                gone.append((name, document))
        own = self.own
        if own is not None and not any(doc["process"] == own["process"] for _, doc in live):
            live.append((str(os.getpid()), own))
        for _, document in gone:
            for family in document["families"]:
                if family["type"] in SUMMED_TYPES and not is_per_process(family["name"]):
                    past.add(family)
        # The live processes, merged under the same admissions (shared with the totals).
        summed, per_process = _Families(snapshots.max_series, admitted, keys), _Families()
        configured: int | None = None
        workers, busy = 0, 0.0
        for pid, document in live:
            self._age(pid, document, now, per_process)
            for family in document["families"]:
                if family["type"] in SUMMED_TYPES and not is_per_process(family["name"]):
                    summed.add(family)
                else:
                    per_process.add(family, {PID_LABEL: pid})
            if document["worker"]:
                workers += 1
                busy += _busy(document)
            if document["workers"] is not None:
                configured = max(configured or 0, document["workers"])
        if gone or past.admissions or summed.admissions:
            keep = {key for key in folded if f"{key}.json" in names}
            keep.update(name[: -len(".json")] for name, _ in gone)
            if self._write_totals(past, keep):
                for name, _ in gone:  # only once the totals hold them
                    store.unlink(name)
        past.absorb(summed)
        return View(past, per_process, configured, workers, busy)

    def _age(self, pid: str, document: dict[str, Any], now: float, into: _Families) -> None:
        """Show how old a live process's snapshot is, and say so when it is stale."""
        written = document.get("time")
        if written is None:  # written by an earlier version
            return
        # This process's own numbers are current to the scrape, whenever they were written.
        age = 0.0 if document["process"] == self.snapshots.key else max(0.0, now - written)
        into.add(
            {
                "name": "sightline_snapshot_age_seconds",
                "type": "gauge",
                "help": "Seconds since this process last wrote the metrics snapshot merged here.",
                "unit": "",
                "samples": [["sightline_snapshot_age_seconds", {}, age, None]],
            },
            {PID_LABEL: pid},
        )
        if age > STALE_AFTER and not document["final"]:  # a closed agent writes no more
            self.errors(
                "stale_snapshot",
                "process %s last wrote its metrics snapshot in %s %.0f s ago, though it is "
                "still running: its numbers in the merged view are that old (the process "
                "stopped, or busy without a pause in C code that holds the GIL)",
                pid,
                self.store.path,
                age,
            )

    # -- reading

    def _read(self, name: str, key: str) -> dict[str, Any] | None:
        store = self.store
        try:
            data = store.read(name, self.snapshots.max_bytes)
        except FileNotFoundError:
            return None  # folded by another process meanwhile
        except Skipped as skipped:
            self.errors(skipped.reason, "skipped metrics snapshot in %s: %s", store.path, skipped)
            return None
        try:
            document = json.loads(data)
        except ValueError as exc:
            self._invalid(name, key, "unreadable", f"not whole JSON ({exc})")
            return None
        if not (
            type(document) is dict
            and document.get("schema") == SCHEMA
            and document.get("store") == self.snapshots.store_id
            and document.get("process") == key
            and type(document.get("final")) is bool
            and _valid_time(document.get("time", 0.0))
            and (document.get("busy") is None or _valid_share(document["busy"]))
            and type(document.get("worker")) is bool
            and (document.get("workers") is None or type(document.get("workers")) is int)
            and _valid_families(document.get("families"))
        ):
            self._invalid(name, key, "invalid", "not a snapshot of this server")
            return None
        return document

    def _invalid(self, name: str, key: str, reason: str, why: str) -> None:
        store = self.store
        self.errors(reason, "skipped metrics snapshot %s in %s: %s", name, store.path, why)
        if not running(key):  # nobody will rewrite it: set it aside, once
            try:
                store.rename(name, f".{name}.invalid")
            except OSError:
                pass

    def _read_totals(self) -> dict[str, Any]:
        store = self.store
        try:
            # The totals hold every family at the cap, the processes' own and the app's.
            data = store.read(TOTALS, 4 * self.snapshots.max_bytes)
        except FileNotFoundError:
            return {}
        except Skipped as skipped:
            self.errors(skipped.reason, "skipped the metrics totals in %s: %s", store.path, skipped)
            return self._set_totals_aside()
        try:
            document = json.loads(data)
        except ValueError:
            document = None
        if not (
            type(document) is dict
            and document.get("schema") == SCHEMA
            and document.get("store") == self.snapshots.store_id
            and type(document.get("folded")) is list
            and all(type(key) is str for key in document["folded"])
            and _valid_admitted(document.get("admitted"))
            and _valid_families(document.get("families"))
        ):
            self.errors(
                "totals_invalid",
                "the metrics totals in %s are not valid and were set aside: counts of exited "
                "processes start again from zero",
                store.path,
            )
            return self._set_totals_aside()
        return document

    def _set_totals_aside(self) -> dict[str, Any]:
        try:
            self.store.rename(TOTALS, f".{TOTALS}.invalid")
        except OSError:
            pass
        return {}

    def _tidy(self, name: str, now: float) -> None:
        """Leftovers: temporary files of killed writers, sockets of gone processes."""
        store = self.store
        if name.endswith(".tmp"):
            written = store.modified(name)
            if written is not None and now - written > 60:
                store.unlink(name)
        elif name.endswith(".sock"):
            key = offered_by(name)
            if key is not None and not running(key):
                store.unlink(name)
        elif name.endswith(".json") and name != TOTALS:
            self.errors("invalid", "skipped %s in %s: not a metrics snapshot", name, store.path)

    def _write_totals(self, past: _Families, folded: set[str]) -> bool:
        document = {
            "schema": SCHEMA,
            "store": self.snapshots.store_id,
            "folded": sorted(folded),
            "admitted": {
                name: sorted([list(map(list, child)) for child in children])
                for name, children in past.admitted.items()
                if children
            },
            "families": past.documents(),
        }
        try:
            data = json.dumps(document, separators=(",", ":")).encode()
            self.store.write(TOTALS, data, durable=True)
        except OSError as exc:
            self.errors(
                "write_failed",
                "cannot write the metrics totals in %s (%s); exited processes stay unfolded",
                self.store.path,
                exc.strerror or exc,
            )
            return False
        return True


def _valid_time(written: Any) -> bool:
    """A finite number of seconds since the epoch (not a bool, NaN or an int too large)."""
    if type(written) not in (int, float):
        return False
    try:
        return math.isfinite(float(written))
    except OverflowError:
        return False


def _valid_share(share: Any) -> bool:
    """A busy share: a finite number, not negative (a bool is not one)."""
    return _valid_time(share) and share >= 0


def _valid_admitted(admitted: Any) -> bool:
    return type(admitted) is dict and all(
        type(children) is list
        and all(
            type(child) is list
            and all(
                type(pair) is list and len(pair) == 2 and all(type(x) is str for x in pair)
                for pair in child
            )
            for child in children
        )
        for children in admitted.values()
    )


def _busy(document: dict[str, Any]) -> float:
    """How busy one worker process was: its busy share (requests and tasks) over its
    last second or two, capped at one (exact for a worker running one request or task at
    a time). A snapshot without a share (an earlier version's, or a process's first)
    falls back on its in-flight gauges, a sample."""
    share = document.get("busy")
    if share is None:
        return float(any(_in_flight(document, name) > 0 for name in _WORK))
    return min(1.0, float(share))


# What a worker process is busy with: requests (web servers) or tasks (Celery's pool).
_WORK = ("http_server_active_requests", "worker_tasks_active")


def _in_flight(document: dict[str, Any], name: str) -> float:
    return sum(
        float(sample[2])
        for family in document["families"]
        if family["name"] == name
        for sample in family["samples"]
    )
