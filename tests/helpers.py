"""Test helpers: driving WSGI apps the way a server does, free ports, exposition parsing."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families


def call_wsgi(
    app: Any,
    path: str = "/",
    method: str = "GET",
    headers: dict[str, str] | None = None,
    query: str = "",
) -> tuple[str, bytes]:
    """Call a WSGI app like a server: start_response, iterate the body, then close() it."""
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "SCRIPT_NAME": "",
        "QUERY_STRING": query,
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http",
        "wsgi.input": __import__("io").BytesIO(b""),
        "wsgi.errors": __import__("sys").stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "wsgi.version": (1, 0),
    }
    for name, value in (headers or {}).items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    status: list[str] = []

    def start_response(s: str, h: Any, exc_info: Any = None) -> Any:
        status.append(s)
        return lambda data: None

    body: Iterable[bytes] = app(environ, start_response)
    try:
        data = b"".join(body)
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()
    return status[-1], data


#: Every port free_port has handed out in this test process.
_given: set[int] = set()


def free_port() -> int:
    """A loopback port that is free now and was never handed out before in this process:
    the kernel may offer a port just freed again, and two ports asked for one after the
    other (an app's and its metrics port) would then be the same one."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _given:
            _given.add(port)
            return port


def count(registry: CollectorRegistry, route: str, status: str, method: str = "GET") -> float:
    """Requests recorded for one (method, route, status), 0 if none."""
    value = registry.get_sample_value(
        "http_server_request_duration_seconds_count",
        {"http_request_method": method, "http_route": route, "http_response_status_code": status},
    )
    return value or 0.0


def series(registry: CollectorRegistry, metric: str) -> list[dict[str, str]]:
    """Label sets of a histogram's _count samples."""
    return [
        dict(sample.labels)
        for family in registry.collect()
        if family.name == metric
        for sample in family.samples
        if sample.name == metric + "_count"
    ]


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    """Every sample a /metrics URL serves, by (name, sorted labels); {} while it is down."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return {}
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(found: Samples, metric: str, **labels: str) -> float:
    """The sum of ``metric``'s samples whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (m, got), v in found.items() if m == metric and wanted <= set(got))


def wait_until(check: Callable[[], Any], timeout: float = 60, every: float = 0.25) -> Any:
    """Poll ``check`` until it returns something true, or ``timeout`` passes; its last result."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(every)


def wakeups(thread: threading.Thread) -> int:
    """How often ``thread`` has been switched out so far (Linux): a thread blocked with no
    timer adds none while nothing wakes it."""
    with open(f"/proc/self/task/{thread.native_id}/status") as status:
        return sum(int(line.split()[1]) for line in status if "ctxt_switches:" in line)


def assert_depth_follows(
    readings: list[tuple[float, float]], lengths: list[tuple[float, int]], period: float = 0.5
) -> None:
    """A queue-depth gauge sampled every ``period`` seconds: it appeared, saw a backlog,
    ended at 0, and each reading lies within the broker's queue lengths over the period
    before it (plus 0.3 s of scrape latency)."""
    assert readings, "the depth gauge never appeared"
    assert readings[-1][1] == 0
    assert any(depth > 0 for _, depth in readings)
    for at, depth in readings:
        window = [n for t, n in lengths if at - period - 0.3 <= t <= at]
        if window:
            assert min(window) <= depth <= max(window), (at, depth, window)
