"""``sightline demo``: the native stack, the shop, its worker and load, and a live view.

Starts whatever of the stack this machine has (``sightline stack up``; Prometheus and
Redis are required), adds the demo's scrape targets, runs the shop under gunicorn, the
Celery worker and the load generator from the commands compose gives them, and redraws
the golden signals every few seconds until Ctrl-C or ``--duration``. On the way out it
stops the demo's processes and the components it started itself; components that were
already running stay up.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import FrameType

from .._stack import DEMO, Out, Stack, StackError, python_command
from .._stack.processes import NotReady, wait_http
from . import view


def environment(stack: Stack, service: str) -> dict[str, str]:
    """The compose environment of ``service``, pointed at what runs here."""
    native = stack.native()
    running = stack.running()
    env = {**os.environ, **native.environment(service, os.environ), "PYTHONUNBUFFERED": "1"}
    if "collector" not in running:
        if "tempo" in running:
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = native.url("tempo", 4318)
        else:
            env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
            env["SIGHTLINE_TRACES"] = "false"
    if "loki" not in running:
        env.pop("SIGHTLINE_LOKI_URL", None)
    if "redis" not in running:
        env["SIGHTLINE_DEMO_BROKER"] = "filesystem://"
        env["SIGHTLINE_DEMO_BROKER_DIR"] = str(stack.directory / "broker")
    return env


def start_demo(stack: Stack, services: tuple[str, ...] = DEMO) -> None:
    native = stack.native()
    targets = stack.directory / "targets"
    targets.mkdir(parents=True, exist_ok=True)
    (targets / "demo.yml").write_text(native.demo_targets())
    for service in services:
        if service in stack.running():
            continue
        argv = python_command(native.command(service))
        stack.start_process(service, argv, environment(stack, service))
    if "demo-app" in services:
        record = stack.records["demo-app"]
        try:
            wait_http(native.url("demo-app", 8000, "/health"), 60, alive=record.alive)
        except NotReady as exc:
            raise StackError(f"demo-app {exc}; see {record.log}") from None


def stop_demo(stack: Stack, out: Out) -> None:
    stack.stop([name for name in DEMO if name in stack.records], out)
    try:
        (stack.directory / "targets" / "demo.yml").unlink()
    except FileNotFoundError:
        pass


def urls(stack: Stack) -> list[str]:
    native = stack.native()
    running = stack.running()
    lines = [f"shop          {native.url('demo-app', 8000)}"]
    named = {
        "grafana": (3000, "Grafana"),
        "prometheus": (9090, "Prometheus"),
        "alertmanager": (9093, "Alertmanager"),
        "loki": (3100, "Loki"),
        "tempo": (3200, "Tempo"),
    }
    for service, (port, title) in named.items():
        where = native.url(service, port) if service in running else "not running here"
        lines.append(f"{title:<14}{where}")
    return lines


def demo(
    directory: Path,
    duration: float | None,
    ports: Mapping[str, int] | None = None,
    refresh: float = 5.0,
    without: Iterable[str] = (),
    out: Out = print,
) -> int:
    stack = Stack(directory, ports, without)
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    previous = signal.signal(signal.SIGTERM, on_signal)
    started: list[str] = []
    try:
        started, _failures = stack.up(out)
        if "prometheus" not in stack.running():
            out("sightline demo needs Prometheus on this machine (apt-get install prometheus)")
            return 1
        if "redis" not in stack.running():
            out("no Redis here: the demo's Celery messages go through files instead")
        start_demo(stack)
        prometheus = stack.native().url("prometheus", 9090)
        out("")
        out("\n".join(urls(stack)))
        out("")
        _watch(stack, prometheus, duration, refresh, stopping, out)
        return 0
    except StackError as exc:
        out(f"sightline demo: {exc}")
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        out("stopping the demo")
        stop_demo(stack, out)
        stack.stop(started, out)


def _watch(
    stack: Stack,
    prometheus: str,
    duration: float | None,
    refresh: float,
    stopping: threading.Event,
    out: Out,
) -> None:
    interactive = out is print and sys.stdout.isatty()
    start = time.monotonic()
    deadline = None if duration is None else start + duration
    demo_jobs = 'job=~"shop|shop-worker"'
    while True:
        elapsed = time.monotonic() - start
        dead = [name for name in DEMO if name in stack.records and not stack.records[name].alive()]
        header = [
            f"Sightline demo · {elapsed:.0f} s"
            + (f" of {duration:.0f}" if duration else " · Ctrl-C to stop")
            + (f" · exited: {', '.join(dead)} (see {stack.directory}/logs)" if dead else "")
        ]
        text = view.render(view.read(prometheus, demo_jobs), header)
        if interactive:
            out("\x1b[H\x1b[2J" + "\n".join(urls(stack)) + "\n" + text)
        else:
            out(text + "\n")
        wait = refresh if deadline is None else min(refresh, deadline - time.monotonic())
        if wait <= 0 or stopping.wait(wait):
            return
