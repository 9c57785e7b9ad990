"""Multi-process servers: exact, never-decreasing totals over recycled workers, one endpoint."""

from __future__ import annotations

import collections
import contextlib
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import Metric
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from sightline import _fork, _multiprocess
from sightline._merge import leftovers
from sightline._multiprocess import Snapshots, aggregate_registry
from sightline._store import Store

from .helpers import free_port, wait_until
from .receivers import Backend
from .servers import Prometheus, gunicorn, prometheus, status_of, uvicorn

SNAPSHOT_PROGRAM = """
import sys
from prometheus_client import CollectorRegistry, Counter, Gauge
from sightline._multiprocess import Snapshots
from sightline._store import Store
from sightline.metrics import Histogram
from pathlib import Path

registry = CollectorRegistry()
jobs = Counter("jobs", "Jobs done.", ["queue"], registry=registry)
depth = Gauge("depth", "A gauge.", registry=registry)
folded = Counter("folded", "Folded.", ["metric"], registry=None)
latency = Histogram("latency_seconds", "Latency.", ["route"], (0.1, 1.0), 10, folded)
registry.register(latency)
jobs.labels("a").inc({count})
depth.set(7)
for _ in range({count}):
    latency.child(("/x",)).observe(0.05, {{"trace_id": "{trace_id}"}})
path = Path(sys.argv[1])
Snapshots(Store.open(path.parent, path.name), sys.argv[2], registry, None).write()
"""


def run_and_exit(
    directory: Path, count: int, trace_id: str = "ab" * 16, store_id: str = "test"
) -> None:
    """A separate process counts ``count`` jobs, writes its snapshot, and exits."""
    code = textwrap.dedent(SNAPSHOT_PROGRAM.format(count=count, trace_id=trace_id))
    command = [sys.executable, "-c", code, str(directory), store_id]
    subprocess.run(command, check=True, timeout=60)


def snapshots_in(directory: Path, registry: CollectorRegistry, **options: Any) -> Snapshots:
    """This process's snapshots, in ``directory`` (a private one, as pytest makes them)."""
    return Snapshots(
        Store.open(directory.parent, directory.name), "test", registry, None, **options
    )


def scrape(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = openmetrics(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.replace("# EOF\n", ""))
        for s in family.samples
    }


def test_exited_processes_are_folded_into_totals(tmp_path: Path) -> None:
    """Counts of processes that exited stay in the totals, their files are folded into one,
    and the live process's own counts and gauges are merged in."""
    for count in (3, 5, 11):
        run_and_exit(tmp_path, count)
    registry = CollectorRegistry()
    jobs = Counter("jobs", "Jobs done.", ["queue"], registry=registry)
    Gauge("depth", "A gauge.", registry=registry).set(1)
    jobs.labels("a").inc(100)
    snapshots = snapshots_in(tmp_path, registry)
    merged = aggregate_registry(snapshots)
    first = scrape(merged)
    assert first[("jobs_total", (("queue", "a"),))] == 119
    assert first[("latency_seconds_count", (("route", "/x"),))] == 19
    assert first[("latency_seconds_bucket", (("le", "0.1"), ("route", "/x")))] == 19
    pid = str(os.getpid())
    # Gauges are per live process: the exited ones' are gone, this one's is labelled.
    assert first[("depth", (("process_pid", pid),))] == 1
    assert not [key for key in first if key[0] == "depth" and key[1] != (("process_pid", pid),)]
    assert not [key for key in first if key[0].endswith("_created")]
    assert sorted(p.name for p in tmp_path.glob("*.json")) == sorted(
        ["totals.json", snapshots.name]
    )
    run_and_exit(tmp_path, 1)
    jobs.labels("a").inc()
    assert scrape(merged)[("jobs_total", (("queue", "a"),))] == 121  # never double, never lost


def test_exemplars_survive_the_merge(tmp_path: Path) -> None:
    """A histogram exemplar written by another process is in the merged exposition."""
    run_and_exit(tmp_path, 2, trace_id="cd" * 16)
    merged = aggregate_registry(snapshots_in(tmp_path, CollectorRegistry()))
    assert 'trace_id="' + "cd" * 16 + '"' in openmetrics(merged).decode()


def test_a_corrupt_snapshot_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A snapshot that is not valid JSON is logged and skipped; the scrape still answers."""
    run_and_exit(tmp_path, 4)
    (tmp_path / "1-1.json").write_text("{not json")
    merged = aggregate_registry(snapshots_in(tmp_path, CollectorRegistry()))
    assert scrape(merged)[("jobs_total", (("queue", "a"),))] == 4
    assert "not whole JSON" in caplog.text


# -- real servers


def value(prom: Prometheus, promql: str) -> float | None:
    result = prom.query(promql)
    return float(result[0]["value"][1]) if result else None


#: The "status" of a request the server dropped without an answer (its connection closed
#: or reset): uvicorn's rolling restarts drop a connection now and then, with or without
#: Sightline. Whether the server counted such a request is unknown.
DROPPED = 0


def send(base: str, total: int) -> dict[int, int]:
    """``total`` requests over several routes, 8 at a time; returns counts by status
    (:data:`DROPPED` for those the server dropped without an answer).

    Never ``/health``: the readiness probe uses it, so queries leave it out.
    """
    paths = ["/users/1", "/users/2", "/teapot/green", "/nothing-here"]

    def one(i: int) -> int:
        try:
            return status_of(base + paths[i % len(paths)])
        except (ConnectionError, http.client.RemoteDisconnected):
            return DROPPED

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(one, range(total)))
    return {code: statuses.count(code) for code in set(statuses)}


def server_env(metrics_port: int, backend: Backend, tmp_path: Path) -> dict[str, str]:
    """The metrics port, the span receiver, and a temporary directory of the test's own."""
    return {
        "SIGHTLINE_METRICS_ADDR": f"127.0.0.1:{metrics_port}",
        "OTEL_EXPORTER_OTLP_ENDPOINT": backend.url,
        "TMPDIR": str(tmp_path),
    }


SERVED = 'sum(http_server_request_duration_seconds_count{job="app", http_route!="/health"})'


def snapshot_files(tmp_path: Path) -> list[Path]:
    return list(tmp_path.glob(f"sightline-{os.getuid()}/*/*.json"))


def check_exact_server(
    prom: Prometheus,
    traffic: Callable[[], dict[int, int]],
    workers: int,
    total: int,
    tmp_path: Path,
    backend: Backend,
) -> None:
    statuses = traffic()
    assert sum(statuses.values()) == total
    # Exact: every answered request, and at most those the server dropped unanswered.
    dropped = statuses.get(DROPPED, 0)
    assert dropped <= 3, statuses
    answered = total - dropped
    assert wait_until(lambda: (value(prom, SERVED) or 0) >= answered), value(prom, SERVED)
    time.sleep(2.5)  # every snapshot written since, and scraped: nothing more may come
    assert answered <= (value(prom, SERVED) or 0) <= total, (value(prom, SERVED), statuses)
    resets = value(prom, 'sum(resets(http_server_request_duration_seconds_count{job="app"}[5m]))')
    assert resets == 0
    # Storage: one snapshot per live process, plus the totals of all that exited (those
    # that exited since the last scrape are folded by the next one).
    assert wait_until(lambda: len(snapshot_files(tmp_path)) <= workers + 1, timeout=10), (
        snapshot_files(tmp_path)
    )
    # Per-process runtime metrics for the live workers only, and the server's saturation.
    assert wait_until(
        lambda: value(prom, 'count(process_resident_memory_bytes{job="app"})') == workers
    )
    assert value(prom, 'server_workers_configured{job="app"}') == workers
    assert value(prom, 'server_workers_live{job="app"}') == workers
    # Spans come from many worker identities, and every request has one.
    assert backend.wait_for(lambda: len(backend.spans()) >= answered, timeout=30)
    instances = {resource["service.instance.id"] for resource, _ in backend.spans()}
    assert len(instances) > workers


def test_gunicorn_recycling_workers_keeps_exact_totals(tmp_path: Path, backend: Backend) -> None:
    """gunicorn with 4 workers recycled every ~25 requests: 2,000 requests are exactly 2,000
    in PromQL, with no counter reset, bounded storage and per-worker process metrics."""
    pytest.importorskip("gunicorn")
    pytest.importorskip("flask")
    metrics_port = free_port()
    env = server_env(metrics_port, backend, tmp_path)
    args = ["--workers", "4", "--max-requests", "25", "--max-requests-jitter", "10"]
    with (
        gunicorn("tests.apps.flask_app:application", env, args, tmp_path) as base,
        prometheus(tmp_path, {"app": f"127.0.0.1:{metrics_port}"}) as prom,
    ):
        check_exact_server(prom, lambda: send(base, 2000), 4, 2000, tmp_path, backend)
    booted = re.findall(r"Booting worker", (tmp_path / "gunicorn.log").read_text())
    assert len(booted) >= 40  # the workers really were recycled, many times


def _scrape(url: str) -> dict[str, float]:
    """One scrape of a merged view: every sample's value by name, summed over labels."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    values: dict[str, float] = collections.defaultdict(float)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "http_server_request_duration_seconds_count":
                if sample.labels.get("http_route") == "/spin/<int:ms>":
                    values["spun"] += sample.value
                continue
            values[sample.name] += sample.value
    return values


def test_a_busy_sync_worker_reads_busy_from_its_counters(tmp_path: Path, backend: Backend) -> None:
    """A gunicorn sync worker kept busy by requests that work the CPU for 5 ms reads busy
    from its counters, whenever they are read: its busy seconds cover at least those 5 ms
    of every request served and never exceed its one slot, its share of the slot is over
    half, and server_workers_busy counts it busy at the scrapes on average."""
    pytest.importorskip("gunicorn")
    pytest.importorskip("flask")
    metrics_port = free_port()
    env = server_env(metrics_port, backend, tmp_path)
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with gunicorn("tests.apps.flask_app:application", env, ["--workers", "1"], tmp_path) as base:
        assert status_of(base + "/spin/1") == 200
        assert wait_until(lambda: _scrape(url).get("http_server_capacity_seconds_total", 0) > 0)
        stop = threading.Event()

        def load() -> None:
            while not stop.is_set():
                assert status_of(base + "/spin/5") == 200

        clients = [threading.Thread(target=load) for _ in range(2)]
        for client in clients:
            client.start()
        time.sleep(0.5)
        before = _scrape(url)
        readings = []
        for _ in range(16):
            time.sleep(0.25)
            now = _scrape(url)
            readings.append((now["server_workers_busy"], now["http_server_active_requests"]))
        after = _scrape(url)
        stop.set()
        for client in clients:
            client.join()
    busy = after["http_server_busy_seconds_total"] - before["http_server_busy_seconds_total"]
    offered = (
        after["http_server_capacity_seconds_total"] - before["http_server_capacity_seconds_total"]
    )
    spun = after["spun"] - before["spun"]
    assert spun > 100, spun
    # Each request spun 5 ms; one in flight at either end may have done part of it only.
    assert busy >= spun * 0.005 - 0.01, (busy, spun)
    assert busy <= offered * 1.01, (busy, offered)  # one slot: never more than all of it
    assert busy / offered > 0.5, (busy, offered, readings)
    workers_busy = [reading[0] for reading in readings]
    assert sum(workers_busy) / len(workers_busy) > 0.5, readings


def test_gunicorn_preload_master_serves_the_merged_view(tmp_path: Path, backend: Backend) -> None:
    """With --preload the master runs init(): workers forked from it report through the
    same seam, the totals stay exact across recycling, and only the workers offer request
    slots."""
    pytest.importorskip("gunicorn")
    pytest.importorskip("flask")
    metrics_port = free_port()
    env = server_env(metrics_port, backend, tmp_path)
    args = ["--preload", "--workers", "2", "--max-requests", "20"]
    with (
        gunicorn("tests.apps.flask_app:application", env, args, tmp_path) as base,
        prometheus(tmp_path, {"app": f"127.0.0.1:{metrics_port}"}) as prom,
    ):
        statuses = send(base, 300)
        assert sum(statuses.values()) == 300
        assert wait_until(lambda: value(prom, SERVED) == 300), value(prom, SERVED)
        assert value(prom, 'server_workers_live{job="app"}') == 2
        # The master's own process metrics, plus one per live worker.
        assert wait_until(
            lambda: value(prom, 'count(process_resident_memory_bytes{job="app"})') == 3
        )
        # Request slots only where requests are served: the workers' 1 each, not the
        # master's (it would read a full server as two-thirds busy).
        assert value(prom, 'sum(http_server_worker_capacity{job="app"})') == 2
        assert value(prom, 'count(http_server_worker_capacity{job="app"})') == 2
    assert len(snapshot_files(tmp_path)) <= 4


def test_uvicorn_workers_keep_exact_totals(tmp_path: Path, backend: Backend) -> None:
    """uvicorn --workers 3 serving 2,000 requests, every worker replaced three times (rolling
    restarts, SIGHUP) while they flow: exact totals (every answered request, and at most
    the few a restarting uvicorn drops unanswered), no reset, bounded storage."""
    pytest.importorskip("uvicorn")
    pytest.importorskip("fastapi")
    metrics_port = free_port()
    env = server_env(metrics_port, backend, tmp_path)
    log = tmp_path / "uvicorn.log"
    with (
        uvicorn("tests.apps.fastapi_app:app", env, ["--workers", "3"], tmp_path) as base,
        prometheus(tmp_path, {"app": f"127.0.0.1:{metrics_port}"}) as prom,
    ):
        [parent] = re.findall(r"Started parent process \[(\d+)\]", log.read_text())

        def traffic() -> dict[int, int]:
            statuses: collections.Counter[int] = collections.Counter()
            for round_, requests in enumerate((700, 700, 600), start=1):
                os.kill(int(parent), signal.SIGHUP)  # a rolling restart, under the requests
                statuses.update(send(base, requests))
                assert wait_until(
                    lambda round_=round_: (
                        log.read_text().count("Terminated child process") >= 3 * round_
                    )
                )
            return statuses

        check_exact_server(prom, traffic, 3, 2000, tmp_path, backend)
        assert log.read_text().count("Terminated child process") == 9


def test_snapshot_document_is_plain_json(tmp_path: Path) -> None:
    """A snapshot is one JSON document naming its schema, store and process, and each
    family's type, help and samples."""
    run_and_exit(tmp_path, 1)
    [path] = tmp_path.glob("*.json")
    document = json.loads(path.read_text())
    assert (document["schema"], document["store"]) == (2, "test")
    assert path.name == document["process"] + ".json"
    kinds = {family["name"]: family["type"] for family in document["families"]}
    assert kinds == {"jobs": "counter", "depth": "gauge", "latency_seconds": "histogram"}


def test_a_forked_child_does_not_repeat_its_parents_counts(tmp_path: Path) -> None:
    """A process forked after counting (gunicorn --preload) reports only what it counts
    itself: the parent's counts, inherited in memory, are not merged twice."""
    registry = CollectorRegistry()
    jobs = Counter("jobs", "Jobs done.", registry=registry)
    jobs.inc(5)
    snapshots = snapshots_in(tmp_path, registry)
    pid = os.fork()
    if pid == 0:  # the child: its at-fork hook has taken the baseline
        code = 1
        try:
            jobs.inc(2)
            snapshots.write()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert scrape(aggregate_registry(snapshots))[("jobs_total", ())] == 7  # 5 + 2, not 12


# Forking with threads running is exactly the situation tested (Python 3.12+ warns of it).
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_fork_never_happens_while_the_registry_is_being_read(tmp_path: Path) -> None:
    """A fork while a snapshot reads the registry (a gunicorn master that ran init() forks
    workers while its snapshot thread reads) waits for the read to end, so no metric's
    lock is inherited held: the child records at once instead of hanging for ever."""
    registry = CollectorRegistry()
    jobs = Counter("jobs", "Jobs done.", registry=registry)
    reading = threading.Event()

    class Slow(Collector):
        """Holds the counter's value lock while it is collected, as a slow scrape does."""

        def collect(self) -> Iterator[Metric]:
            with jobs._value._lock:  # type: ignore[attr-defined]
                reading.set()
                time.sleep(0.5)
            yield from ()

    registry.register(Slow())
    snapshots = snapshots_in(tmp_path, registry)
    reader = threading.Thread(target=snapshots.document)
    reader.start()
    assert reading.wait(5)
    pid = os.fork()
    if pid == 0:  # the child: without the wait, the value lock would be held here
        code = 1
        try:
            done = threading.Event()

            def record() -> None:
                jobs.inc()
                done.set()

            threading.Thread(target=record, daemon=True).start()
            code = 0 if done.wait(3) else 2
        finally:
            os._exit(code)
    reader.join()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child hung on a lock held at fork"


def test_a_closed_process_keeps_its_last_snapshot(tmp_path: Path) -> None:
    """Once a process wrote its final snapshot, a late scrape it answers while exiting
    cannot overwrite it (with a registry already emptied by shutdown)."""
    registry = CollectorRegistry()
    jobs = Counter("jobs", "Jobs done.", registry=registry)
    jobs.inc(5)
    snapshots = snapshots_in(tmp_path, registry)
    snapshots.close()
    registry.unregister(jobs)
    scrape(aggregate_registry(snapshots))  # writes this process's snapshot first, normally
    document = json.loads((tmp_path / snapshots.name).read_text())
    assert [f["name"] for f in document["families"]] == ["jobs"]


def test_prometheus_multiproc_dir_is_honoured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With PROMETHEUS_MULTIPROC_DIR set, snapshots live in a subdirectory of it, even with
    no server detected, and processes sharing it are merged."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    found = _multiprocess.open_store(None)
    assert found is not None
    store, store_id = found
    assert (store.path, store_id) == (tmp_path / "sightline", "shared")
    assert (tmp_path / "sightline").stat().st_mode & 0o777 == 0o700
    run_and_exit(store.path, 6, store_id="shared")
    merged = aggregate_registry(Snapshots(store, store_id, CollectorRegistry(), None))
    assert scrape(merged)[("jobs_total", (("queue", "a"),))] == 6


def test_no_server_and_no_directory_means_a_single_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Outside gunicorn/uvicorn workers and without PROMETHEUS_MULTIPROC_DIR nothing is shared."""
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    assert _multiprocess.open_store(None) is None


# -- recycling under frequent scrapes


class Scraper:
    """Scrapes a /metrics URL ``per_second`` times a second on a thread, and keeps what
    matters: failed scrapes, pages without the service's metrics (its identity, and its
    request counts once there have been requests), and every total seen (which must never
    go down)."""

    def __init__(self, url: str, per_second: float = 12.0) -> None:
        self.url = url
        self.period = 1.0 / per_second
        self.scrapes = self.failed = self.empty = self.decreases = 0
        self.last = 0.0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Scraper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.scrapes += 1
            try:
                with urllib.request.urlopen(self.url, timeout=5) as response:
                    text = response.read().decode()
            except OSError as exc:
                self.failed += 1
                self.errors.append(repr(exc))
                continue
            counted = [
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("http_server_request_duration_seconds_count{")
                and 'http_route="/health"' not in line
            ]
            if "\ntarget_info{" not in text or (self.last and not counted):
                self.empty += 1
                continue
            total = sum(counted)
            if total < self.last:
                self.decreases += 1
            self.last = total


def recycling_run(tmp_path: Path, requests: int, backend: Backend) -> tuple[Scraper, float, float]:
    """gunicorn with 4 workers recycled every 20 requests, loaded with ``requests``
    requests while a scraper reads /metrics 12 times a second; returns the scraper, the
    final total in the endpoint once it has settled, and how long the load took."""
    metrics_port = free_port()
    env = {**server_env(metrics_port, backend, tmp_path), "SIGHTLINE_TRACES": "false"}
    args = ["--workers", "4", "--max-requests", "20"]
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with gunicorn("tests.apps.flask_app:application", env, args, tmp_path) as base:
        wait_until(lambda: status_of(url) == 200, timeout=20)
        with Scraper(url) as scraper:
            started = time.monotonic()
            statuses = send(base, requests)
            elapsed = time.monotonic() - started
            assert sum(statuses.values()) == requests
            time.sleep(1.5)  # every worker's last snapshot is written within a second
        final = wait_until(lambda: _served(url) == requests, timeout=10) and _served(url)
    return scraper, float(final or _served(url)), elapsed


def _served(url: str) -> float:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return -1.0
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("http_server_request_duration_seconds_count{")
        and 'http_route="/health"' not in line
    )


@pytest.mark.timeout(900)
def test_recycling_under_frequent_scrapes_is_exact(tmp_path: Path, backend: Backend) -> None:
    """4 gunicorn workers recycled every 20 requests under full load (at least 2 recycles
    a second) while /metrics is scraped 12 times a second: the total is exactly the
    requests sent, it never goes down, at most 0.1 % of scrapes fail, and every page
    carries the service's request metrics. SIGHTLINE_STRESS_REQUESTS sets the number of
    requests (6,000 by default; 20,000 for a longer run)."""
    pytest.importorskip("gunicorn")
    pytest.importorskip("flask")
    requests = int(os.environ.get("SIGHTLINE_STRESS_REQUESTS", "6000"))
    scraper, final, elapsed = recycling_run(tmp_path, requests, backend)
    booted = (tmp_path / "gunicorn.log").read_text().count("Booting worker")
    assert booted >= requests // 20, booted  # the workers really were recycled
    assert booted / elapsed >= 2, (booted, elapsed)
    assert final == requests
    assert scraper.scrapes >= 50
    assert scraper.failed <= scraper.scrapes // 1000, scraper.errors[:5]
    assert (scraper.empty, scraper.decreases) == (0, 0)


# -- the merge under faults

LABELS_PROGRAM = """
import sys
from pathlib import Path
from prometheus_client import CollectorRegistry, Counter
from sightline._multiprocess import Snapshots
from sightline._store import Store

registry = CollectorRegistry()
requests = Counter("requests", "Requests.", ["code"], registry=registry)
for code in sys.argv[3].split(","):
    requests.labels(code).inc()
path = Path(sys.argv[1])
Snapshots(Store.open(path.parent, path.name), "test", registry, None, int(sys.argv[2])).write()
"""


def exit_with_labels(directory: Path, codes: range, cap: int) -> None:
    """A separate process counts one request for each status code, writes its snapshot
    (capped at ``cap`` series) and exits."""
    argv = [str(directory), str(cap), ",".join(map(str, codes))]
    subprocess.run([sys.executable, "-c", LABELS_PROGRAM, *argv], check=True, timeout=60)


def requests_by_code(
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float],
) -> dict[str, float]:
    return {
        dict(labels)["code"]: v for (name, labels), v in found.items() if name == "requests_total"
    }


def test_the_series_cap_holds_for_the_merged_view_and_the_totals(tmp_path: Path) -> None:
    """With the cap at 20, four exited processes and this one, each with 100 status codes:
    the page and the totals file hold 20 series and the overflow, no count is lost, and a
    series once given its own keeps it."""
    for start in (100, 200, 300, 400):
        exit_with_labels(tmp_path, range(start, start + 100), cap=20)
    registry = CollectorRegistry()
    requests = Counter("requests", "Requests.", ["code"], registry=registry)
    for code in range(500, 600):
        requests.labels(str(code)).inc()
    merged = aggregate_registry(snapshots_in(tmp_path, registry, max_series=20))
    first = requests_by_code(scrape(merged))
    assert len(first) == 21
    assert sum(first.values()) == 500
    totals = json.loads((tmp_path / "totals.json").read_text())
    [family] = [f for f in totals["families"] if f["name"] == "requests"]
    assert len({json.dumps(sorted(s[1].items())) for s in family["samples"]}) <= 21
    exit_with_labels(tmp_path, range(100, 200), cap=20)  # more of the same, and new ones
    second = requests_by_code(scrape(merged))
    assert set(second) == set(first)
    assert sum(second.values()) == 600
    assert all(second[code] >= first[code] for code in first)


def test_a_fold_cut_short_is_never_counted_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process dying after writing the totals and before deleting the snapshots it folded
    leaves them behind; the next merge recognises them as folded: 150 stays 150."""
    run_and_exit(tmp_path, 150)
    snapshots = snapshots_in(tmp_path, CollectorRegistry())

    def dies(self: Store, name: str) -> None:
        raise SystemExit("killed before deleting what it folded")

    with monkeypatch.context() as patched:
        patched.setattr(Store, "unlink", dies)
        with pytest.raises(SystemExit):
            _multiprocess.Merge(snapshots).run()
    assert len(list(tmp_path.glob("*-*.json"))) == 1  # the folded snapshot is still there
    merged = aggregate_registry(snapshots)
    assert scrape(merged)[("jobs_total", (("queue", "a"),))] == 150
    assert scrape(merged)[("jobs_total", (("queue", "a"),))] == 150
    assert [p.name for p in tmp_path.glob("*-*.json")] == [snapshots.name]


def test_the_writer_folds_only_when_there_is_something_to_fold(tmp_path: Path) -> None:
    """A writing process looks for leftovers before it merges in the background: none
    while every snapshot's process runs (its lock file and the totals aside), and one as
    soon as a process has exited leaving its snapshot, or a temporary or stray file sits
    in the store; once folded, none again."""
    registry = CollectorRegistry()
    Counter("jobs", "Jobs.", ["queue"], registry=registry).labels("a").inc()
    snapshots = snapshots_in(tmp_path, registry)
    snapshots.write()
    with snapshots.store.lock(timeout=1):
        pass  # the lock file exists from now on
    assert not leftovers(snapshots.store)
    run_and_exit(tmp_path, 3)
    assert leftovers(snapshots.store)
    merged = scrape(aggregate_registry(snapshots))  # a scrape folds it into the totals
    assert merged[("jobs_total", (("queue", "a"),))] == 4
    assert (tmp_path / "totals.json").exists()
    assert not leftovers(snapshots.store)
    for stray in (".jobs.json.1a2b3c4d.tmp", "notes.txt"):
        (tmp_path / stray).write_text("")
        assert leftovers(snapshots.store), stray
        (tmp_path / stray).unlink()


def snapshot_errors(registry: CollectorRegistry) -> Counter:
    return Counter("sightline_snapshot_errors", "Errors.", ["reason"], registry=registry)


def test_bad_files_never_blank_the_page(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An empty document, a directory, a FIFO and a truncated file named like snapshots,
    and a stray JSON file: every scrape still shows the totals and this process, each bad
    file is counted on every scrape and warned about once, and none is folded."""
    run_and_exit(tmp_path, 7)
    gone = "999999-1"  # no process has this key
    (tmp_path / f"{gone}.json").write_text("{}")
    (tmp_path / "999998-1.json").mkdir()
    os.mkfifo(tmp_path / "999997-1.json")
    (tmp_path / "999996-1.json").write_text('{"schema": 2, "store": "test", "fami')
    (tmp_path / "notes.json").write_text("[]")
    registry = CollectorRegistry()
    Counter("jobs", "Jobs.", ["queue"], registry=registry).labels("a").inc(2)
    errors = snapshot_errors(registry)
    snapshots = snapshots_in(
        tmp_path, registry, errors=_multiprocess.Errors(lambda r: errors.labels(r).inc())
    )
    merged = aggregate_registry(snapshots)
    for _ in range(10):
        assert scrape(merged)[("jobs_total", (("queue", "a"),))] == 9
    counted = {
        reason: registry.get_sample_value("sightline_snapshot_errors_total", {"reason": reason})
        for reason in ("invalid", "not_a_file", "unreadable")
    }
    # The directory and the FIFO every time; the two files of gone processes are set
    # aside the first time; the stray file every time.
    assert counted == {"invalid": 11, "not_a_file": 20, "unreadable": 1}
    assert sorted(p.name for p in tmp_path.glob(".*.invalid")) == [
        ".999996-1.json.invalid",
        f".{gone}.json.invalid",
    ]
    warnings = [r for r in caplog.records if r.name == "sightline"]
    assert len(warnings) == 3  # one per reason, not one per scrape


def test_a_huge_file_is_skipped_without_being_read(tmp_path: Path) -> None:
    """A 60 MB file named like a snapshot is skipped by its size alone: counted, not
    folded, and a scrape allocates far less than the file holds."""
    import tracemalloc

    run_and_exit(tmp_path, 3)
    with open(tmp_path / "999999-1.json", "wb") as planted:
        planted.write(b'{"schema":2,' + b" " * (60 << 20) + b"}")
    registry = CollectorRegistry()
    errors = snapshot_errors(registry)
    snapshots = snapshots_in(
        tmp_path, registry, errors=_multiprocess.Errors(lambda r: errors.labels(r).inc())
    )
    merged = aggregate_registry(snapshots)
    tracemalloc.start()
    try:
        found = scrape(merged)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert found[("jobs_total", (("queue", "a"),))] == 3
    assert peak < 5 << 20, peak
    assert (
        registry.get_sample_value("sightline_snapshot_errors_total", {"reason": "too_large"}) == 1
    )
    assert (tmp_path / "999999-1.json").exists()


def test_a_full_disk_still_answers_with_every_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When nothing can be written (a full disk), a scrape still shows the totals, the
    exited process not yet folded, and this process's own numbers; the failures are
    counted."""
    run_and_exit(tmp_path, 4)
    registry = CollectorRegistry()
    Counter("jobs", "Jobs.", ["queue"], registry=registry).labels("a").inc(5)
    errors = snapshot_errors(registry)
    snapshots = snapshots_in(
        tmp_path, registry, errors=_multiprocess.Errors(lambda r: errors.labels(r).inc())
    )

    def full(self: Store, name: str, data: bytes, durable: bool = False) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Store, "write", full)
    found = scrape(aggregate_registry(snapshots))
    assert found[("jobs_total", (("queue", "a"),))] == 9
    failed = registry.get_sample_value(
        "sightline_snapshot_errors_total", {"reason": "write_failed"}
    )
    assert failed == 2  # this process's snapshot, and the totals
    assert len(list(tmp_path.glob("*-*.json"))) == 1  # the exited one, kept for later


def test_broken_totals_are_reported_and_set_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A totals file that is not whole is never trusted silently: counted, logged, set
    aside for inspection, and the page still answers."""
    (tmp_path / "totals.json").write_text('{"schema": 2, "store": "test", "folded": [')
    registry = CollectorRegistry()
    Counter("jobs", "Jobs.", ["queue"], registry=registry).labels("a").inc()
    errors = snapshot_errors(registry)
    snapshots = snapshots_in(
        tmp_path, registry, errors=_multiprocess.Errors(lambda r: errors.labels(r).inc())
    )
    assert scrape(aggregate_registry(snapshots))[("jobs_total", (("queue", "a"),))] == 1
    assert (
        registry.get_sample_value("sightline_snapshot_errors_total", {"reason": "totals_invalid"})
        == 1
    )
    assert (tmp_path / ".totals.json.invalid").exists()
    assert "set aside" in caplog.text


def test_a_write_cut_short_leaves_the_totals_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The totals are replaced atomically: a writer dying half-way through leaves the
    previous file whole and no stray temporary file behind."""
    run_and_exit(tmp_path, 2)
    snapshots = snapshots_in(tmp_path, CollectorRegistry())
    _multiprocess.Merge(snapshots).run()
    before = (tmp_path / "totals.json").read_bytes()
    run_and_exit(tmp_path, 3)
    real_write = os.write

    def half(fd: int, data: Any) -> int:
        real_write(fd, bytes(data[: len(data) // 2]))
        raise SystemExit("killed mid-write")

    with monkeypatch.context() as patched:
        patched.setattr(os, "write", half)
        with pytest.raises(SystemExit):
            _multiprocess.Merge(snapshots).run()
    assert (tmp_path / "totals.json").read_bytes() == before
    assert not list(tmp_path.glob(".*.tmp"))
    merged = aggregate_registry(snapshots)
    assert scrape(merged)[("jobs_total", (("queue", "a"),))] == 5


def test_a_lock_held_by_a_stopped_process_serves_the_last_view(tmp_path: Path) -> None:
    """If another process holds the merge lock and never lets go (stopped, say), a scrape
    waits a bounded time, then serves the last merged view, counting why."""
    run_and_exit(tmp_path, 6)
    registry = CollectorRegistry()
    errors = snapshot_errors(registry)
    snapshots = snapshots_in(
        tmp_path, registry, errors=_multiprocess.Errors(lambda r: errors.labels(r).inc())
    )
    merged = aggregate_registry(snapshots)
    assert scrape(merged)[("jobs_total", (("queue", "a"),))] == 6
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            "fd = os.open(sys.argv[1], os.O_RDWR)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "print('held', flush=True)\n"
            "time.sleep(60)\n",
            str(tmp_path / ".lock"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        assert scrape(merged)[("jobs_total", (("queue", "a"),))] == 6
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
    timeouts = registry.get_sample_value(
        "sightline_snapshot_errors_total", {"reason": "lock_timeout"}
    )
    assert timeouts == 1


RACE_PROGRAM = """
import sys
from pathlib import Path
from prometheus_client import CollectorRegistry, Counter
from sightline._multiprocess import Snapshots
from sightline._store import Store

registry = CollectorRegistry()
jobs = Counter("jobs", "Jobs done.", ["queue"], registry=registry)
path = Path(sys.argv[1])
snapshots = Snapshots(Store.open(path.parent, path.name), "test", registry, None)
jobs.labels("a").inc(5)
snapshots.write()
print("written", flush=True)
sys.stdin.readline()
jobs.labels("a").inc(4)
snapshots.close()  # the final snapshot, then the process exits
"""


def test_a_process_exiting_while_its_snapshot_is_read_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process writes its final snapshot and exits just while a merge reads its previous
    one: the merge must not fold the old one and delete the final one (5 counted, 4
    lost), and the totals end at 9."""
    with subprocess.Popen(
        [sys.executable, "-c", RACE_PROGRAM, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        assert child.stdin is not None
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "written"
        snapshots = snapshots_in(tmp_path, CollectorRegistry())
        real_read = Store.read

        def read_then_exit(self: Store, name: str, max_bytes: int) -> bytes:
            data = real_read(self, name, max_bytes)
            if name.startswith(f"{child.pid}-") and child.poll() is None:
                child.stdin.write("\n")  # type: ignore[union-attr]
                child.stdin.flush()  # type: ignore[union-attr]
                child.wait(30)
            return data

        with monkeypatch.context() as patched:
            patched.setattr(Store, "read", read_then_exit)
            _multiprocess.Merge(snapshots).run()
        assert child.returncode == 0
    merged = aggregate_registry(snapshots)
    assert scrape(merged)[("jobs_total", (("queue", "a"),))] == 9


# Forking with threads running is exactly the situation tested (Python 3.12+ warns of it).
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_fork_from_another_thread_never_stalls_a_process_the_agent_starts() -> None:
    """A process the agent starts from a background thread (the metrics socket's keeper)
    is started in full while the main thread forks workers that live on (a gunicorn
    master that ran init() in on_starting): no worker inherits the pipe Popen waits on,
    so every start returns at once instead of when a worker exits."""
    lives = 3.0  # each forked "worker" lives this long and never execs
    slowest: list[float] = []
    done = threading.Event()

    def starts() -> None:
        try:
            for _ in range(30):
                began = time.monotonic()
                child = _fork.spawn([sys.executable, "-c", "pass"], stdin=subprocess.DEVNULL)
                slowest.append(time.monotonic() - began)
                child.wait()
        finally:
            done.set()

    workers = []
    starter = threading.Thread(target=starts)
    starter.start()
    while not done.is_set() and len(workers) < 400:
        pid = os.fork()
        if pid == 0:
            time.sleep(lives)
            os._exit(0)
        workers.append(pid)
        time.sleep(0.002)
    starter.join()
    for pid in workers:
        os.waitpid(pid, 0)
    assert len(slowest) == 30
    assert max(slowest) < lives, f"a start waited for a worker to exit ({max(slowest):.1f} s)"


# Forking with threads running is exactly the situation tested (Python 3.12+ warns of it).
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_fork_waits_for_another_threads_exclusive_block() -> None:
    """A fork made while another thread is inside ``_fork.exclusive()`` (importing the
    OTLP encoder on the export thread, say) happens only once that block has ended, so
    the child never inherits its half-done state; and the child can enter a block of its
    own at once."""
    inside, ended = threading.Event(), threading.Event()
    ended_at: list[float] = []

    def block() -> None:
        with _fork.exclusive():
            inside.set()
            time.sleep(0.5)
            ended_at.append(time.monotonic())
        ended.set()

    thread = threading.Thread(target=block)
    thread.start()
    assert inside.wait(5)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            with _fork.exclusive():
                code = 0
        finally:
            os._exit(code)
    forked_at = time.monotonic()
    thread.join()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert ended_at
    assert forked_at >= ended_at[0]


@pytest.mark.internal_errors_expected
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_fork_that_stops_waiting_for_an_exclusive_block_says_so(
    internal_errors: list[BaseException], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fork that has waited FORK_WAIT for another thread's exclusive block goes ahead
    (a fork is never held for ever) and reports it: an internal error naming what it did
    not wait for, which is logged and counted."""
    monkeypatch.setattr(_fork, "FORK_WAIT", 0.1)
    inside, leave = threading.Event(), threading.Event()

    def block() -> None:
        with _fork.exclusive():
            inside.set()
            leave.wait(5)

    thread = threading.Thread(target=block)
    thread.start()
    assert inside.wait(5)
    try:
        pid = os.fork()
        if pid == 0:
            os._exit(0)
    finally:
        leave.set()
        thread.join()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert [str(e) for e in internal_errors if isinstance(e, TimeoutError)] == [
        "a fork went ahead after waiting 0.1 s for another thread to finish starting a process "
        "or importing a module; the child may hang on it"
    ]


BUSY_PROGRAM = """
import logging, os, sys, time
sys.stdout = open(os.devnull, "w")
import sightline
from flask import Flask
sightline.init(service="busy", metrics_addr="off", traces=False, logs=True, log_level="INFO")
app = Flask("busy")
log = logging.getLogger("busy")

@app.route("/u/<int:uid>")
def user(uid):
    log.info("served", extra={"uid": uid})
    return "ok"

environ = {
    "REQUEST_METHOD": "GET", "PATH_INFO": "/u/1", "SERVER_NAME": "x", "SERVER_PORT": "80",
    "wsgi.url_scheme": "http", "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.input": sys.stdin.buffer,
}
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:  # one thread serving flat out: no idle moment between requests
    body = app(dict(environ), lambda status, headers, exc_info=None: None)
    b"".join(body)
    body.close()
"""


def _total(document: dict[str, Any], family_name: str) -> float:
    return sum(
        sample[2]
        for family in document["families"]
        if family["name"] == family_name
        for sample in family["samples"]
        if not sample[0].endswith("_created")
    )


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="a Linux process model")
def test_a_process_serving_flat_out_keeps_writing_its_snapshot(tmp_path: Path) -> None:
    """A worker busy with requests without pause, each releasing the GIL once (its log
    line), keeps writing its snapshot about every second, and the snapshots show it busy
    (a request in flight). Left to its thread alone, such a worker wrote one snapshot in
    eight seconds: the thread lost the GIL at every release, and the view froze."""
    store = tmp_path / "store"
    store.mkdir(mode=0o700)
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(store)}
    program = subprocess.Popen(
        [sys.executable, "-c", BUSY_PROGRAM, "8"], env=env, stdin=subprocess.DEVNULL
    )
    seen: dict[int, tuple[float, float]] = {}  # mtime -> (in flight, waits) in that snapshot
    try:
        deadline = time.monotonic() + 30
        while program.poll() is None and time.monotonic() < deadline:
            for path in store.rglob("*-*.json"):  # a process's own snapshot
                with contextlib.suppress(FileNotFoundError, ValueError):
                    written = path.stat().st_mtime_ns
                    if written not in seen:
                        document = json.loads(path.read_bytes())
                        seen[written] = (
                            _total(document, "http_server_active_requests"),
                            _total(document, "sightline_snapshot_waits"),
                        )
            time.sleep(0.05)
    finally:
        program.kill()
        program.wait()
    assert program.returncode in (0, -signal.SIGKILL)
    assert len(seen) >= 4, f"{len(seen)} snapshots seen in 8 s of serving"
    busy = [active for active, _ in seen.values() if active >= 1]
    assert len(busy) > len(seen) / 2, seen
    assert max(waits for _, waits in seen.values()) >= 1, seen  # the waits are counted


def test_a_request_ending_once_the_thread_is_late_waits_for_its_snapshot(
    tmp_path: Path,
) -> None:
    """A request or task that finds the snapshot thread late waits until the thread has
    written, then goes on; nothing is counted as an error, and the next wait is an
    interval away."""
    registry = CollectorRegistry()
    errors = snapshot_errors(registry)
    waits: list[float] = []
    snapshots = snapshots_in(
        tmp_path,
        registry,
        errors=_multiprocess.Errors(lambda r: errors.labels(r).inc()),
        waited=waits.append,
    )
    writes: list[str] = []
    real_write = snapshots.store.write

    def write(name: str, data: bytes, durable: bool = False) -> None:
        real_write(name, data, durable)
        writes.append(threading.current_thread().name)

    snapshots.store.write = write  # type: ignore[method-assign]
    snapshots.start()
    try:
        snapshots.late_at = 0.0
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(_multiprocess, "PARK_TIMEOUT", 30.0)
            snapshots.park()
        assert writes
        assert set(writes) == {"sightline-snapshots"}
        assert len(waits) == 1  # told, for sightline_snapshot_waits_total
        assert snapshots.late_at > time.perf_counter() + 0.5 * _multiprocess.INTERVAL
        assert (
            registry.get_sample_value(
                "sightline_snapshot_errors_total", {"reason": "late_snapshot"}
            )
            is None
        )
    finally:
        snapshots.close()


def test_a_thread_that_cannot_write_in_time_is_reported_and_waited_for_less_often(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """If the snapshot thread does not write within PARK_TIMEOUT of a request waiting
    for it (stuck on a slow disk), the request goes on, the lateness is counted and
    logged with where to look, and the next wait is further off each time it happens
    again (two intervals, then four)."""
    registry = CollectorRegistry()
    errors = snapshot_errors(registry)
    snapshots = snapshots_in(
        tmp_path, registry, errors=_multiprocess.Errors(lambda r: errors.labels(r).inc())
    )
    stuck, release = threading.Event(), threading.Event()
    real_write = snapshots.store.write

    def slow_write(name: str, data: bytes, durable: bool = False) -> None:
        stuck.set()
        release.wait(30)
        real_write(name, data, durable)

    snapshots.store.write = slow_write  # type: ignore[method-assign]
    snapshots.start()
    try:
        assert stuck.wait(10)
        snapshots.late_at = 0.0
        with caplog.at_level("WARNING", logger="sightline"):
            snapshots.park()
        assert (
            registry.get_sample_value(
                "sightline_snapshot_errors_total", {"reason": "late_snapshot"}
            )
            == 1
        )
        assert snapshots.late_at > time.perf_counter() + 1.5 * _multiprocess.INTERVAL
        snapshots.late_at = 0.0
        snapshots.park()
        assert snapshots.late_at > time.perf_counter() + 3.5 * _multiprocess.INTERVAL
        assert (
            registry.get_sample_value(
                "sightline_snapshot_errors_total", {"reason": "late_snapshot"}
            )
            == 2
        )
        [warning] = [r.getMessage() for r in caplog.records if "did not write" in r.getMessage()]
        assert "sightline_snapshot_age_seconds" in warning
    finally:
        release.set()
        snapshots.close()


STALE_PROGRAM = """
import sys
from pathlib import Path
from prometheus_client import CollectorRegistry, Counter
from sightline._multiprocess import Snapshots
from sightline._store import Store

registry = CollectorRegistry()
Counter("jobs", "Jobs done.", ["queue"], registry=registry).labels("a").inc(5)
path = Path(sys.argv[1])
Snapshots(Store.open(path.parent, path.name), "test", registry, None).write()
print("written", flush=True)
sys.stdin.readline()  # running, and writing nothing more
"""


def test_a_running_process_with_an_old_snapshot_is_shown_and_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The merged view shows each live process's snapshot age; a running process whose
    snapshot is older than STALE_AFTER is counted as stale at each scrape and warned
    about once, and its counts are still in the view."""
    writer = subprocess.Popen(
        [sys.executable, "-c", STALE_PROGRAM, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout is not None
        assert writer.stdout.readline().strip() == "written"
        [path] = tmp_path.glob("*-*.json")
        document = json.loads(path.read_text())
        document["time"] -= 60  # as if written a minute ago
        path.write_text(json.dumps(document))
        registry = CollectorRegistry()
        errors = snapshot_errors(registry)
        snapshots = snapshots_in(
            tmp_path, registry, errors=_multiprocess.Errors(lambda r: errors.labels(r).inc())
        )
        merged = aggregate_registry(snapshots)
        with caplog.at_level("WARNING", logger="sightline"):
            for _ in range(3):
                found = scrape(merged)
        assert found[("jobs_total", (("queue", "a"),))] == 5
        ages = {
            dict(labels)["process_pid"]: age
            for (name, labels), age in found.items()
            if name == "sightline_snapshot_age_seconds"
        }
        assert set(ages) == {str(writer.pid), str(os.getpid())}
        assert 60 <= ages[str(writer.pid)] < 120
        assert ages[str(os.getpid())] == 0  # this process's own: current to the scrape
        assert (
            registry.get_sample_value(
                "sightline_snapshot_errors_total", {"reason": "stale_snapshot"}
            )
            == 3
        )
        stale = [r.getMessage() for r in caplog.records if "s ago" in r.getMessage()]
        assert len(stale) == 1, stale
        assert str(writer.pid) in stale[0]
    finally:
        writer.kill()
        writer.wait()
        for stream in (writer.stdin, writer.stdout):
            if stream is not None:
                stream.close()


class AlwaysLate:
    """Snapshots whose thread is always late: each wait records the work in flight."""

    late_at = 0.0
    worker = True  # a process that serves requests (see Agent.capacity)

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.seen: list[tuple[float | None, float | None]] = []

    def park(self) -> None:
        self.seen.append(
            (
                self.registry.get_sample_value("http_server_active_requests"),
                self.registry.get_sample_value("worker_tasks_active", {"task_system": "custom"}),
            )
        )


def test_requests_and_tasks_wait_for_a_late_snapshot_while_still_in_flight(
    agent: CollectorRegistry,
) -> None:
    """A WSGI request, an ASGI request and a task ending once the snapshot thread is
    late each wait for it once, before their in-flight gauge goes down (so the snapshot
    written meanwhile shows the worker busy); after, nothing is left in flight."""
    import asyncio

    import sightline
    from sightline import _state
    from sightline.integrations.asgi import SightlineASGIMiddleware

    from .helpers import call_wsgi

    assert _state.current is not None
    late = AlwaysLate(agent)
    _state.current.metrics.snapshots = late  # type: ignore[assignment]

    def wsgi_app(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b"ok"]

    assert call_wsgi(sightline.instrument_app(wsgi_app)) == ("200 OK", b"ok")
    assert late.seen == [(1.0, None)]

    async def asgi_app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def call() -> None:
        scope = {"type": "http", "method": "GET", "path": "/", "headers": []}

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b""}

        async def send(message: dict[str, Any]) -> None:
            pass

        await SightlineASGIMiddleware(asgi_app)(scope, receive, send)

    asyncio.run(call())
    assert late.seen[1:] == [(1.0, None)]
    with sightline.task("resize"):
        pass
    assert late.seen[2:] == [(0.0, 1.0)]
    assert agent.get_sample_value("http_server_active_requests") == 0
    assert agent.get_sample_value("worker_tasks_active", {"task_system": "custom"}) == 0


def test_a_snapshot_with_a_time_that_is_not_a_finite_number_is_skipped(
    tmp_path: Path,
) -> None:
    """Snapshots whose time is NaN, infinite, a bool or an integer too large for a float
    are skipped as invalid (counted each), and the merge goes on with the valid ones."""
    run_and_exit(tmp_path, 3)
    [valid] = tmp_path.glob("*-*.json")
    document = json.loads(valid.read_text())
    bad_times = ["NaN", "Infinity", "-Infinity", "true", "1" + "0" * 400]
    for number, bad in enumerate(bad_times, start=1):
        key = f"99999{number}-1"  # no running process has these keys
        text = json.dumps({**document, "process": key, "time": 0}).replace(
            '"time": 0', f'"time": {bad}'
        )
        (tmp_path / f"{key}.json").write_text(text)
    registry = CollectorRegistry()
    errors = snapshot_errors(registry)
    snapshots = snapshots_in(
        tmp_path, registry, errors=_multiprocess.Errors(lambda r: errors.labels(r).inc())
    )
    assert scrape(aggregate_registry(snapshots))[("jobs_total", (("queue", "a"),))] == 3
    invalid = registry.get_sample_value("sightline_snapshot_errors_total", {"reason": "invalid"})
    assert invalid == len(bad_times)


def test_server_workers_busy_adds_up_each_worker_s_busy_share(tmp_path: Path) -> None:
    """server_workers_busy adds up the live workers' busy shares (each capped at one),
    and falls back on the in-flight gauges (requests or tasks) for a snapshot without a
    share (an earlier version's); a share that is not a finite number of at least 0
    makes the snapshot invalid, counted."""
    from sightline._process import process_key

    run_and_exit(tmp_path, 1)
    [template] = tmp_path.glob("*-*.json")
    document = json.loads(template.read_text())
    template.unlink()

    def gauge(name: str, value: float) -> dict[str, Any]:
        return {
            "name": name,
            "type": "gauge",
            "help": "",
            "unit": "",
            "samples": [[name, {}, value, None]],
        }

    workers: list[tuple[Any, dict[str, Any]]] = [
        (0.25, {}),
        (1.7, {}),  # a threaded worker's mean in flight: counts as one
        (None, {"families": [gauge("worker_tasks_active", 1.0)]}),
        (None, {"families": [gauge("http_server_active_requests", 1.0)]}),
        (None, {"families": [gauge("http_server_active_requests", 0.0)]}),
        ("NaN", {}),
        (-0.5, {}),
        ("true", {}),
    ]
    sleepers = [
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) for _ in workers
    ]
    try:
        for proc, (share, extra) in zip(sleepers, workers, strict=True):
            key = process_key(proc.pid)
            assert key is not None
            text = json.dumps(
                {**document, "process": key, "worker": True, "final": False, "busy": 0, **extra}
            )
            text = text.replace('"busy": 0', f'"busy": {"null" if share is None else share}')
            (tmp_path / f"{key}.json").write_text(text)
        registry = CollectorRegistry()
        errors = snapshot_errors(registry)
        snapshots = snapshots_in(
            tmp_path, registry, errors=_multiprocess.Errors(lambda r: errors.labels(r).inc())
        )
        merged = scrape(aggregate_registry(snapshots))
    finally:
        for proc in sleepers:
            proc.kill()
            proc.wait()
    assert merged[("server_workers_busy", ())] == 0.25 + 1 + 1 + 1 + 0
    invalid = registry.get_sample_value("sightline_snapshot_errors_total", {"reason": "invalid"})
    assert invalid == 3


def test_a_snapshot_measures_its_busy_share_over_at_least_a_second(tmp_path: Path) -> None:
    """Each snapshot's busy share is the busy seconds gained since the newest earlier
    snapshot at least a second old (or since the first, in a younger process), per second;
    the first snapshot has none."""
    snapshots = snapshots_in(tmp_path, CollectorRegistry())
    assert snapshots._busy_share(100.0, 0.0) is None
    assert snapshots._busy_share(100.5, 0.4) == pytest.approx(0.8)  # younger than 1 s
    assert snapshots._busy_share(101.2, 1.0) == pytest.approx(1.0 / 1.2)
    assert snapshots._busy_share(101.4, 1.0) == pytest.approx(1.0 / 1.4)  # from 100.0
    assert snapshots._busy_share(102.3, 1.0) == pytest.approx(0.0)  # from 101.2
    assert snapshots._busy_share(102.4, None) is None  # no busy counter to read
    for step in range(1, 200):  # many snapshots within a second keep a bounded history
        snapshots._busy_share(102.3 + step / 1000, 1.0)
    assert len(snapshots._busy_points) <= 64
