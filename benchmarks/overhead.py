"""Per-request cost Sightline's metrics add to a Flask app, next to prometheus-flask-exporter.

Each variant serves ``GET /users/42`` from a hello-world Flask app (route ``/users/<int:uid>``)
in-process, with no server or sockets: ``app(environ, start_response)``, then the body is
iterated and closed as a WSGI server does (Sightline records a request on close). Variants are
entries in :data:`VARIANTS`: ``bare`` (plain Flask, the baseline), ``pfe`` (prometheus-flask-
exporter's ``PrometheusMetrics`` with its defaults, a private registry and no ``/metrics``
route) and ``sightline`` (``sightline.init()``, metrics only, no metrics server).

Each run is a fresh subprocess that warms up, then times ``--requests`` requests with
``time.perf_counter_ns``. Rounds run the variants in rotating order. The report gives each
variant's median µs/request and spread, the cost it adds over ``bare`` (median of per-round
differences) and that cost relative to prometheus-flask-exporter's::

    python benchmarks/overhead.py                 # 12 rounds x 20000 requests
    python benchmarks/overhead.py --rounds 5 --requests 5000 --json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from importlib.metadata import version
from typing import Any

from flask import Flask
from prometheus_client import CollectorRegistry
from werkzeug.test import EnvironBuilder

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
Probe = Callable[[], float]
#: A setup builds the app to call and, for instrumented variants, a count of recorded requests.
Setup = Callable[[], tuple[WSGIApp, Probe | None]]

BASELINE = "bare"
REFERENCE = "pfe"
#: Sightline's target: add at most this fraction of what prometheus-flask-exporter adds.
TARGET_RATIO = 0.25
LIBRARIES = ("flask", "werkzeug", "prometheus-client", "prometheus-flask-exporter", "sightline")


def hello_app() -> Flask:
    app = Flask("bench")

    @app.route("/users/<int:uid>")
    def user(uid: int) -> str:
        return f"hello {uid}"

    return app


def samples(registry: CollectorRegistry, name: str) -> Probe:
    return lambda: sum(s.value for m in registry.collect() for s in m.samples if s.name == name)


def setup_bare() -> tuple[WSGIApp, Probe | None]:
    return hello_app(), None


def setup_pfe() -> tuple[WSGIApp, Probe | None]:
    from prometheus_flask_exporter import PrometheusMetrics

    registry, app = CollectorRegistry(), hello_app()
    PrometheusMetrics(app, path=None, registry=registry)  # path=None: no /metrics route
    return app, samples(registry, "flask_http_request_total")


def setup_sightline() -> tuple[WSGIApp, Probe | None]:
    import sightline

    registry = CollectorRegistry()
    sightline.init(service="bench", registry=registry, metrics_addr="off", traces=False, logs=False)
    return hello_app(), samples(registry, "http_server_request_duration_seconds_count")


VARIANTS: dict[str, Setup] = {
    "bare": setup_bare,
    "pfe": setup_pfe,
    "sightline": setup_sightline,
}


def worker(variant: str, requests: int, warmup: int) -> float:
    """Set up one variant, warm up, time ``requests`` requests, then check what was served."""
    app, recorded = VARIANTS[variant]()
    template = EnvironBuilder(path="/users/42", method="GET").get_environ()
    statuses: list[str] = []

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Callable[..., Any]:
        statuses.append(status)
        return statuses.append  # the write() callable, which Flask never calls

    def run(n: int) -> bytes:
        content = b""
        for _ in range(n):
            body = app(dict(template), start_response)
            content = b"".join(body)
            close = getattr(body, "close", None)
            if close is not None:
                close()
        return content

    content = run(1)
    run(warmup)
    statuses.clear()
    gc.collect()
    start = time.perf_counter_ns()
    run(requests)
    elapsed = time.perf_counter_ns() - start
    count = recorded() if recorded is not None else 1 + warmup + requests
    if content != b"hello 42" or set(statuses) != {"200 OK"} or count != 1 + warmup + requests:
        raise SystemExit(f"{variant}: got {set(statuses)} {content!r}, {count} recorded")
    return elapsed / requests / 1000


def measure(variant: str, requests: int, warmup: int) -> float:
    """µs/request of one fresh worker process."""
    command = [sys.executable, __file__, "--worker", variant]
    command += ["--requests", str(requests), "--warmup", str(warmup)]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True)  # stderr passes through
    if done.returncode:
        raise SystemExit(f"{variant} worker failed (exit status {done.returncode})")
    return float(json.loads(done.stdout)["us_per_request"])


def spread(values: list[float]) -> dict[str, Any]:
    q1, _, q3 = statistics.quantiles(values, n=4) if len(values) > 1 else values * 3
    return {"median": statistics.median(values), "q1": q1, "q3": q3, "values": values}


def summarize(times: dict[str, list[float]]) -> dict[str, Any]:
    base = times[BASELINE]
    added = {name: [v - b for v, b in zip(t, base, strict=True)] for name, t in times.items()}
    ref = statistics.median(added[REFERENCE]) if REFERENCE in added else 0.0
    variants: dict[str, Any] = {}
    for name, t in times.items():
        variants[name] = {"us_per_request": spread(t), "added_us": spread(added[name])}
        ratio = variants[name]["added_us"]["median"] / ref if name != BASELINE and ref else None
        variants[name]["vs_reference"] = ratio
    return variants


def run_rounds(names: list[str], rounds: int, requests: int, warmup: int) -> dict[str, Any]:
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(measure(name, requests, warmup))
        done = "  ".join(f"{name} {times[name][-1]:.2f}" for name in names)
        print(f"round {r + 1}/{rounds}: {done}", file=sys.stderr)
    variants = summarize(times)
    ratio = variants.get("sightline", {}).get("vs_reference")
    return {
        "python": platform.python_version(),
        "machine": f"{os.cpu_count()} CPUs, {platform.machine()}, {platform.platform()}",
        "versions": {lib: version(lib) for lib in LIBRARIES},
        "config": {"rounds": rounds, "requests": requests, "warmup": warmup},
        "variants": variants,
        "sightline_vs_pfe": ratio,
        "target": TARGET_RATIO,
        "meets_target": ratio is not None and ratio <= TARGET_RATIO,
    }


def table(report: dict[str, Any]) -> str:
    config, versions = report["config"], report["versions"]
    lines = [
        f"Python {report['python']} ({report['machine']})",
        ", ".join(f"{lib} {v}" for lib, v in versions.items()),
        f"{config['rounds']} rounds x {config['requests']} requests, GET /users/42, us/request",
        "",
        f"| variant   | median | min-max       | added (median) | added IQR     | vs {REFERENCE} |",
        "|-----------|-------:|---------------|---------------:|---------------|-------:|",
    ]
    for name, v in report["variants"].items():
        t, a = v["us_per_request"], v["added_us"]
        vs = "-" if v["vs_reference"] is None else f"{v['vs_reference']:.2f}x"
        lines.append(
            f"| {name:<9} | {t['median']:6.2f} | {min(t['values']):6.2f}-{max(t['values']):<6.2f} "
            f"| {a['median']:+14.2f} | {a['q1']:+6.2f}-{a['q3']:<+6.2f} | {vs:>6} |"
        )
    if report["sightline_vs_pfe"] is not None:
        verdict = "meets" if report["meets_target"] else "misses"
        lines.append(
            f"\nSightline adds {report['sightline_vs_pfe']:.2f}x of what prometheus-flask-exporter"
            f" adds (target: at most {TARGET_RATIO}x; {verdict} the target)."
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--requests", type=int, default=20000, help="timed requests per run")
    parser.add_argument("--warmup", type=int, default=2000)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--worker", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps({"us_per_request": worker(args.worker, args.requests, args.warmup)}))
        return
    names = list(dict.fromkeys([BASELINE, *args.variants]))
    report = run_rounds(names, args.rounds, args.requests, args.warmup)
    print(json.dumps(report, indent=2) if args.json else table(report))


if __name__ == "__main__":
    main()
