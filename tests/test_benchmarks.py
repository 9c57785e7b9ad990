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


#: The suites that time one call to a dependency, with the variants each smoke run keeps.
#: OpenTelemetry's SQLAlchemy instrumentation instruments nothing on the SQLAlchemy 2.1
#: the tests install (the bench extra pins 2.0), so that suite runs without it here.
DEPENDENCY_SUITES = {
    "sqlalchemy": ["sqla_bare", "sqla_sightline"],
    "redis": ["redis_bare", "redis_incumbent", "redis_sightline"],
    "psycopg": ["pg_bare", "pg_incumbent", "pg_sightline"],
    "django_orm": ["orm_bare", "orm_incumbent", "orm_sightline"],
    "http_client": ["http_bare", "http_incumbent", "http_sightline"],
    "httpx": ["httpx_bare", "httpx_incumbent", "httpx_sightline"],
    "urllib3": ["urllib3_bare", "urllib3_incumbent", "urllib3_sightline"],
    "aiohttp": ["aiohttp_bare", "aiohttp_incumbent", "aiohttp_sightline"],
}


@pytest.mark.benchmark
@pytest.mark.parametrize("suite", DEPENDENCY_SUITES)
def test_dependency_suite_times_each_variant_and_checks_what_it_recorded(suite: str) -> None:
    """benchmarks/overhead.py --suite <suite>, one short round: every variant's worker
    checks its call's result and that Sightline counted every call (or that the sink got
    every span), and the report gives Sightline's added cost against the incumbent's. The
    psycopg suite starts its own PostgreSQL (Debian's package)."""
    variants = DEPENDENCY_SUITES[suite]
    if suite == "psycopg":
        postgres_bin()  # fails under CI, else skips, without PostgreSQL
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIGHTLINE_", "OTEL_"))}
    env.pop("BENCH_POSTGRES", None)
    result = subprocess.run(
        [sys.executable, "benchmarks/overhead.py", "--suite", suite, "--rounds", "1",
         "--requests", "40", "--warmup", "10", "--json", "--variants", *variants],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=110,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert list(report["variants"]) == variants
    for name, entry in report["variants"].items():
        assert entry["us_per_request"]["median"] > 0, name
    incumbent = next((v for v in variants if v.endswith("_incumbent")), None)
    if incumbent is not None:
        assert report["variants"][incumbent]["spans_exported"]["median"] == 1.0
        (comparison,) = report["comparisons"]
        assert comparison["variant"] == variants[-1]
        assert comparison["reference"] == incumbent
        assert comparison["target"] == 0.25
        assert isinstance(comparison["ratio"], float)
