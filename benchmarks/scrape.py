"""What one Prometheus scrape of a multi-worker gunicorn app costs under Sightline.

Each configuration starts a real gunicorn (sync workers) through the launcher,
``sightline run -- gunicorn -w N -b 127.0.0.1:PORT scrape_app:app``, with traces and log
shipping off (``OTEL_TRACES_EXPORTER=none``, ``OTEL_LOGS_EXPORTER=none``: nothing is sent
anywhere) and ``SIGHTLINE_METRICS_ADDR`` on a free loopback port: the one endpoint that
serves every worker merged. The app, written into a temporary directory, has R routes
``/r<i>``, each answering ``?status=`` 200, 404 or 500: R x 3 label sets of
``http_server_request_duration_seconds`` (method GET).

Every worker is then filled with every label set. gunicorn does not let a client pick the
worker, so each label set is requested N times over N + 1 concurrent connections; which
label sets each worker holds is read from the workers' own snapshots (the JSON files the
scrape merges, in a temporary directory of the run's own), and only the label sets some
worker lacks are requested again, until every worker holds all of them or
``--max-passes`` are spent (the report says how many workers were filled). The merged
scrape must then hold exactly R x 3 label sets of
``http_server_request_duration_seconds_count``, summing to the requests sent, and
``server_workers_live`` must be N, or the run fails.

The server's idle CPU is read over ``--idle`` seconds (the processes' user + system time:
every worker writes a snapshot each second and merges the store every tenth; the default
of 10 s covers one round of those). Then ``/metrics`` is fetched ``--scrapes`` times, one
after another after a warm-up scrape, by this process with urllib, a new connection each
time: without compression, then as many times with ``Accept-Encoding: gzip`` (what
Prometheus sends). The report gives the wall milliseconds per scrape (median and 90th
percentile), the CPU milliseconds the whole server spent per scrape beyond its idle CPU,
the body's bytes, plain and gzipped, and its series (lines not starting with ``#``).

The configurations: each of ``--workers`` (default 1, 4 and 16) at the first of
``--routes``, then each other route count at ``--routes-at`` workers (default: 4 workers
at 100 and 200 routes), so the cost can be read against workers and against series. The
goal: one scrape of 4 workers with 50 routes x 3 statuses within 50 ms, its cost growing
linearly with workers and series. ::

    python benchmarks/scrape.py                      # 1, 4, 16 workers; 4 at 100, 200 routes
    python benchmarks/scrape.py --workers 2 8 --routes 50 400 --scrapes 50 --json
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
STATUSES = (200, 404, 500)
HISTOGRAM = "http_server_request_duration_seconds"
#: The goal: one scrape of this many workers and routes, within this many milliseconds.
GOAL = (4, 50, 50.0)

APP = '''\
"""The scrape benchmark's app: BENCH_ROUTES routes /r<i>, answering ?status=."""

import os

from flask import Flask, request

app = Flask(__name__)


def view():
    return "", int(request.args.get("status", "200"))


for i in range(int(os.environ["BENCH_ROUTES"])):
    app.add_url_rule(f"/r{i}", f"r{i}", view)
'''


@dataclass(frozen=True)
class Config:
    workers: int
    routes: int


def configurations(workers: Sequence[int], routes: Sequence[int], routes_at: int) -> list[Config]:
    chosen = [Config(n, routes[0]) for n in workers]
    chosen += [Config(routes_at, r) for r in routes[1:]]
    return list(dict.fromkeys(chosen))


class Failed(Exception):
    """The run cannot give numbers (the server did not come up, or did not count what was
    sent); the message says why."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def command(prefix: str) -> list[str]:
    """A console script of this environment, or its module run by this interpreter."""
    script = BIN / prefix
    return [str(script)] if os.access(script, os.X_OK) else [sys.executable, "-m", prefix]


def gunicorn_options() -> list[str]:
    """gunicorn 25.1 and later open a control socket at one path per user (in the home
    directory), which another server of the user may hold: the benchmark's do without."""
    helped = subprocess.run(
        [*command("gunicorn"), "--help"], capture_output=True, text=True, check=False
    )
    if helped.returncode != 0:
        raise Failed(f"gunicorn is not installed here: {helped.stderr.strip()[-300:]}")
    return ["--no-control-socket"] if "--no-control-socket" in helped.stdout else []


def environment(workdir: Path, routes: int, metrics_port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIGHTLINE_", "OTEL_"))}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(
        SIGHTLINE_SERVICE="bench",
        SIGHTLINE_METRICS_ADDR=f"127.0.0.1:{metrics_port}",
        OTEL_TRACES_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
        BENCH_ROUTES=str(routes),
        # The server's snapshots go to a directory of this run's own, where they are read.
        TMPDIR=str(workdir / "tmp"),
    )
    return env


@dataclass
class Server:
    app: str  # base URL of the app
    metrics: str  # URL of the merged /metrics
    workdir: Path
    pgid: int

    def snapshot_files(self) -> list[Path]:
        return [
            path
            for path in (self.workdir / "tmp").glob("sightline-*/*/*.json")
            if path.name[0].isdigit()  # <pid>-<start>.json; not the totals of exited ones
        ]


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextlib.contextmanager
def serve(config: Config, workdir: Path, options: list[str]) -> Iterator[Server]:
    """gunicorn with ``config.workers`` sync workers under the launcher, until every worker
    reports on the merged endpoint; the whole process group is ended on the way out."""
    (workdir / "tmp").mkdir(exist_ok=True)
    app_port, metrics_port = free_port(), free_port()
    argv = [*command("sightline"), "run", "--", *command("gunicorn"), *options]
    argv += ["-w", str(config.workers), "-k", "sync", "-b", f"127.0.0.1:{app_port}"]
    argv += ["--chdir", str(workdir), "scrape_app:app"]
    log_path = workdir / f"gunicorn-{config.workers}w-{config.routes}r.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            argv,
            env=environment(workdir, config.routes, metrics_port),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: workers and keeper end with it
        )
        server = Server(
            f"http://127.0.0.1:{app_port}",
            f"http://127.0.0.1:{metrics_port}/metrics",
            workdir,
            proc.pid,
        )
        try:
            wait_ready(server, config.workers, proc, log_path)
            yield server
        finally:
            stop(proc)


def wait_ready(server: Server, workers: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30 + 2 * workers
    live = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Failed(f"gunicorn exited with {proc.returncode}; its log ends:\n{tail(log)}")
        try:
            live = gauge(fetch(server.metrics, timeout=5)[0].decode(), "server_workers_live")
        except OSError:  # not listening yet (urllib's errors are OSErrors)
            live = None
        if live == workers:
            return
        time.sleep(0.1)
    raise Failed(
        f"gunicorn did not report {workers} live workers on {server.metrics} in time "
        f"(last seen: {live}); its log ends:\n{tail(log)}"
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    for signum, wait in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signum)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=wait)
        if proc.poll() is not None and not group_pids(proc.pid):
            return


def group_pids(pgid: int) -> list[int]:
    """The live processes of process group ``pgid`` (gunicorn's master, workers, keeper)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                fields = handle.read().rpartition(b")")[2].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            found.append(int(entry))
    return found


def cpu_seconds(pgid: int) -> float:
    """User + system CPU seconds of the live processes of process group ``pgid``."""
    ticks = 0
    for pid in group_pids(pgid):
        try:
            with open(f"/proc/{pid}/stat", "rb") as handle:
                fields = handle.read().rpartition(b")")[2].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


# -- the exposition


def fetch(url: str, compressed: bool = False, timeout: float = 30) -> tuple[bytes, int]:
    """The body (decompressed) and the bytes that went over the wire."""
    headers = {"Accept-Encoding": "gzip"} if compressed else {}
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        raw: bytes = response.read()
        encoded = response.headers.get("Content-Encoding") == "gzip"
    return (gzip.decompress(raw) if encoded else raw), len(raw)


def series_lines(body: str) -> list[str]:
    return [line for line in body.splitlines() if line and not line.startswith("#")]


def gauge(body: str, name: str) -> float | None:
    for line in series_lines(body):
        if line.split(" ")[0] == name:
            return float(line.split(" ")[1])
    return None


def request_counts(body: str) -> list[float]:
    """The value of every label set of the request-duration histogram's count."""
    prefix = f"{HISTOGRAM}_count{{"
    return [float(line.rsplit(" ", 1)[1]) for line in series_lines(body) if line.startswith(prefix)]


# -- filling every worker with every label set


def held_by_workers(server: Server) -> dict[str, dict[tuple[str, str], float]]:
    """Per live worker (its snapshot's name): requests per (route, status) it recorded."""
    held: dict[str, dict[tuple[str, str], float]] = {}
    for path in server.snapshot_files():
        try:
            document = json.loads(path.read_bytes())
        except (OSError, ValueError):
            continue  # replaced meanwhile: read again on the next look
        counts: dict[tuple[str, str], float] = {}
        for family in document["families"]:
            if family["name"] != HISTOGRAM:
                continue
            for name, labels, value, _ in family["samples"]:
                if name == f"{HISTOGRAM}_count" and value > 0:
                    key = (labels["http_route"], labels["http_response_status_code"])
                    counts[key] = value
        held[path.stem] = counts
    return held


def send(server: Server, pairs: list[tuple[int, int]], concurrency: int) -> None:
    def one(pair: tuple[int, int]) -> None:
        route, status = pair
        try:
            with urllib.request.urlopen(f"{server.app}/r{route}?status={status}", timeout=30):
                answered = status
        except urllib.error.HTTPError as error:
            answered = error.code
            error.close()
        if answered != status:
            raise Failed(f"/r{route}?status={status} answered {answered}")

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, pairs))


@dataclass
class Filled:
    requests: int
    passes: int
    workers_filled: int


def fill(server: Server, config: Config, max_passes: int) -> Filled:
    every = [(route, status) for route in range(config.routes) for status in STATUSES]
    wanted = {(f"/r{route}", str(status)) for route, status in every}
    missing = every
    sent = passes = 0
    held: dict[str, dict[tuple[str, str], float]] = {}
    while missing and passes < max_passes:
        batch = [pair for pair in missing for _ in range(config.workers)]
        random.shuffle(batch)
        send(server, batch, concurrency=config.workers + 1)
        sent += len(batch)
        passes += 1
        # Snapshots are written every second: wait until they hold every request sent.
        deadline = time.monotonic() + 10
        while True:
            held = held_by_workers(server)
            if sum(sum(c.values()) for c in held.values()) >= sent:
                break
            if time.monotonic() > deadline:
                raise Failed(f"the workers' snapshots hold fewer than the {sent} sent")
            time.sleep(0.2)
        lacking = {pair for counts in held.values() for pair in wanted - counts.keys()}
        missing = [(r, s) for r, s in every if (f"/r{r}", str(s)) in lacking]
    filled = sum(1 for counts in held.values() if wanted <= counts.keys())
    return Filled(sent, passes, filled)


def check(server: Server, config: Config, filled: Filled) -> str:
    """The merged scrape holds every label set once, every request, every worker."""
    deadline = time.monotonic() + 10
    while True:
        body = fetch(server.metrics)[0].decode()
        counts = request_counts(body)
        live = gauge(body, "server_workers_live")
        expected = config.routes * len(STATUSES)
        if len(counts) == expected and sum(counts) == filled.requests and live == config.workers:
            return body
        if time.monotonic() > deadline:
            raise Failed(
                f"the scrape of {config} holds {len(counts)} label sets of {HISTOGRAM} "
                f"(expected {expected}) counting {sum(counts):.0f} requests "
                f"(sent {filled.requests}), {live} live workers"
            )
        time.sleep(0.2)


# -- timing


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def timed(url: str, scrapes: int, compressed: bool) -> tuple[list[float], int, bytes]:
    """Milliseconds of each scrape, the bytes of the last one on the wire, and its body."""
    fetch(url, compressed)  # warm-up
    taken = []
    body, wire = b"", 0
    for _ in range(scrapes):
        started = time.perf_counter_ns()
        body, wire = fetch(url, compressed)
        taken.append((time.perf_counter_ns() - started) / 1e6)
    return taken, wire, body


def measure_one(
    config: Config, scrapes: int, idle: float, max_passes: int, options: list[str]
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="sightline-scrape-") as directory:
        workdir = Path(directory)
        (workdir / "scrape_app.py").write_text(APP)
        with serve(config, workdir, options) as server:
            filled = fill(server, config, max_passes)
            check(server, config, filled)
            before = cpu_seconds(server.pgid)
            time.sleep(idle)
            idle_cpu = (cpu_seconds(server.pgid) - before) / idle  # CPU seconds per second
            started, before = time.monotonic(), cpu_seconds(server.pgid)
            plain, plain_bytes, body = timed(server.metrics, scrapes, compressed=False)
            spent = cpu_seconds(server.pgid) - before
            elapsed = time.monotonic() - started
            gzipped, gzip_bytes, _ = timed(server.metrics, scrapes, compressed=True)
    text = body.decode()
    series = len(series_lines(text))
    median = statistics.median(plain)
    return {
        "workers": config.workers,
        "routes": config.routes,
        "label_sets": len(request_counts(text)),
        "series": series,
        "histogram_series": sum(1 for line in series_lines(text) if line.startswith(HISTOGRAM)),
        "bytes": plain_bytes,
        "gzip_bytes": gzip_bytes,
        "ms_median": median,
        "ms_p90": percentile(plain, 0.9),
        "gzip_ms_median": statistics.median(gzipped),
        "gzip_ms_p90": percentile(gzipped, 0.9),
        "cpu_ms_per_scrape": max(0.0, spent - idle_cpu * elapsed) * 1000 / scrapes,
        "idle_cpu_percent": idle_cpu * 100,
        "ms_per_1k_series": median / series * 1000,
        "ms_per_worker": median / config.workers,
        "requests": filled.requests,
        "fill_passes": filled.passes,
        "workers_filled": filled.workers_filled,
        "scrapes": scrapes,
    }


def measure(
    configs: Sequence[Config], scrapes: int, idle: float, max_passes: int
) -> dict[str, Any]:
    options = gunicorn_options()
    results = []
    for config in configs:
        print(f"{config.workers} workers, {config.routes} routes ...", file=sys.stderr, flush=True)
        results.append(measure_one(config, scrapes, idle, max_passes, options))
    report: dict[str, Any] = {"configurations": results}
    workers, routes, goal_ms = GOAL
    for entry in results:
        if (entry["workers"], entry["routes"]) == (workers, routes):
            report["goal"] = {
                "workers": workers,
                "routes": routes,
                "ms": goal_ms,
                "ms_median": entry["ms_median"],
                "meets": entry["ms_median"] <= goal_ms,
            }
    return report


def render(report: dict[str, Any]) -> str:
    lines = [
        f"one scrape of the merged /metrics, {report['configurations'][0]['scrapes']} scrapes "
        "each (median and p90 wall ms; CPU ms of the whole server per scrape)",
        "| Workers | Routes | Label sets | Series | Bytes | gzip bytes | ms (median) | ms (p90) "
        "| gzip ms (median) | CPU ms | ms / 1k series | ms / worker | Idle CPU (of a core) "
        "| Workers filled |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for e in report["configurations"]:
        lines.append(
            f"| {e['workers']} | {e['routes']} | {e['label_sets']} | {e['series']:,} "
            f"| {e['bytes']:,} | {e['gzip_bytes']:,} | {e['ms_median']:.1f} | {e['ms_p90']:.1f} "
            f"| {e['gzip_ms_median']:.1f} | {e['cpu_ms_per_scrape']:.1f} "
            f"| {e['ms_per_1k_series']:.2f} | {e['ms_per_worker']:.2f} "
            f"| {e['idle_cpu_percent']:.1f}% | {e['workers_filled']} of {e['workers']} |"
        )
    goal = report.get("goal")
    if goal is not None:
        verdict = "meets" if goal["meets"] else "misses"
        lines.append(
            f"{goal['workers']} workers x {goal['routes']} routes: {goal['ms_median']:.1f} ms "
            f"per scrape (median), {verdict} the {goal['ms']:.0f} ms goal"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[1, 4, 16],
        help="worker counts, each at the first route count",
    )
    parser.add_argument(
        "--routes",
        type=int,
        nargs="+",
        default=[50, 100, 200],
        help="route counts (3 statuses each); the others at --routes-at workers",
    )
    parser.add_argument(
        "--routes-at", type=int, default=4, help="workers for the route counts after the first"
    )
    parser.add_argument("--scrapes", type=int, default=30, help="timed scrapes of each kind")
    parser.add_argument(
        "--idle", type=float, default=10.0, help="seconds the server's idle CPU is read over"
    )
    parser.add_argument(
        "--max-passes", type=int, default=30, help="passes of requests to fill every worker"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    if min(args.workers + args.routes + [args.routes_at, args.scrapes, args.max_passes]) < 1:
        parser.error("--workers, --routes, --routes-at, --scrapes and --max-passes must be >= 1")
    if args.idle <= 0:
        parser.error("--idle must be positive")
    configs = configurations(args.workers, args.routes, args.routes_at)
    try:
        report = measure(configs, args.scrapes, args.idle, args.max_passes)
    except Failed as exc:
        print(f"scrape benchmark failed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
