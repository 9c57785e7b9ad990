"""The benchmarks run: each suite for one tiny round, so a broken suite fails here before it
publishes a number. What they measure is never asserted (the numbers live in
docs/performance.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
from sightline.metrics import HTTP_DURATION_BUCKETS

from .servers import ROOT, postgres_bin


def test_startup_benchmark_reports_every_variant_against_its_base() -> None:
    """benchmarks/startup.py --runs 1 --json times bare, import, init and run as whole
    processes and reports, for each but the baseline, the milliseconds and MiB it adds
    over the variant it builds on, and the goal that applies."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIGHTLINE_", "OTEL_"))}
    result = subprocess.run(
        [sys.executable, "benchmarks/startup.py", "--runs", "1", "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert list(report) == ["bare", "import", "init", "run"]
    for name, entry in report.items():
        assert entry["median_ms"] > 0, name
        assert 1 < entry["peak_mib"] < 1024, name
    assert "added_ms" not in report["bare"]
    assert report["init"]["added_ms"] == report["init"]["median_ms"] - report["import"]["median_ms"]
    assert report["run"]["added_ms"] == report["run"]["median_ms"] - report["bare"]["median_ms"]
    # Importing and starting the agent show up in memory, so the report reads its own.
    assert report["init"]["peak_mib"] > report["bare"]["peak_mib"]
    assert [report[n]["target_added_ms"] for n in ("import", "init", "run")] == [40, 30, 150]


@pytest.mark.benchmark
def test_scrape_benchmark_fills_every_worker_and_reports_every_configuration() -> None:
    """benchmarks/scrape.py starts a real gunicorn under the launcher for each configuration
    (workers x routes), fills every worker with every route x status label set, checks
    the merged scrape counts exactly those, and reports each configuration's series, bytes
    and milliseconds per scrape; the goal's verdict only where its configuration ran."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIGHTLINE_", "OTEL_"))}
    result = subprocess.run(
        [
            sys.executable, "benchmarks/scrape.py", "--workers", "1", "2", "--routes", "5", "10",
            "--routes-at", "2", "--scrapes", "3", "--idle", "1", "--json",
        ],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    configurations = {(e["workers"], e["routes"]): e for e in report["configurations"]}
    assert list(configurations) == [(1, 5), (2, 5), (2, 10)]
    lines_per_label_set = len(HTTP_DURATION_BUCKETS) + 3  # the buckets, +Inf, _sum, _count
    for (workers, routes), entry in configurations.items():
        assert entry["workers_filled"] == workers, entry
        assert entry["label_sets"] == routes * 3, entry
        assert entry["histogram_series"] == routes * 3 * lines_per_label_set, entry
        assert entry["series"] > entry["histogram_series"], entry
        assert entry["bytes"] > entry["gzip_bytes"] > 0, entry
        assert entry["ms_p90"] >= entry["ms_median"] > 0, entry
        assert entry["gzip_ms_median"] > 0, entry
        assert entry["cpu_ms_per_scrape"] >= 0, entry
    # Routes add only the histogram's series: the rest depends on the workers alone.
    fixed = {key: e["series"] - e["histogram_series"] for key, e in configurations.items()}
    assert fixed[(2, 5)] == fixed[(2, 10)] > fixed[(1, 5)]
    assert "goal" not in report  # 4 workers x 50 routes did not run


@pytest.mark.benchmark
@pytest.mark.timeout(400)
def test_fleet_benchmark_measures_the_demo_and_what_a_series_costs_prometheus() -> None:
    """benchmarks/fleet.py runs the real demo with a receiver where the Collector and Loki
    would be, and reports its requests and tasks per second, the shop's series by route,
    bytes and samples per scrape, the spans and log lines each service sent with their
    bytes (none unreadable), the same per 100 requests/s, and a second Prometheus's memory
    per head series from scraping the shop once and as two targets, each fully in its
    head; and it leaves no process of its stack behind."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIGHTLINE_", "OTEL_"))}
    result = subprocess.run(
        [
            sys.executable, "benchmarks/fleet.py", "--warmup", "20", "--window", "10",
            "--targets", "2", "--settle", "3", "--json",
        ],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=360,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["requests_per_s"] > 1
    assert report["tasks_per_s"] > 0
    assert report["shop_routes"] >= 3
    routed = sum(report["shop_series_per_route"].values())
    assert routed + report["shop_series_without_route"] == report["shop_series"]
    assert report["shop_scrape_bytes"] > report["shop_scrape_bytes_gzip"] > 0
    assert report["shop_samples_per_scrape"] >= report["shop_series"]
    assert report["scrape_interval_s"] == 5
    assert report["receiver_errors"] == 0
    received = report["received"]
    for key in ("spans shop", "spans shop-worker", "logs shop", "logs shop-worker"):
        rates = received[key]
        assert rates["items"] > 0, key
        assert rates["plain_bytes"] > rates["bytes"] > 0, key
        assert report["per_100_requests_per_s"][key]["items"] > rates["items"], key
    cost = report["prometheus_per_series"]
    one, two = cost["readings"]["1"]["head_series"], cost["readings"]["2"]["head_series"]
    assert one >= report["shop_series"]
    assert two >= 1.9 * one
    assert cost["bytes_per_series"] != 0
    assert not [
        p
        for p in psutil.process_iter(["cmdline"])
        if "sightline-fleet-" in " ".join(p.info["cmdline"] or [])
    ]


#: Every suite of benchmarks/overhead.py, and the variants its smoke run leaves out:
#: OpenTelemetry's SQLAlchemy instrumentation instruments nothing on SQLAlchemy 2.1 and
#: later (the bench extra pins 2.0; the tests install the newest).
SUITES = {
    "metrics": (), "fastapi_metrics": (), "django_metrics": (), "full": (), "fastapi": (),
    "django": (), "paced": (), "log": (), "celery": (), "rq": (),
    "sqlalchemy": ("sqla_incumbent",), "http_client": (), "httpx": (), "urllib3": (),
    "aiohttp": (), "redis": (), "psycopg": (), "django_orm": (),
}  # fmt: skip


def overhead(*args: str, timeout: float = 110) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIGHTLINE_", "OTEL_"))}
    env.pop("BENCH_POSTGRES", None)  # the psycopg suite starts its own server
    return subprocess.run(
        [sys.executable, "benchmarks/overhead.py", *args],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout,
    )  # fmt: skip


def test_every_suite_of_the_overhead_benchmark_has_a_smoke_run() -> None:
    """overhead.py --list names exactly the suites smoke-run below, so a new suite cannot
    go untested."""
    listed = overhead("--list")
    assert listed.returncode == 0, listed.stderr
    assert [line.split()[0] for line in listed.stdout.splitlines()] == list(SUITES)


@pytest.mark.benchmark
@pytest.mark.parametrize("suite", SUITES)
def test_overhead_suite_runs_checks_its_variants_and_reports_their_ratios(suite: str) -> None:
    """benchmarks/overhead.py --suite <suite>, one short round of 200 requests (log calls,
    tasks, statements): every variant's worker checks what it served and that its stack
    recorded every unit (metrics counted, spans and log lines delivered), or the run
    fails; the report times each variant and gives every comparison the suite makes a
    ratio and a verdict. The psycopg suite starts its own PostgreSQL (Debian's package)."""
    if suite == "psycopg":
        postgres_bin()  # fails under CI, else skips, without PostgreSQL
    listed = overhead("--list")
    line = next(line for line in listed.stdout.splitlines() if line.split()[0] == suite)
    variants = [v.strip(",") for v in line.split("warm-up)")[1].split()]
    chosen = [v for v in variants if v not in SUITES[suite]]
    result = overhead(
        "--suite", suite, "--rounds", "1", "--requests", "200", "--warmup", "20", "--json",
        "--variants", *chosen,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert list(report["variants"]) == chosen
    for name, entry in report["variants"].items():
        assert entry["us_per_request"]["median"] > 0, name
    # Every comparison the suite makes is reported, unless its reference was left out.
    assert report["comparisons"] or SUITES[suite], report
    for comparison in report["comparisons"]:
        assert comparison["variant"] in chosen
        assert isinstance(comparison["meets_target"], bool)
        assert isinstance(comparison["ratio"], float), comparison


def test_the_floor_recorder_times_each_request_until_its_body_is_closed_by_status(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The metrics suite's minimal recorder records what it claims: each request once,
    under its status, timed from the call until the server closes the body (after the
    body's own close), into the bucket its duration falls in; an app raising before it
    returns a body, and a body raising half-way, are 500s; its buckets are Sightline's."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from suites.web import FLOOR_BOUNDS, FloorRecorder

    assert FLOOR_BOUNDS == HTTP_DURATION_BUCKETS
    now = [100.0]
    events: list[str] = []

    class Body:
        def __init__(self, took: float, fail: bool) -> None:
            self.took, self.fail = took, fail

        def __iter__(self) -> Iterator[bytes]:
            yield b"a"
            if self.fail:
                raise RuntimeError("stream broke")
            yield b"b"

        def close(self) -> None:
            now[0] += self.took  # the body's own close takes time, and is timed
            events.append("closed")

    def app(environ: dict[str, Any], start_response: Any) -> Body:
        if environ.get("raise"):
            raise LookupError("no body at all")
        start_response(environ["status"], [])
        return Body(environ["took"], environ.get("fail", False))

    recorder = FloorRecorder(app, clock=lambda: now[0])
    statuses: list[str] = []
    requests = [
        {"status": "200 OK", "took": 0.003},  # the first bucket, <= 0.005
        {"status": "404 Not Found", "took": 0.03},  # (0.025, 0.05]
        {"status": "200 OK", "took": 20.0},  # past the last bound, 10 s
    ]
    for environ in requests:
        body = recorder(environ, lambda status, headers, exc_info=None: statuses.append(status))
        assert list(body) == [b"a", b"b"]
        assert recorder.count() == len(events)  # nothing recorded before the close
        body.close()
        body.close()  # a second close records nothing more
    broken = recorder({"status": "200 OK", "took": 0.06, "fail": True}, lambda *args: None)
    with pytest.raises(RuntimeError):
        list(broken)
    broken.close()
    with pytest.raises(LookupError):
        recorder({"raise": True}, lambda *args: None)

    assert statuses == ["200 OK", "404 Not Found", "200 OK"]
    assert events == ["closed"] * 4  # each body closed once; the raising app had none
    assert recorder.count() == 5
    last = len(FLOOR_BOUNDS)  # the +Inf bucket; the sum follows it
    expected = {"200": {0: 1, last: 1}, "404": {3: 1}, "500": {0: 1, 4: 1}}  # 0.06 s: (0.05, 0.075]
    for status, buckets in recorder.histograms.items():
        counts = {i: n for i, n in enumerate(buckets[:-1]) if n}
        assert counts == expected[status], status
    assert recorder.histograms["200"][-1] == pytest.approx(20.003)
    assert recorder.histograms["500"][-1] == pytest.approx(0.06)
