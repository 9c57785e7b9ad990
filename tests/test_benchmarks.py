"""The benchmarks run: each suite for one tiny round, so a broken suite fails here before it
publishes a number. What they measure is never asserted (the numbers live in
docs/performance.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from .servers import ROOT


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
