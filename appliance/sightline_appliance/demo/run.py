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
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import FrameType

from ..stack import (
    BY_NAME,
    DEMO,
    LONGTERM_NEEDS,
    Out,
    Stack,
    StackError,
    check_ports,
    python_command,
)
from ..stack.native import DEMO_TARGETS, Native
from ..stack.processes import NotReady, wait_http
from . import view
from .load import parse_report


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


def signals(stack: Stack) -> list[view.Signal]:
    """Where the demo's signals go on this machine (as ``environment`` set them up), or
    why they are off and how to turn them on."""
    native = stack.native()
    running = stack.running()

    def missing(*names: str) -> str:
        left_out = [n for n in names if n in stack.without]
        if left_out:
            return "left out (" + ", ".join(f"--without {n}" for n in left_out) + ")"
        return "no " + " or ".join(_TITLES[n] for n in names) + " on this machine"

    found = [view.Signal("metrics", f"scraped by Prometheus at {native.url('prometheus', 9090)}")]
    if "collector" in running:
        where = f"the Collector at {native.url('collector', 4318)}"
        if "tempo" not in running:
            where += f" (but {missing('tempo')}: what it keeps is stored nowhere)"
        found.append(view.Signal("traces", where))
    elif "tempo" in running:
        found.append(view.Signal("traces", f"Tempo at {native.url('tempo', 4318)}"))
    else:
        fix = "; sightline stack status says how to get them"
        found.append(view.Signal("traces", "", missing("collector", "tempo") + fix))
    if "loki" in running:
        found.append(view.Signal("logs", f"Loki at {native.url('loki', 3100)}"))
    else:
        found.append(view.Signal("logs", "", missing("loki") + "; sightline stack status says how"))
    return found


_TITLES = {"collector": "Collector", "tempo": "Tempo", "loki": "Loki"}


def load_report(stack: Stack) -> str:
    """The load generator's latest counts, from its log, as one line."""
    record = stack.records.get("demo-load")
    counts = None
    if record is not None:
        try:
            with open(record.log, "rb") as log:
                log.seek(max(0, os.fstat(log.fileno()).st_size - 4096))
                tail = log.read().decode(errors="replace").splitlines()
        except OSError:
            tail = []
        for line in reversed(tail):
            counts = parse_report(line)
            if counts is not None:
                break
    if counts is None:
        return "load     (no report yet)"
    sent, failed = counts["sent"], counts["failed"]
    share = f" ({100 * failed / sent:.1f} %)" if sent else ""
    rest = ", ".join(f"{k} {counts[k]}" for k in ("retried", "shed") if counts[k])
    return f"load     sent {sent}, failed {failed}{share}" + (f", {rest}" if rest else "")


def start_demo(stack: Stack, launched: list[str], load: bool = True) -> None:
    """Start the shop and its worker, then (once the shop answers) the load unless
    ``load`` is false (the caller sends its own); appends each service to ``launched``
    as it starts. A demo already running in this state directory is left alone."""
    if any(name in stack.running() for name in DEMO):
        raise StackError(
            f"a demo is already running from {stack.directory}; stop it first, or use another --dir"
        )
    native = stack.native()
    for service in DEMO:
        check_ports(native, service)
    targets = stack.directory / "targets"
    targets.mkdir(parents=True, exist_ok=True)
    (targets / DEMO_TARGETS).write_text(native.demo_targets())
    for service in ("demo-app", "demo-worker"):
        _launch(stack, native, service, launched)
    record = stack.records["demo-app"]
    try:
        wait_http(native.url("demo-app", 8000, "/health"), 60, alive=record.alive)
    except NotReady as exc:
        raise StackError(f"demo-app {exc}; see {record.log}") from None
    if load:
        _launch(stack, native, "demo-load", launched)


def _launch(stack: Stack, native: Native, service: str, launched: list[str]) -> None:
    argv = python_command(native.command(service))
    stack.start_process(service, argv, environment(stack, service))
    launched.append(service)


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
    port_offset: int = 0,
    out: Out = print,
    longterm: bool | None = None,
) -> int:
    started: list[str] = []  # components this demo started, filled as they start
    launched: list[str] = []  # demo services this demo started
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    stack: Stack | None = None
    try:
        stack = Stack(directory, ports, without, port_offset, longterm=longterm)
        _started, failures = stack.up(out, started=started)
        if "prometheus" not in stack.running():
            if "prometheus" in failures:
                out(f"sightline demo needs Prometheus running: {failures['prometheus']}")
            elif "prometheus" in stack.without:
                out("sightline demo needs Prometheus: do not leave it out (--without prometheus)")
            else:
                out(f"sightline demo needs Prometheus: {BY_NAME['prometheus'].get_it}")
            return 1
        if "redis" not in stack.running():
            out("no Redis here: the demo's Celery messages go through files instead")
        start_demo(stack, launched)
        # The view reads the rules' series too: under --longterm they are in the store.
        native = stack.native()
        prometheus = native.url("prometheus", 9090)
        names = ("Prometheus", "Prometheus")  # the store the view queries, the ruler
        if stack.longterm:
            missing = [name for name in LONGTERM_NEEDS if name not in stack.running()]
            if missing:
                # up has printed why; without them the view has no rules' series to show.
                out(
                    f"sightline demo --longterm: {' and '.join(missing)} not running (above), "
                    "so no rule runs: the view shows no hints and no pending alerts"
                )
            else:
                prometheus = native.url("victoriametrics", 8428)
                names = ("VictoriaMetrics", "vmalert")  # its alerts, proxied by the store
        out("")
        out("\n".join(urls(stack)))
        out("")
        _watch(stack, prometheus, names, duration, refresh, out)
        return 0
    except (StackError, OSError) as exc:
        out(f"sightline demo: {exc}")
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        # Cleaning up may not be interrupted in turn.
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        if stack is not None and (launched or started):
            out("stopping the demo")
            stack.stop(launched, out)
            stack.stop(started, out)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _watch(
    stack: Stack,
    prometheus: str,
    names: tuple[str, str],
    duration: float | None,
    refresh: float,
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
        header.append(load_report(stack))
        alertmanager = stack.native().url("alertmanager", 9093)
        snapshot = view.read(prometheus, alertmanager, demo_jobs, names=names)
        text = view.render(snapshot, header, signals(stack))
        if interactive:
            out("\x1b[H\x1b[2J" + "\n".join(urls(stack)) + "\n" + text)
        else:
            out(text + "\n")
        wait = refresh if deadline is None else min(refresh, deadline - time.monotonic())
        if wait <= 0:
            return
        time.sleep(wait)
