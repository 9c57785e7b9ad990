"""The benchmarks run: each suite for one tiny round, so a broken suite fails here before it
publishes a number. What they measure is never asserted (the numbers live in
docs/performance.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

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


#: Every suite of benchmarks/overhead.py, and the variants its smoke run leaves out:
#: OpenTelemetry's SQLAlchemy instrumentation instruments nothing on SQLAlchemy 2.1 and
#: later (the bench extra pins 2.0; the tests install the newest).
SUITES = {
    "metrics": (), "full": (), "fastapi": (), "django": (), "log": (), "celery": (),
    "rq": (), "sqlalchemy": ("sqla_incumbent",), "http_client": (), "httpx": (),
    "urllib3": (), "aiohttp": (), "redis": (), "psycopg": (), "django_orm": (),
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
