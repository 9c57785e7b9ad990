"""What one instance of an instrumented service asks of Prometheus, Loki and Tempo,
measured on the demo, and what Prometheus spends per series.

The demo's processes run as ``sightline demo`` starts them (the native stack's
Prometheus, Alertmanager and Redis; the shop under gunicorn, 4 workers; its Celery worker;
the load generator, 10 requests/s with bursts of 70 for 15 s of every 60 s), except that
their traces and logs go to a receiver standing in for the Collector and Loki, which
counts, per service, items and the HTTP body bytes as sent (OTLP protobuf and Loki JSON,
gzipped) and decompressed. Over a window after a warm-up (``--window`` a multiple of the
load's 60 s cycle, so that every rate covers the same share of bursts) the benchmark
reads:

- from the shop's own ``/metrics``: series (per route, and those no route has), bytes
  per scrape, plain and gzipped;
- from Prometheus, at the window's end: requests and tasks per second over the window,
  and the scrape interval; then samples per scrape of the shop and the worker from their
  first scrapes after the shop's ``/metrics`` was read (so they compare with its series);
- from the receiver: spans and log lines per second of each service, and their bytes.

Then what a series costs Prometheus, which one demo's thousand-odd series cannot show
(the server's own footprint dominates): this machine's Prometheus scrapes the shop's
endpoint as 1 target, then as ``--targets`` targets (each with its own ``replica``
label, so ``--targets`` times the series). Once every target's series are in its head,
it runs ``--settle`` seconds more; the difference in resident memory, divided by the
difference in head series, is bytes per series (one reading each, of a young head).

    python benchmarks/fleet.py                    # about 7 minutes
    python benchmarks/fleet.py --json

A run that fails keeps its directory (logs of every process) and names it.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from suites.common import free_port

#: Components the demo runs here without; the receiver stands where two of them would be.
WITHOUT = ("loki", "tempo", "collector", "grafana")
#: Series Prometheus adds to each target it scrapes (up, scrape_duration_seconds, ...).
SYNTHETIC_SERIES = 5


class CountingSink:
    """Answers OTLP/HTTP and Loki pushes with 200 and counts, per path and service,
    requests, items (spans decoded from protobuf, log lines from Loki's JSON), body bytes
    as sent and decompressed. A body it cannot read is answered 400 and counted."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: dict[str, dict[str, int]] = {}
        self.errors = 0
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = self.headers.get("Content-Length")
                body = self.rfile.read(int(length)) if length else b""
                try:
                    sink.add(self.path, self.headers.get("Content-Encoding", ""), body)
                    status = 200
                except Exception:
                    with sink.lock:
                        sink.errors += 1
                    status = 400
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, path: str, encoding: str, body: bytes) -> None:
        plain = gzip.decompress(body) if encoding == "gzip" else body
        found: dict[str, int] = {}  # service -> items
        if path == "/v1/traces":
            from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
                ExportTraceServiceRequest,
            )

            for resource in ExportTraceServiceRequest.FromString(plain).resource_spans:
                service = next(
                    (a.value.string_value for a in resource.resource.attributes
                     if a.key == "service.name"), "?",
                )  # fmt: skip
                spans = sum(len(scope.spans) for scope in resource.scope_spans)
                found[service] = found.get(service, 0) + spans
        elif path == "/loki/api/v1/push":
            for stream in json.loads(plain)["streams"]:
                service = stream["stream"].get("service_name", "?")
                found[service] = found.get(service, 0) + len(stream["values"])
        else:
            raise ValueError(f"not a push path: {path}")
        if len(found) != 1:
            raise ValueError(f"one request for {len(found)} services")  # one process each
        ((service, items),) = found.items()
        with self.lock:
            entry = self.counts.setdefault(
                f"{path} {service}", {"requests": 0, "items": 0, "bytes": 0, "plain_bytes": 0}
            )
            entry["requests"] += 1
            entry["items"] += items
            entry["bytes"] += len(body)
            entry["plain_bytes"] += len(plain)

    def snapshot(self) -> dict[str, dict[str, int]]:
        with self.lock:
            return {key: dict(entry) for key, entry in self.counts.items()}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def query(prometheus: str, promql: str, at: float | None = None) -> list[dict[str, Any]]:
    params = {"query": promql, **({"time": f"{at:.3f}"} if at is not None else {})}
    url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode(params)
    with urllib.request.urlopen(url, timeout=10) as response:
        payload = json.load(response)
    if payload["status"] != "success":
        raise SystemExit(f"Prometheus refused {promql}: {payload}")
    result: list[dict[str, Any]] = payload["data"]["result"]
    return result


def scalar(prometheus: str, promql: str, at: float | None = None) -> float:
    result = query(prometheus, promql, at)
    if len(result) != 1:
        raise SystemExit(f"expected one series from {promql}, got {result}")
    return float(result[0]["value"][1])


def fetch(url: str, gzipped: bool) -> bytes:
    headers = {"Accept-Encoding": "gzip"} if gzipped else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
        body: bytes = r.read()
        return body


@contextlib.contextmanager
def demo(directory: Path, otlp: str, loki: str) -> Iterator[Any]:
    """The native stack (``sightline stack up``) and the demo's shop, worker and load,
    started with ``sightline demo``'s commands and environment but sending traces to
    ``otlp`` and logs to ``loki`` (``sightline demo`` turns both off where no Collector or
    Loki runs); everything stopped on exit, SIGTERM included (see ``main``)."""
    from sightline_appliance.demo.run import environment
    from sightline_appliance.stack import Stack, check_ports, python_command
    from sightline_appliance.stack.native import DEMO_TARGETS

    stack = Stack(directory, without=WITHOUT)
    try:
        lines: list[str] = []
        stack.up(lines.append)
        if "prometheus" not in stack.running() or "redis" not in stack.running():
            raise SystemExit("the demo needs Prometheus and Redis here:\n" + "\n".join(lines))
        native = stack.native()
        targets = directory / "targets"
        targets.mkdir(parents=True, exist_ok=True)
        (targets / DEMO_TARGETS).write_text(native.demo_targets())
        for service in ("demo-app", "demo-worker", "demo-load"):
            check_ports(native, service)
            if service == "demo-load":
                wait_ready(native.url("demo-app", 8000, "/health"), 60, stack.records["demo-app"])
            env = environment(stack, service)
            if service != "demo-load":
                env.update(OTEL_EXPORTER_OTLP_ENDPOINT=otlp, SIGHTLINE_LOKI_URL=loki)
                env.pop("SIGHTLINE_TRACES", None)
            stack.start_process(service, python_command(native.command(service)), env)
        yield stack
    finally:
        stack.down(out=lambda line: None)


def wait_ready(url: str, timeout: float, record: Any) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not record.alive():
            raise SystemExit(f"{record.name} exited before {url} answered (see {record.log})")
        with contextlib.suppress(OSError):
            urllib.request.urlopen(url, timeout=2).close()
            return
        time.sleep(1)
    raise SystemExit(f"{url} did not answer within {timeout:.0f} s")


def measure_demo(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    otlp, loki = CountingSink(), CountingSink()
    try:
        with demo(work / "stack", otlp.url, loki.url) as stack:
            native = stack.native()
            prometheus = native.url("prometheus", 9090)
            app_metrics = native.url("demo-app", 9464, "/metrics")
            wait_ready(app_metrics, 60, stack.records["demo-app"])
            time.sleep(args.warmup)
            before = {**otlp.snapshot(), **loki.snapshot()}
            started = time.monotonic()
            time.sleep(args.window)
            after = {**otlp.snapshot(), **loki.snapshot()}
            elapsed, end = time.monotonic() - started, time.time()
            result = read_prometheus(prometheus, round(elapsed), end)
            plain, zipped = fetch(app_metrics, False), fetch(app_metrics, True)
            fetched = time.time()  # a scrape begun later shows every series it showed
            result.update(read_exposition(plain.decode(), len(zipped)))
            result.update(samples_per_scrape(prometheus, fetched, result["scrape_interval_s"]))
            result["received"] = received(before, after, elapsed)
            result["receiver_errors"] = otlp.errors + loki.errors
            if result["receiver_errors"]:
                raise SystemExit(f"the receiver could not read {result['receiver_errors']} bodies")
            dead = [name for name, record in stack.records.items() if not record.alive()]
            if dead:
                raise SystemExit(f"exited during the measurement: {', '.join(dead)}")
            result["prometheus_per_series"] = per_series(
                app_metrics, args.targets, args.settle, result["shop_series"], work
            )
            return result
    finally:
        otlp.close()
        loki.close()


def received(
    before: dict[str, dict[str, int]], after: dict[str, dict[str, int]], elapsed: float
) -> dict[str, dict[str, float]]:
    """Per ``signal service``: items, body bytes and decompressed bytes per second."""
    names = {"/v1/traces": "spans", "/loki/api/v1/push": "logs"}
    found = {}
    for key, now in after.items():
        path, _, service = key.partition(" ")
        then = before.get(key, {})
        found[f"{names[path]} {service}"] = {
            field: (now[field] - then.get(field, 0)) / elapsed
            for field in ("requests", "items", "bytes", "plain_bytes")
        }
    return found


def read_prometheus(prometheus: str, seconds: int, end: float) -> dict[str, Any]:
    shop, worker, window = 'job="shop"', 'job="shop-worker"', f"[{seconds}s]"
    return {
        "requests_per_s": scalar(
            prometheus,
            f"sum(rate(http_server_request_duration_seconds_count{{{shop}}}{window}))",
            end,
        ),
        "tasks_per_s": scalar(
            prometheus,
            f"sum(rate(worker_task_duration_seconds_count{{{worker}}}{window}))",
            end,
        ),
        "scrape_interval_s": scrape_interval(prometheus),
    }


def samples_per_scrape(prometheus: str, after: float, interval: float) -> dict[str, float]:
    """Samples in the shop's and the worker's scrapes, from the first scrape of each that
    began after ``after`` (when the exposition was read): the demo's series only grow, so
    these count at least the series that exposition showed, and compare with it."""
    found: dict[str, float] = {}
    wait = 4 * interval + 10
    deadline = time.monotonic() + wait
    for job, key in (("shop", "shop"), ("shop-worker", "worker")):
        selector = f'scrape_samples_scraped{{job="{job}"}}'
        while True:
            if scalar(prometheus, f"min(timestamp({selector}))") > after:
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"Prometheus did not scrape {job} again within {wait:.0f} s")
            time.sleep(0.5)
        found[f"{key}_samples_per_scrape"] = scalar(prometheus, f"sum({selector})")
    return found


def scrape_interval(prometheus: str) -> float:
    """The scrape interval the stack's Prometheus runs with (its config's global one)."""
    with urllib.request.urlopen(f"{prometheus}/api/v1/status/config", timeout=10) as response:
        text = json.load(response)["data"]["yaml"]
    for line in text.splitlines():
        key, _, value = line.strip().partition(":")
        if key == "scrape_interval":
            return duration_seconds(value.strip())
    raise SystemExit("no scrape_interval in Prometheus' config")


def duration_seconds(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    for unit in ("ms", "s", "m", "h"):
        if text.endswith(unit) and text[: -len(unit)].isdigit():
            return int(text[: -len(unit)]) * units[unit]
    raise SystemExit(f"not a duration: {text!r}")


def read_exposition(text: str, gzipped: int) -> dict[str, Any]:
    """Series by route, and those without one, of the shop's merged ``/metrics``."""
    by_route: dict[str, int] = {}
    unrouted = total = 0
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        total += 1
        labels = line.partition("{")[2].partition("}")[0]
        route = None
        for pair in labels.split('",'):
            key, _, value = pair.partition("=")
            if key.strip() == "http_route":
                route = value.strip('"')
        if route is None:
            unrouted += 1
        else:
            by_route[route] = by_route.get(route, 0) + 1
    return {
        "shop_series": total,
        "shop_series_without_route": unrouted,
        "shop_routes": len(by_route),
        "shop_series_per_route": by_route,
        "shop_scrape_bytes": len(text.encode()),
        "shop_scrape_bytes_gzip": gzipped,
    }


def per_series(
    target: str, targets: int, settle: float, per_target: int, work: Path
) -> dict[str, Any]:
    """Resident memory per head series of this machine's Prometheus, from scraping
    ``target`` (``per_target`` series) once and then ``targets`` times."""
    exe = shutil.which("prometheus")
    if exe is None:
        raise SystemExit("prometheus is not installed (apt-get install prometheus)")
    address = target.removeprefix("http://").partition("/")[0]
    readings: dict[int, dict[str, float]] = {}
    for count in (1, targets):
        port = free_port()
        config = work / f"prometheus-{count}.yml"
        groups = "".join(
            f"      - targets: ['{address}']\n        labels: {{replica: '{i}'}}\n"
            for i in range(count)
        )
        config.write_text(
            "global:\n  scrape_interval: 5s\nscrape_configs:\n  - job_name: shop\n"
            "    static_configs:\n" + groups
        )
        argv = [exe, f"--config.file={config}", f"--storage.tsdb.path={work / f'tsdb-{count}'}"]
        argv.append(f"--web.listen-address=127.0.0.1:{port}")
        log = open(work / f"prometheus-{count}.log", "w")  # noqa: SIM115
        proc = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)
        try:
            url = f"http://127.0.0.1:{port}"
            # Every target scraped (its series in the head), then the settle time.
            wanted = 0.95 * count * (per_target + SYNTHETIC_SERIES)
            deadline = time.monotonic() + 90
            head = 0.0
            while head < wanted:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"Prometheus of {count} targets: {head:.0f} series, "
                                     f"not {wanted:.0f} (see {log.name})")  # fmt: skip
                time.sleep(1)
                with contextlib.suppress(OSError, SystemExit):
                    head = own_metric(url, "prometheus_tsdb_head_series")
            time.sleep(settle)
            readings[count] = {
                "head_series": own_metric(url, "prometheus_tsdb_head_series"),
                # It scrapes only the shop, not itself: its memory from the OS.
                "resident_bytes": float(psutil_rss(proc.pid)),
            }
        finally:
            stop(proc)
            log.close()
    one, many = readings[1], readings[targets]
    return {
        "targets": targets,
        "settle_s": settle,
        "readings": readings,
        "bytes_per_series": (many["resident_bytes"] - one["resident_bytes"])
        / (many["head_series"] - one["head_series"]),
    }


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def own_metric(url: str, name: str) -> float:
    """A sample of Prometheus' own /metrics page (it does not scrape itself here)."""
    for line in fetch(f"{url}/metrics", False).decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise SystemExit(f"{url}/metrics has no {name}")


def psutil_rss(pid: int) -> int:
    import psutil

    return int(psutil.Process(pid).memory_info().rss)


def per_hundred(result: dict[str, Any]) -> dict[str, dict[str, float]]:
    """What the receiver got from each service, per 100 of the shop's requests/s."""
    scale = 100 / result["requests_per_s"]
    return {
        key: {field: value * scale for field, value in rates.items()}
        for key, rates in result["received"].items()
    }


def machine() -> dict[str, Any]:
    prometheus = shutil.which("prometheus")
    version = ""
    if prometheus:
        out = subprocess.run([prometheus, "--version"], capture_output=True, text=True)
        version = (out.stdout + out.stderr).split("\n", 1)[0]
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "prometheus": version,
    }


def markdown(result: dict[str, Any]) -> str:
    interval = result["scrape_interval_s"]
    per_route = sorted(result["shop_series_per_route"].values())
    lines = [
        f"Measured on the demo over {result['window_s']:.0f} s ({result['requests_per_s']:.1f} "
        f"requests/s, {result['tasks_per_s']:.1f} tasks/s); {result['machine']}",
        "",
        "| Quantity | Value |",
        "|---|---|",
        f"| shop series (4 workers merged), without a route | {result['shop_series']}, "
        f"{result['shop_series_without_route']} |",
        f"| routes; series per route (min-median-max) | {result['shop_routes']}; "
        f"{per_route[0]}-{per_route[len(per_route) // 2]}-{per_route[-1]} |",
        f"| bytes per scrape, plain / gzip | {result['shop_scrape_bytes']} / "
        f"{result['shop_scrape_bytes_gzip']} |",
        f"| samples per scrape, shop / worker ({interval:g} s interval) | "
        f"{result['shop_samples_per_scrape']:.0f} / {result['worker_samples_per_scrape']:.0f} |",
    ]
    for key, rates in sorted(per_hundred(result).items()):
        lines.append(
            f"| {key}, per 100 shop requests/s: items/s, bytes/s (gzip; plain) | "
            f"{rates['items']:.0f}, {rates['bytes']:.0f} ({rates['plain_bytes']:.0f}) |"
        )
    cost = result["prometheus_per_series"]
    lines.append(
        f"| Prometheus resident bytes per head series ({cost['targets']} targets) | "
        f"{cost['bytes_per_series']:.0f} |"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warmup", type=float, default=90, help="seconds before the window")
    parser.add_argument(
        "--window", type=float, default=120, help="seconds measured (a multiple of 60)"
    )
    parser.add_argument("--targets", type=int, default=40, help="targets for bytes/series")
    parser.add_argument("--settle", type=float, default=60, help="seconds per Prometheus run")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.targets < 2:
        parser.error("--targets must be at least 2")

    def terminate(signum: int, frame: Any) -> None:
        raise SystemExit(f"stopped by signal {signum}")

    signal.signal(signal.SIGTERM, terminate)  # cleaned up as on any other exit
    work = Path(tempfile.mkdtemp(prefix="sightline-fleet-"))
    try:
        result = measure_demo(args, work)
    except BaseException:
        print(f"fleet: the run failed; its processes' logs are in {work}", file=sys.stderr)
        raise
    shutil.rmtree(work, ignore_errors=True)
    result["window_s"] = args.window
    result["machine"] = machine()
    result["per_100_requests_per_s"] = per_hundred(result)
    print(json.dumps(result, indent=2) if args.json else markdown(result))


if __name__ == "__main__":
    main()
