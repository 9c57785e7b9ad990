"""Per-request cost Sightline adds to a Flask, FastAPI or Django app, beside the stacks it replaces.

Each variant serves ``GET /users/42`` from a hello-world app in-process, with no server or
sockets. A WSGI app (Flask, route ``/users/<int:uid>``; Django) is called as
``app(environ, start_response)``, then the body is iterated and closed as a WSGI server does
(Sightline records a request on close); an ASGI app (FastAPI) is awaited as
``app(scope, receive, send)`` with a scope built by hand, one request after another in one
event loop per batch. Variants are entries in each suite module's ``VARIANTS`` (in
``suites/``), grouped into the suites of :data:`SUITES`:

``metrics``
    ``bare`` (plain Flask, the baseline), ``pfe`` (prometheus-flask-exporter's
    ``PrometheusMetrics`` with its defaults, a private registry and no ``/metrics`` route),
    ``floor`` (a minimal WSGI recorder in Python: a request timed until its body is
    closed, into one histogram by status; a reference, not a product) and ``sightline``
    (``sightline.init()``, metrics only, no metrics server).
``full``
    Metrics, traces and one JSON log line per request. The view logs ``served user`` with
    ``extra={"uid": uid}`` in every variant: ``bare_log`` (plain Flask, the line through a plain
    formatter; the baseline), ``incumbent`` (OpenTelemetry's Flask instrumentation and SDK with
    a batch processor and the OTLP/HTTP exporter, prometheus-flask-exporter, python-json-logger
    with a trace-id filter), ``sightline_full`` (``sightline.init()`` with traces and logs) and
    both again sampling 10% of traces (``incumbent_10pct``, ``sightline_10pct``), and
    ``sightline_served``: ``sightline_full`` with its background ``/metrics`` server running,
    as it does by default. Spans go to a loopback OTLP/HTTP sink in the worker process, so
    export runs in a background thread of the process being timed, as in production; the
    worker flushes after timing and checks what the sink received.
``fastapi``
    The ``full`` suite's comparison, traces always on, for a FastAPI app (route
    ``/users/{uid}``, an ``async def`` endpoint that logs the same line and answers plain
    text): ``fastapi_bare`` (plain FastAPI, the line through a plain formatter; the baseline),
    ``fastapi_incumbent`` (OpenTelemetry's FastAPI instrumentation with the SDK and exporter as
    in ``incumbent``, prometheus-fastapi-instrumentator's defaults with a private registry and
    no ``/metrics`` route, python-json-logger with the trace-id filter) and
    ``fastapi_sightline`` (as ``sightline_full``).
``django``
    The same for a minimal Django project configured in-process (no database, no middleware
    of its own, ``users/<int:uid>/`` in an included URLconf; the request is
    ``GET /users/42/``), through Django's WSGI handler: ``django_bare``, ``django_incumbent``
    (OpenTelemetry's Django instrumentation, django-prometheus's two middlewares,
    python-json-logger) and ``django_sightline``.
``paced``
    The ``full`` suite's stacks at equal delivered work: requests come at 1,000 a second
    in batches of 50 with the process idle between them, every span must reach the sink
    (a process of its own), and the cost is the CPU time of all the process's threads
    until the final flush is done: ``paced_bare``, ``paced_incumbent``,
    ``paced_incumbent_10pct``, ``paced_sightline``, ``paced_sightline_10pct``, and
    ``paced_sightline_loki`` (also shipping every log line to Loki's push API).
``log``
    One ``logger.info`` call with trace ids rendered to JSON, inside a recording span, in a
    tight loop: Sightline's record factory and formatter (``log_sightline``) against
    python-json-logger with a trace-id filter (``log_jsonlogger``).
``celery``
    Per task of a Celery app on the in-memory broker (``memory://``) whose one task logs the
    same line: publishing it (``apply_async``, the message going to the broker, which is
    purged between chunks of :data:`TASK_CHUNK` tasks) and running it (``task.apply()``:
    Celery's tracer with the task signals both stacks hook, in-process). ``celery_bare`` (the
    line through a plain formatter; the baseline), ``celery_incumbent`` (OpenTelemetry's
    Celery instrumentation with the SDK and exporter as in ``incumbent``, python-json-logger
    with the trace-id filter), ``celery_sightline`` (as ``sightline_full``), and
    ``celery_signals`` (``celery_bare`` with a receiver on each signal the incumbent hooks,
    doing no more than count tasks: what Celery's dispatch costs alone; a reference, not a
    product).
``rq``
    The same for RQ on fakeredis (Redis in the worker process): ``queue.enqueue()``, then
    the jobs run one after another as RQ's worker loop runs them, without forking
    (``perform_job``, what a work horse runs). ``rq_bare`` and ``rq_sightline``; there is no
    OpenTelemetry instrumentation for RQ, so Sightline's added cost is given in µs against
    :data:`RQ_BOUND_US`, and as a share of a bare job.

``sqlalchemy``
    One ``SELECT`` through a SQLAlchemy connection on an in-memory SQLite database, what an
    app's query costs on the client side with no network: ``sqla_bare``, ``sqla_incumbent``
    (OpenTelemetry's SQLAlchemy instrumentation, a span per statement, with the SDK and
    exporter as in ``incumbent``) and ``sqla_sightline`` (``sightline.init()``: the
    statement's duration histogram and the pool's wait).
``redis``
    One ``GET`` through redis-py on an in-process Redis (fakeredis): ``redis_bare``,
    ``redis_incumbent`` (OpenTelemetry's Redis instrumentation, SDK and exporter as above)
    and ``redis_sightline`` (the command's histogram and the cache hit counter).
``psycopg``
    One ``SELECT`` by primary key through a psycopg 3 connection (autocommit) to
    PostgreSQL on loopback: ``pg_bare``, ``pg_incumbent`` (OpenTelemetry's psycopg
    instrumentation) and ``pg_sightline``. The server is the one ``BENCH_POSTGRES`` names,
    else a throwaway one started from Debian's package for the run.
``django_orm``
    ``Item.objects.get(pk=42).name`` through Django's ORM on a SQLite file: ``orm_bare``,
    ``orm_incumbent`` (OpenTelemetry's sqlite3 instrumentation, which traces the ORM's
    statements on SQLite; its Django instrumentation traces requests only) and
    ``orm_sightline``.
``http_client``, ``httpx``, ``urllib3``, ``aiohttp``
    One GET over a kept-alive connection to a loopback HTTP server in another process,
    through requests, a synchronous httpx ``Client``, a urllib3 ``PoolManager`` or an
    aiohttp ``ClientSession``: ``<client>_bare``, ``<client>_incumbent`` (OpenTelemetry's
    instrumentation for that client) and ``<client>_sightline`` (the request's histogram);
    the requests suite's variants are ``http_*``.

Each run is a fresh subprocess that checks its variant works, warms up, then times
``--requests`` requests (log calls in the ``log`` suite, tasks in ``celery`` and ``rq``) with
``time.perf_counter_ns``. Rounds run a suite's variants in rotating order. The report gives
each variant's median µs and spread, the cost it adds over the suite's baseline (median of
per-round differences) and that cost relative to the stack it is compared with::

    python benchmarks/overhead.py                       # every suite, about 5 minutes
    python benchmarks/overhead.py --suite metrics       # 12 rounds x 20000 requests
    python benchmarks/overhead.py --suite fastapi       # 8 rounds x 3000 requests
    python benchmarks/overhead.py --suite paced         # 8 rounds x 4000 requests, 1000/s
    python benchmarks/overhead.py --suite full --rounds 5 --requests 2000 --json
    python benchmarks/overhead.py --suite celery        # 8 rounds x 3000 tasks
    python benchmarks/overhead.py --suite rq            # 8 rounds x 1000 jobs
    python benchmarks/overhead.py --suite sqlalchemy    # 10 rounds x 20000 queries
    python benchmarks/overhead.py --suite redis         # 10 rounds x 20000 commands
    python benchmarks/overhead.py --suite psycopg       # 10 rounds x 5000 statements
    python benchmarks/overhead.py --suite django_orm    # 10 rounds x 10000 statements
    python benchmarks/overhead.py --suite http_client   # 10 rounds x 5000 requests
    python benchmarks/overhead.py --suite aiohttp       # the same for httpx, urllib3
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Callable
from importlib.metadata import version
from typing import Any

from suites import deps, logs, paced, tasks, web
from suites.common import Suite

MODULES = (web, paced, logs, tasks, deps)
SUITES: dict[str, Suite] = {
    name: suite for module in MODULES for name, suite in module.SUITES.items()
}


def measure(name: str, requests: int, warmup: int) -> dict[str, Any]:
    """One fresh worker process: µs per request (or log call), and spans it exported."""
    command = [sys.executable, __file__, "--worker", name]
    command += ["--requests", str(requests), "--warmup", str(warmup)]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True)  # stderr passes through
    if done.returncode:
        raise SystemExit(f"{name} worker failed (exit status {done.returncode})")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def spread(values: list[float]) -> dict[str, Any]:
    q1, _, q3 = statistics.quantiles(values, n=4) if len(values) > 1 else values * 3
    return {"median": statistics.median(values), "q1": q1, "q3": q3, "values": values}


def summarize(suite: Suite, times: dict[str, list[float]]) -> dict[str, Any]:
    """Per variant: times, added cost over the baseline, and ratio to its reference."""
    variants: dict[str, Any] = {}
    for name, t in times.items():
        base = times[suite.baseline] if suite.baseline is not None else [0.0] * len(t)
        added = [v - b for v, b in zip(t, base, strict=True)]
        variants[name] = {"us_per_request": spread(t), "added_us": spread(added)}
    for name, entry in variants.items():
        reference = suite.references.get(name)
        ratio = None
        if name != suite.baseline and reference in variants:
            if reference == suite.baseline:  # no stack to compare with: a share of its cost
                ref = variants[reference]["us_per_request"]["median"]
            else:
                ref = variants[reference]["added_us"]["median"]
            ratio = entry["added_us"]["median"] / ref if ref else None
        entry["vs_reference"] = ratio
    return variants


def compare(suite: Suite, variants: dict[str, Any]) -> list[dict[str, Any]]:
    comparisons = []
    for name, target in suite.targets.items():
        if name not in variants or suite.references[name] not in variants:
            continue
        ratio = variants[name]["vs_reference"]
        meets = ratio is not None and (ratio < target if suite.strict else ratio <= target)
        comparisons.append(
            {
                "variant": name,
                "reference": suite.references[name],
                "ratio": ratio,
                "target": target,
                "strict": suite.strict,
                "meets_target": meets,
            }
        )
    for name, bound in suite.bounds_us.items():
        if name in variants:
            added = variants[name]["added_us"]["median"]
            comparisons.append(
                {
                    "variant": name,
                    "reference": suite.references[name],
                    "ratio": variants[name]["vs_reference"],
                    "added_us": added,
                    "bound_us": bound,
                    "meets_target": added <= bound,
                }
            )
    return comparisons


def run_rounds(
    suite_name: str, names: list[str], rounds: int, requests: int, warmup: int
) -> dict[str, Any]:
    suite = SUITES[suite_name]
    times: dict[str, list[float]] = {name: [] for name in names}
    shares: dict[str, list[float]] = {name: [] for name in names}
    phases: dict[str, dict[str, list[float]]] = {}  # operation -> variant -> µs, per round
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            result = measure(name, requests, warmup)
            times[name].append(result["us_per_request"])
            if "spans_share" in result:
                shares[name].append(result["spans_share"])
            for phase, us in result.get("phases", {}).items():
                phases.setdefault(phase, {n: [] for n in names})[name].append(us)
        done = "  ".join(f"{name} {times[name][-1]:.2f}" for name in names)
        print(f"{suite_name} round {r + 1}/{rounds}: {done}", file=sys.stderr)
    variants = summarize(suite, times)
    for name, share in shares.items():
        if share:  # spans the sink received, per request served
            variants[name]["spans_exported"] = spread(share)
    comparisons = compare(suite, variants)
    report: dict[str, Any] = {
        "suite": suite_name,
        "title": suite.title,
        "python": platform.python_version(),
        "machine": f"{os.cpu_count()} CPUs, {platform.machine()}, {platform.platform()}",
        "versions": {lib: version(lib) for lib in (*suite.libraries, "sightline")},
        "config": {"rounds": rounds, "requests": requests, "warmup": warmup},
        "baseline": suite.baseline,
        "variants": variants,
        "comparisons": comparisons,
    }
    if phases:  # the operations a task's time is made of, each summarized as the whole
        report["phases"] = {phase: summarize(suite, t) for phase, t in phases.items()}
    if suite_name == "metrics":  # the fields this suite has always reported
        first = comparisons[0] if comparisons else {}
        report["sightline_vs_pfe"] = first.get("ratio")
        report["target"] = suite.targets["sightline"]
        report["meets_target"] = bool(first.get("meets_target"))
    return report


def markdown(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table, columns padded; every column but the first aligned right."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        padded = [
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (w + 1) + ("-" if i == 0 else ":") for i, w in enumerate(widths))
    return [line(header), rule + "|", *(line(row) for row in rows)]


def table(report: dict[str, Any]) -> str:
    suite = SUITES[report["suite"]]
    config, versions = report["config"], report["versions"]
    references = {r for n, r in suite.references.items() if n in report["variants"]}
    vs = f"vs {references.pop()}" if len(references) == 1 else "vs ref"
    what = f"{suite.unit}s, {suite.request}" if suite.request else f"{suite.unit}s"
    header = ["variant", "median", "min-max"]
    if suite.baseline is not None:
        header += ["added (median)", "added IQR"]
    else:
        header += ["IQR"]
    spans = any("spans_exported" in v for v in report["variants"].values())
    if spans:
        header += ["spans exported"]
    rows = []
    for name, v in report["variants"].items():
        t, a = v["us_per_request"], v["added_us"]
        row = [name, f"{t['median']:.2f}", f"{min(t['values']):.2f}-{max(t['values']):.2f}"]
        if suite.baseline is not None:
            row += [f"{a['median']:+.2f}", f"{a['q1']:+.2f} to {a['q3']:+.2f}"]
        else:
            row += [f"{t['q1']:.2f}-{t['q3']:.2f}"]
        if spans:
            share = v.get("spans_exported")
            row += ["-" if share is None else f"{share['median']:.0%}"]
        row += ["-" if v["vs_reference"] is None else f"{v['vs_reference']:.2f}x"]
        rows.append(row)
    lines = [
        report["title"],
        f"Python {report['python']} ({report['machine']})",
        ", ".join(f"{lib} {v}" for lib, v in versions.items()),
        f"{config['rounds']} rounds x {config['requests']} {what}, us/{suite.unit}",
        "",
        *markdown([*header, vs], rows),
    ]
    if spans:
        lines.append(
            f"(spans exported: share of {suite.unit}s whose spans the sink received, median)"
        )
    if "phases" in report:
        lines += ["", *phase_table(suite, report["phases"])]
    if report["comparisons"]:
        lines.append("")
    for c in report["comparisons"]:
        verdict = "meets" if c["meets_target"] else "misses"
        ratio = "n/a" if c["ratio"] is None else f"{c['ratio']:.2f}x"
        if "bound_us" in c:
            lines.append(
                f"{c['variant']} adds {c['added_us']:.1f} us per {suite.unit}, {ratio} of what "
                f"{c['reference']} costs (bound: at most {c['bound_us']:g} us; "
                f"{verdict} the bound)."
            )
            continue
        target = suite.target_text.get(c["variant"], f"{c['target']:.2f}x")
        if suite.baseline is not None:
            claim = f"{c['variant']} adds {ratio} of what {c['reference']} adds"
            target = f"at most {target}"
        else:
            claim = f"{c['variant']} costs {ratio} of what {c['reference']} costs"
        lines.append(f"{claim} (target: {target}; {verdict} the target).")
    return "\n".join(lines)


def phase_table(suite: Suite, phases: dict[str, dict[str, Any]]) -> list[str]:
    """Each operation of a task: median µs per variant, added over the baseline, and ratio."""
    names = list(next(iter(phases.values())))
    compared = [n for n in names if n != suite.baseline and suite.references.get(n) != n]
    header = ["operation", *names, *(f"{n} vs {suite.references[n]}" for n in compared)]
    rows = []
    for phase, variants in phases.items():
        row = [phase]
        for name in names:
            t, a = variants[name]["us_per_request"], variants[name]["added_us"]
            added = "" if name == suite.baseline else f" ({a['median']:+.2f})"
            row.append(f"{t['median']:.2f}{added}")
        for name in compared:
            ratio = variants[name]["vs_reference"]
            row.append("-" if ratio is None else f"{ratio:.2f}x")
        rows.append(row)
    added_over = f"; added over {suite.baseline} in parentheses" if suite.baseline else ""
    return [f"Per operation, us/{suite.unit} (medians{added_over}):", *markdown(header, rows)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--suite", choices=["all", *SUITES], default="all", help="which comparison to run"
    )
    parser.add_argument("--rounds", type=int, help="default: each suite's own (--list)")
    parser.add_argument(
        "--requests",
        type=int,
        help="timed requests (log calls, tasks, statements) per run; default: each suite's own",
    )
    parser.add_argument("--warmup", type=int, help="default: each suite's own")
    parser.add_argument(
        "--list", action="store_true", help="list the suites with their defaults, and stop"
    )
    every = [name for module in MODULES for name in module.VARIANTS]
    parser.add_argument(
        "--variants", nargs="+", choices=every, help="run only these (and baselines)"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--worker", choices=every, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        out = sys.stdout  # a variant may point sys.stdout elsewhere
        (module,) = (module for module in MODULES if args.worker in module.VARIANTS)
        run: Callable[[str, int, int], dict[str, Any]] = module.worker
        print(json.dumps(run(args.worker, args.requests, args.warmup)), file=out, flush=True)
        return
    if args.list:
        width = max(map(len, SUITES))
        for name, suite in SUITES.items():
            print(
                f"{name:{width}} {suite.rounds:3} rounds x {suite.requests:6} {suite.unit}s "
                f"(+{suite.warmup} warm-up)  {', '.join(suite.variants)}"
            )
        return
    reports = {}
    with contextlib.ExitStack() as servers:
        for name, suite in SUITES.items():
            if args.suite not in ("all", name):
                continue
            chosen = [v for v in suite.variants if args.variants is None or v in args.variants]
            if not chosen:
                continue
            if suite.baseline is not None:
                chosen = list(dict.fromkeys([suite.baseline, *chosen]))
            if suite.server is not None:
                servers.enter_context(suite.server())
            reports[name] = run_rounds(
                name,
                chosen,
                args.rounds or suite.rounds,
                args.requests or suite.requests,
                args.warmup if args.warmup is not None else suite.warmup,
            )
    if args.json:
        only = next(iter(reports.values())) if len(reports) == 1 else reports
        print(json.dumps(only, indent=2))
    else:
        print("\n\n".join(table(report) for report in reports.values()))


if __name__ == "__main__":
    main()
