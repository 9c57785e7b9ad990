"""What Sightline costs a process at start-up: whole processes, timed from spawn to exit.

Every variant is a fresh interpreter of this environment, started, waited for and timed
(wall clock, ``time.perf_counter_ns``), and each program prints its own peak resident
memory (Linux's ``VmHWM``) as it ends; runs rotate through the variants so that drift in
the machine's load falls on all of them alike. The report gives each variant's median and
quartiles over ``--runs`` runs, and what it adds to the variant it builds on:

``bare``
    ``python -c ...``: the interpreter alone.
``import``
    ``import sightline``, against ``bare``.
``init``
    ``import sightline; sightline.init(service=...)`` with the defaults but the metrics
    server (``SIGHTLINE_METRICS_ADDR=off``: a benchmark must not take port 9464) and with
    nothing listening at the OTLP endpoint, against ``import``: what the agent's start
    costs, and whether the exit of a process that has nothing to send waits for anything.
``run``
    ``sightline run -- python -c ...`` (the launcher, then the program started through
    it), against ``bare``: what every short script, cron job or ``manage.py`` command
    started under ``sightline run`` pays.

Bytecode caches are warmed by one untimed run of each variant first, and
``PYTHONDONTWRITEBYTECODE`` is removed from the children's environment: a cold cache
measures the compiler, not the agent. ::

    python benchmarks/startup.py                 # 30 runs of each variant
    python benchmarks/startup.py --runs 60 --json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Variant:
    name: str
    argv: list[str]
    base: str  # the variant whose cost it adds to ("" for the baseline)
    target_ms: float | None  # what it may add, per the performance goals


#: Appended to every program: its own peak resident memory (KiB), printed before it exits.
#: VmHWM is this program's (ru_maxrss would keep the forking parent's, across exec).
_PEAK = "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])"


def variants() -> list[Variant]:
    python = sys.executable
    launcher = str(BIN / "sightline")
    start = [launcher] if os.access(launcher, os.X_OK) else [python, "-m", "sightline"]
    init = "import sightline; sightline.init(service='startup-bench')"
    return [
        Variant("bare", [python, "-c", _PEAK], "", None),
        Variant("import", [python, "-c", f"import sightline; {_PEAK}"], "bare", 40.0),
        Variant("init", [python, "-c", f"{init}; {_PEAK}"], "import", 30.0),
        Variant("run", [*start, "run", "--", python, "-c", _PEAK], "bare", 150.0),
    ]


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIGHTLINE_", "OTEL_"))}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["SIGHTLINE_METRICS_ADDR"] = "off"
    env["OTEL_EXPORTER_OTLP_ENDPOINT"] = "http://127.0.0.1:9"  # discard: nothing listens
    return env


def run_once(argv: Sequence[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall milliseconds from spawn to exit of one process, and the peak resident MiB
    the program itself reported."""
    started = time.perf_counter_ns()
    result = subprocess.run(list(argv), env=env, stdin=subprocess.DEVNULL, capture_output=True)
    elapsed = (time.perf_counter_ns() - started) / 1e6
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited with {result.returncode}: {result.stderr!r}")
    return elapsed, int(result.stdout.split()[-1]) / 1024


def measure(runs: int) -> dict[str, dict[str, float]]:
    env = environment()
    chosen = variants()
    for variant in chosen:  # warm the bytecode caches; checks each variant works
        run_once(variant.argv, env)
    times: dict[str, list[float]] = {v.name: [] for v in chosen}
    memory: dict[str, list[float]] = {v.name: [] for v in chosen}
    for round_ in range(runs):
        shift = round_ % len(chosen)
        for variant in chosen[shift:] + chosen[:shift]:
            ms, mib = run_once(variant.argv, env)
            times[variant.name].append(ms)
            memory[variant.name].append(mib)
    report: dict[str, dict[str, float]] = {}
    for variant in chosen:
        taken = sorted(times[variant.name])
        quartiles = statistics.quantiles(taken, n=4) if len(taken) > 1 else [taken[0]] * 3
        entry = {
            "median_ms": statistics.median(taken),
            "q1_ms": quartiles[0],
            "q3_ms": quartiles[2],
            "peak_mib": statistics.median(memory[variant.name]),
        }
        if variant.base:
            entry["added_ms"] = entry["median_ms"] - report[variant.base]["median_ms"]
            entry["added_mib"] = entry["peak_mib"] - report[variant.base]["peak_mib"]
        if variant.target_ms is not None:
            entry["target_added_ms"] = variant.target_ms
        report[variant.name] = entry
    return report


def render(report: dict[str, dict[str, float]], runs: int) -> str:
    bases = {v.name: v.base for v in variants()}
    lines = [
        f"start-up, {runs} runs each (median, quartiles; added over the variant named)",
        f"{'variant':<8} {'median':>9} {'q1-q3':>17} {'peak':>9}  added",
    ]
    for name, entry in report.items():
        added = ""
        if "added_ms" in entry:
            added = f"{entry['added_ms']:+.1f} ms, {entry['added_mib']:+.1f} MiB over {bases[name]}"
            if "target_added_ms" in entry:
                verdict = "within" if entry["added_ms"] <= entry["target_added_ms"] else "over"
                added += f" ({verdict} the {entry['target_added_ms']:.0f} ms goal)"
        lines.append(
            f"{name:<8} {entry['median_ms']:7.1f}ms "
            f"{entry['q1_ms']:7.1f}-{entry['q3_ms']:6.1f}ms {entry['peak_mib']:6.1f}MiB  {added}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30, help="runs of each variant")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    report = measure(args.runs)
    print(json.dumps(report, indent=2) if args.json else render(report, args.runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
