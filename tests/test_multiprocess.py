"""Multi-process servers: exact, never-decreasing totals over recycled workers, one endpoint."""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics
from prometheus_client.parser import text_string_to_metric_families
from sightline import _multiprocess
from sightline._multiprocess import Snapshots, aggregate_registry

from .helpers import free_port, wait_until
from .receivers import Backend
from .servers import Prometheus, gunicorn, prometheus, status_of, uvicorn

SNAPSHOT_PROGRAM = """
import sys
from prometheus_client import CollectorRegistry, Counter, Gauge
from sightline._multiprocess import Snapshots
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
Snapshots(Path(sys.argv[1]), registry, None).write()
"""


def run_and_exit(directory: Path, count: int, trace_id: str = "ab" * 16) -> None:
    """A separate process counts ``count`` jobs, writes its snapshot, and exits."""
    code = textwrap.dedent(SNAPSHOT_PROGRAM.format(count=count, trace_id=trace_id))
    subprocess.run([sys.executable, "-c", code, str(directory)], check=True, timeout=60)


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
    snapshots = Snapshots(tmp_path, registry, None)
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
        ["past.json", snapshots.path.name]
    )
    run_and_exit(tmp_path, 1)
    jobs.labels("a").inc()
    assert scrape(merged)[("jobs_total", (("queue", "a"),))] == 121  # never double, never lost


def test_exemplars_survive_the_merge(tmp_path: Path) -> None:
    """A histogram exemplar written by another process is in the merged exposition."""
    run_and_exit(tmp_path, 2, trace_id="cd" * 16)
    merged = aggregate_registry(Snapshots(tmp_path, CollectorRegistry(), None))
    assert 'trace_id="' + "cd" * 16 + '"' in openmetrics(merged).decode()


@pytest.mark.internal_errors_expected
def test_a_corrupt_snapshot_is_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, internal_errors: list[BaseException]
) -> None:
    """A snapshot that is not valid JSON is logged and skipped; the scrape still answers."""
    run_and_exit(tmp_path, 4)
    (tmp_path / "1-1.json").write_text("{not json")
    merged = aggregate_registry(Snapshots(tmp_path, CollectorRegistry(), None))
    assert scrape(merged)[("jobs_total", (("queue", "a"),))] == 4
    assert "unreadable metrics snapshot" in caplog.text
    assert internal_errors == []


# -- real servers


def value(prom: Prometheus, promql: str) -> float | None:
    result = prom.query(promql)
    return float(result[0]["value"][1]) if result else None


def send(base: str, total: int) -> dict[int, int]:
    """``total`` requests over several routes, 8 at a time; returns counts by status.

    Never ``/health``: the readiness probe uses it, so queries leave it out.
    """
    paths = ["/users/1", "/users/2", "/teapot/green", "/nothing-here"]

    def one(i: int) -> int:
        return status_of(base + paths[i % len(paths)])

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
    assert wait_until(lambda: value(prom, SERVED) == total), value(prom, SERVED)
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
    assert backend.wait_for(lambda: len(backend.spans()) >= total, timeout=30)
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


def test_gunicorn_preload_master_serves_the_merged_view(tmp_path: Path, backend: Backend) -> None:
    """With --preload the master runs init(): workers forked from it report through the
    same seam, and the totals stay exact across recycling."""
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
    assert len(snapshot_files(tmp_path)) <= 4


def test_uvicorn_workers_keep_exact_totals(tmp_path: Path, backend: Backend) -> None:
    """uvicorn --workers 3 serving 2,000 requests, every worker replaced three times (rolling
    restarts, SIGHUP) while they flow: exact totals, no reset, bounded storage."""
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
    """A snapshot is one JSON document naming each family's type, help and samples."""
    run_and_exit(tmp_path, 1)
    [path] = tmp_path.glob("*.json")
    document = json.loads(path.read_text())
    kinds = {family["name"]: family["type"] for family in document["families"]}
    assert kinds == {"jobs": "counter", "depth": "gauge", "latency_seconds": "histogram"}


def test_a_forked_child_does_not_repeat_its_parents_counts(tmp_path: Path) -> None:
    """A process forked after counting (gunicorn --preload) reports only what it counts
    itself: the parent's counts, inherited in memory, are not merged twice."""
    registry = CollectorRegistry()
    jobs = Counter("jobs", "Jobs done.", registry=registry)
    jobs.inc(5)
    snapshots = Snapshots(tmp_path, registry, None)
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


def test_a_closed_process_keeps_its_last_snapshot(tmp_path: Path) -> None:
    """Once a process wrote its final snapshot, a late scrape it answers while exiting
    cannot overwrite it (with a registry already emptied by shutdown)."""
    registry = CollectorRegistry()
    jobs = Counter("jobs", "Jobs done.", registry=registry)
    jobs.inc(5)
    snapshots = Snapshots(tmp_path, registry, None)
    snapshots.close()
    registry.unregister(jobs)
    scrape(aggregate_registry(snapshots))  # writes this process's snapshot first, normally
    document = json.loads(snapshots.path.read_text())
    assert [f["name"] for f in document["families"]] == ["jobs"]


def test_prometheus_multiproc_dir_is_honoured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With PROMETHEUS_MULTIPROC_DIR set, snapshots live in a subdirectory of it, even with
    no server detected, and processes sharing it are merged."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    directory = _multiprocess.directory_for(None)
    assert directory == tmp_path / "sightline"
    run_and_exit(directory, 6)
    merged = aggregate_registry(Snapshots(directory, CollectorRegistry(), None))
    assert scrape(merged)[("jobs_total", (("queue", "a"),))] == 6


def test_no_server_and_no_directory_means_a_single_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Outside gunicorn/uvicorn workers and without PROMETHEUS_MULTIPROC_DIR nothing is shared."""
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    assert _multiprocess.directory_for(None) is None
