"""Backends down, hung or failing never slow the app; drops are bounded and counted.

Each case serves a Flask app from a real HTTP server thread and loads it with steady
requests (each writing five log lines and one span) while the OTLP and Loki backend
misbehaves, then lets the backend recover, checks that new data arrives, breaks it
again and times shutdown().
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
import urllib.request
from collections.abc import Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
import sightline
from prometheus_client import CollectorRegistry
from sightline import _state

from .helpers import free_port
from .receivers import Backend

flask = pytest.importorskip("flask")

BUFFER = 300
SHUTDOWN_BUDGET = 3.0
LOAD_SECONDS = 2.5


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def make_app() -> Any:
    app = flask.Flask("faulty")
    log = logging.getLogger("faulty.view")
    log.setLevel(logging.INFO)

    @app.route("/work/<int:n>")
    def work(n: int) -> str:
        for i in range(5):
            log.info("step %d of request %d", i, n)
        return "done"

    return app


@pytest.fixture
def served() -> Iterator[str]:
    port = free_port()
    server = make_server("127.0.0.1", port, make_app(), server_class=_Server, handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"
    server.shutdown()
    server.server_close()


def start_agent(registry: CollectorRegistry, backend_url: str) -> None:
    sightline.init(
        service="faulty",
        registry=registry,
        metrics_addr=f"127.0.0.1:{free_port()}",
        otlp_endpoint=backend_url,
        otlp_timeout=1.5,
        bsp_schedule_delay=0.2,
        bsp_max_queue_size=BUFFER,
        bsp_max_export_batch_size=100,
        loki_url=backend_url,
        loki_timeout=1.5,
        loki_buffer=BUFFER,
        loki_batch_size=100,
        shutdown_timeout=SHUTDOWN_BUDGET,
    )


def load(url: str, seconds: float) -> tuple[list[float], int]:
    """Sequential requests for ``seconds``; returns latencies and the largest queue seen."""
    latencies: list[float] = []
    biggest = 0
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        n += 1
        started = time.perf_counter()
        with urllib.request.urlopen(f"{url}/work/{n}", timeout=10) as response:
            assert response.status == 200
            response.read()
        latencies.append(time.perf_counter() - started)
        agent = _state.current
        assert agent is not None
        assert agent.logs is not None
        assert agent.tracing is not None
        assert agent.logs.queue is not None
        assert agent.tracing.queue is not None
        biggest = max(biggest, len(agent.logs.queue), len(agent.tracing.queue))
    return latencies, biggest


@pytest.fixture(scope="module")
def healthy_median(tmp_path_factory: pytest.TempPathFactory) -> float:
    """Median request latency with a healthy backend, measured the same way."""
    backend = Backend().start()
    port = free_port()
    server = make_server("127.0.0.1", port, make_app(), server_class=_Server, handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        start_agent(CollectorRegistry(), backend.url)
        latencies, _ = load(f"http://127.0.0.1:{port}", 1.5)
        sightline.shutdown()
    finally:
        server.shutdown()
        server.server_close()
        backend.stop()
    return statistics.median(latencies)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def marker_arrived(backend: Backend, marker: str) -> bool:
    return any(marker in line for _, _, line, _ in backend.log_entries())


@pytest.mark.parametrize("fault", ["closed", "hung", "failing"])
def test_backend_fault_never_reaches_the_app(
    fault: str, served: str, healthy_median: float, registry: CollectorRegistry
) -> None:
    """Under each fault requests stay fast, queues stay bounded, losses are counted,
    data flows again after recovery, and shutdown() ends within its budget."""
    backend = Backend()
    if fault == "hung":
        backend.hang.set()
    if fault == "failing":
        backend.script = [500, 500, 500, 429, 429, 429]
    if fault != "closed":
        backend.start()
    start_agent(registry, backend.url)
    try:
        latencies, biggest = load(served, LOAD_SECONDS)

        # No request waited on the network.
        assert max(latencies) < 0.5, f"slowest request took {max(latencies):.3f}s"
        assert statistics.median(latencies) < 3 * healthy_median + 0.005
        # Queues never passed their bound, here or in the exposed gauges.
        assert biggest <= BUFFER
        for signal in ("logs", "traces"):
            assert value(registry, "sightline_queue_items", signal=signal) <= BUFFER
            assert value(registry, "sightline_queue_capacity", signal=signal) == BUFFER
        # What could not be delivered is counted, by reason.
        if fault == "closed":
            assert (
                value(registry, "sightline_dropped_total", signal="logs", reason="queue_full") > 0
            )
            assert (
                value(
                    registry, "sightline_export_failures_total", signal="logs", reason="connection"
                )
                > 0
            )
            assert (
                value(
                    registry, "sightline_export_retried_total", signal="logs", reason="connection"
                )
                > 0
            )
        if fault == "hung":
            assert (
                value(registry, "sightline_dropped_total", signal="logs", reason="queue_full") > 0
            )
            assert (
                value(registry, "sightline_export_failures_total", signal="logs", reason="timeout")
                > 0
            )
        if fault == "failing":
            assert backend.answered[:6] == [500, 500, 500, 429, 429, 429]
            failures = sum(
                value(registry, "sightline_export_failures_total", signal=signal, reason=reason)
                for reason in ("http_5xx", "http_429")
                for signal in ("logs", "traces")
            )
            assert failures == 6
            retried = sum(
                value(registry, "sightline_export_retried_total", signal=signal, reason=reason)
                for reason in ("http_5xx", "http_429")
                for signal in ("logs", "traces")
            )
            assert retried > 0

        # Recovery: the backend comes back and new data gets through.
        if fault == "closed":
            backend.start()
        backend.hang.clear()
        backend._release.set()
        # The backlog drains first (new records are dropped while the queue is full).
        queue = _state.current.logs.queue  # type: ignore[union-attr]
        assert backend.wait_for(lambda: len(queue) < BUFFER // 2, timeout=30)  # type: ignore[arg-type]
        marker = f"recovered-{fault}"
        logging.getLogger("faulty.view").warning(marker)
        assert backend.wait_for(lambda: marker_arrived(backend, marker), timeout=30)
        assert backend.wait_for(lambda: len(backend.spans()) > 0, timeout=30)
        assert value(registry, "sightline_exported_total", signal="logs") > 0

        # Break it again and shut down: bounded, with what is left counted as dropped.
        if fault == "closed":
            backend.stop()
        elif fault == "hung":
            backend._release.clear()
            backend.hang.set()
        else:
            backend.script = [503] * 1000
        load(served, 0.5)
        started = time.monotonic()
        sightline.shutdown()
        took = time.monotonic() - started
        assert took < SHUTDOWN_BUDGET + 0.2, f"shutdown took {took:.2f}s"
    finally:
        sightline.shutdown()
        backend.stop()
