"""What one instance of an instrumented service asks of Prometheus, Loki and Tempo,
measured on the demo, and what Prometheus spends per series.

The demo runs for real, as ``sightline demo`` runs it (the native stack's Prometheus,
Alertmanager and Redis; the shop under gunicorn, 4 workers; its Celery worker; the load
generator, 10 requests/s with bursts of 70), its traces and logs sent to a sink in place
of the Collector and Loki, which counts items and wire bytes (as sent: OTLP protobuf and
Loki JSON, gzipped). Over a window after a warm-up the benchmark reads:

- from the shop's own ``/metrics``: series (per route, and those no route has), bytes
  per scrape, plain and gzipped;
- from Prometheus: requests and tasks per second, samples per scrape, so samples per
  second at the stack's scrape interval;
- from the sink: spans and log lines per second, and their bytes.

Then what a series costs Prometheus, which one demo's few thousand series cannot show
(the server's own footprint dominates): a second Prometheus (this machine's) scrapes the
shop's endpoint as 1 target, then as ``--targets`` targets (each with its own
``replica`` label, so ``--targets`` times the series), for ``--settle`` seconds each, and
the difference in resident memory, divided by the difference in head series, is bytes
per series. Everything else per 100 requests/s is the measured rate scaled linearly.

    python benchmarks/fleet.py                    # about 6 minutes
    python benchmarks/fleet.py --json
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import shutil
import subprocess
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

#: Components the demo runs here; the sinks stand where the others would listen.
WITHOUT = ("loki", "tempo", "collector", "grafana")


class CountingSink:
    """Answers OTLP/HTTP and Loki pushes with 200; counts requests, wire bytes and items
    (spans decoded from protobuf, log lines from Loki's JSON) per path."""

    def __init__(self, port: int) -> None:
        self.lock = threading.Lock()
        self.counts: dict[str, dict[str, int]] = {}
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                sink.add(self.path, self.headers.get("Content-Encoding", ""), body)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, path: str, encoding: str, body: bytes) -> None:
        plain = gzip.decompress(body) if encoding == "gzip" else body
        items = 0
        if path == "/v1/traces":
            from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
                ExportTraceServiceRequest,
            )

            request = ExportTraceServiceRequest.FromString(plain)
            items = sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
        elif path == "/loki/api/v1/push":
            items = sum(len(stream["values"]) for stream in json.loads(plain)["streams"])
        with self.lock:
            entry = self.counts.setdefault(path, {"requests": 0, "bytes": 0, "items": 0})
            entry["requests"] += 1
            entry["bytes"] += len(body)
            entry["items"] += items

    def snapshot(self) -> dict[str, dict[str, int]]:
        with self.lock:
            return {path: dict(entry) for path, entry in self.counts.items()}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def query(prometheus: str, promql: str) -> list[dict[str, Any]]:
    url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=10) as response:
        payload = json.load(response)
    if payload["status"] != "success":
        raise SystemExit(f"Prometheus refused {promql}: {payload}")
    result: list[dict[str, Any]] = payload["data"]["result"]
    return result


def scalar(prometheus: str, promql: str) -> float:
    result = query(prometheus, promql)
    if len(result) != 1:
        raise SystemExit(f"expected one series from {promql}, got {result}")
    return float(result[0]["value"][1])


def fetch(url: str, gzipped: bool) -> bytes:
    headers = {"Accept-Encoding": "gzip"} if gzipped else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
        body: bytes = r.read()
        return body


def series_of(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


@contextlib.contextmanager
def demo(directory: Path, otlp: str, loki: str) -> Iterator[Any]:
    """The native stack (``sightline stack up``) with the demo's shop, worker and load
    started as ``sightline demo`` starts them, but sending their traces to ``otlp`` and
    their logs to ``loki`` (the demo turns both off where no Collector or Loki runs);
    everything stopped on exit."""
    from sightline_appliance.stack import Stack, python_command
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
            if service == "demo-load":
                wait_ready(native.url("demo-app", 8000, "/health"), 60, stack.records["demo-app"])
            env = {
                **os.environ,
                **native.environment(service, os.environ),
                "PYTHONUNBUFFERED": "1",
                "OTEL_EXPORTER_OTLP_ENDPOINT": otlp,
                "SIGHTLINE_LOKI_URL": loki,
            }
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
    otlp, loki = CountingSink(free_port()), CountingSink(free_port())
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
            elapsed = time.monotonic() - started
            after = {**otlp.snapshot(), **loki.snapshot()}
            window = f"{int(args.window)}s"
            result = read_prometheus(prometheus, window)
            plain, zipped = fetch(app_metrics, False), fetch(app_metrics, True)
            result.update(read_exposition(plain.decode(), len(zipped)))
            for path, name in (("/v1/traces", "spans"), ("/loki/api/v1/push", "log_lines")):
                now, then = after.get(path, {}), before.get(path, {})
                result[f"{name}_per_s"] = (now.get("items", 0) - then.get("items", 0)) / elapsed
                result[f"{name}_bytes_per_s"] = (
                    now.get("bytes", 0) - then.get("bytes", 0)
                ) / elapsed
            dead = [name for name, record in stack.records.items() if not record.alive()]
            if dead:
                raise SystemExit(f"exited during the measurement: {dead} (see {work})")
            if args.targets:
                result["prometheus_per_series"] = per_series(
                    app_metrics, args.targets, args.settle, work
                )
            return result
    finally:
        otlp.close()
        loki.close()


def read_prometheus(prometheus: str, window: str) -> dict[str, Any]:
    shop, worker = 'job="shop"', 'job="shop-worker"'
    return {
        "requests_per_s": scalar(
            prometheus, f"sum(rate(http_server_request_duration_seconds_count{{{shop}}}[{window}]))"
        ),
        "tasks_per_s": scalar(
            prometheus, f"sum(rate(worker_task_duration_seconds_count{{{worker}}}[{window}]))"
        ),
        "shop_samples_per_scrape": scalar(prometheus, f"sum(scrape_samples_scraped{{{shop}}})"),
        "worker_samples_per_scrape": scalar(prometheus, f"sum(scrape_samples_scraped{{{worker}}})"),
        "scrape_interval_s": scrape_interval(prometheus),
    }


def scrape_interval(prometheus: str) -> float:
    """The scrape interval the stack's Prometheus runs with (its config's global one)."""
    url = f"{prometheus}/api/v1/status/config"
    with urllib.request.urlopen(url, timeout=10) as response:
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
    series = series_of(text)
    by_route: dict[str, int] = {}
    unrouted = 0
    for line in series:
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
        "shop_series": len(series),
        "shop_series_without_route": unrouted,
        "shop_routes": len(by_route),
        "shop_series_per_route": by_route,
        "shop_scrape_bytes": len(text.encode()),
        "shop_scrape_bytes_gzip": gzipped,
    }


def per_series(target: str, targets: int, settle: float, work: Path) -> dict[str, Any]:
    """Resident memory per head series of this machine's Prometheus, from scraping
    ``target`` once and then ``targets`` times (as distinct targets)."""
    exe = shutil.which("prometheus")
    if exe is None:
        raise SystemExit("prometheus is not installed (apt-get install prometheus)")
    address = target.removeprefix("http://").partition("/")[0]
    readings = {}
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
        data = work / f"tsdb-{count}"
        proc = subprocess.Popen(
            [
                exe,
                f"--config.file={config}",
                f"--storage.tsdb.path={data}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                with contextlib.suppress(OSError):
                    urllib.request.urlopen(f"{url}/-/ready", timeout=2).close()
                    break
                time.sleep(0.5)
            time.sleep(settle)
            # It scrapes only the shop, not itself: its own page, and its memory from the OS.
            readings[count] = {
                "head_series": own_metric(url, "prometheus_tsdb_head_series"),
                "resident_bytes": float(psutil_rss(proc.pid)),
            }
        finally:
            proc.terminate()
            proc.wait(30)
    one, many = readings[1], readings[targets]
    series = many["head_series"] - one["head_series"]
    return {
        "targets": targets,
        "settle_s": settle,
        "readings": readings,
        "bytes_per_series": (many["resident_bytes"] - one["resident_bytes"]) / series,
    }


def own_metric(url: str, name: str) -> float:
    """A sample of Prometheus' own /metrics page (it does not scrape itself here)."""
    for line in fetch(f"{url}/metrics", False).decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise SystemExit(f"{url}/metrics has no {name}")


def psutil_rss(pid: int) -> int:
    import psutil

    return int(psutil.Process(pid).memory_info().rss)


def per_hundred(result: dict[str, Any]) -> dict[str, float]:
    scale = 100 / result["requests_per_s"]
    return {
        "spans_per_s": result["spans_per_s"] * scale,
        "span_bytes_per_s": result["spans_bytes_per_s"] * scale,
        "log_lines_per_s": result["log_lines_per_s"] * scale,
        "log_bytes_per_s": result["log_lines_bytes_per_s"] * scale,
    }


def markdown(result: dict[str, Any]) -> str:
    interval = result["scrape_interval_s"]
    routes = result["shop_series_per_route"]
    per_route = sorted(routes.values())
    samples = result["shop_samples_per_scrape"] + result["worker_samples_per_scrape"]
    lines = [
        f"Measured on the demo over {result['window_s']:.0f} s "
        f"({result['requests_per_s']:.1f} requests/s, {result['tasks_per_s']:.1f} tasks/s)",
        "",
        "| Quantity | Value |",
        "|---|---|",
        f"| shop series (4 workers merged) | {result['shop_series']} |",
        f"| of which without a route | {result['shop_series_without_route']} |",
        f"| routes / series per route (min-median-max) | {result['shop_routes']} / "
        f"{per_route[0]}-{per_route[len(per_route) // 2]}-{per_route[-1]} |",
        f"| bytes per scrape, plain / gzip | {result['shop_scrape_bytes']} / "
        f"{result['shop_scrape_bytes_gzip']} |",
        f"| samples per scrape, shop / worker | {result['shop_samples_per_scrape']:.0f} / "
        f"{result['worker_samples_per_scrape']:.0f} |",
        f"| samples/s at the {interval:g} s interval, shop + worker | {samples / interval:.0f} |",
    ]
    hundred = per_hundred(result)
    lines += [
        f"| spans/s per 100 requests/s | {hundred['spans_per_s']:.0f} |",
        f"| span bytes/s per 100 requests/s (OTLP, gzip) | {hundred['span_bytes_per_s']:.0f} |",
        f"| log lines/s per 100 requests/s | {hundred['log_lines_per_s']:.0f} |",
        f"| log bytes/s per 100 requests/s (Loki push, gzip) | {hundred['log_bytes_per_s']:.0f} |",
    ]
    if "prometheus_per_series" in result:
        cost = result["prometheus_per_series"]
        lines.append(
            f"| Prometheus resident bytes per head series ({cost['targets']} targets) | "
            f"{cost['bytes_per_series']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warmup", type=float, default=90, help="seconds before the window")
    parser.add_argument("--window", type=float, default=120, help="seconds measured")
    parser.add_argument("--targets", type=int, default=40, help="targets for bytes/series")
    parser.add_argument("--settle", type=float, default=60, help="seconds per Prometheus run")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sightline-fleet-") as tmp:
        result = measure_demo(args, Path(tmp))
    result["window_s"] = args.window
    result["per_100_requests_per_s"] = per_hundred(result)
    print(json.dumps(result, indent=2) if args.json else markdown(result))


if __name__ == "__main__":
    main()
