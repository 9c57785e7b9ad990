"""What ``init()`` loads, and what the agent loads later, when something first needs it.

Each test runs a fresh interpreter: what a module import costs, or whether it happened,
cannot be seen in a process that has imported everything already.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import time

import pytest
from prometheus_client import Counter as TheirCounter
from prometheus_client import Gauge as TheirGauge
from prometheus_client import generate_latest, metrics
from prometheus_client.registry import CollectorRegistry
from sightline import _fork
from sightline.metrics import Counter, Gauge

from .helpers import free_port

#: Loaded only when first needed: prometheus-client with the HTTP stack it imports (the
#: first scrape, snapshot, or the app's own import), the export client (the first push),
#: the multi-process machinery (a server's process), subprocess (a keeper started).
DEFERRED = (
    "prometheus_client",
    "http.client",
    "http.server",
    "ssl",
    "urllib.request",
    "wsgiref.simple_server",
    "subprocess",
    "tempfile",
    "importlib.abc",
    "opentelemetry.sdk.trace",
    "psutil",
    "sightline._multiprocess",
    "sightline._transport",
)

_PRELUDE = """
import json, socket, sys
started = set(sys.modules)

def loaded():
    return sorted(m for m in {deferred!r} if m in sys.modules and m not in started)

def hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]

def request(app, path="/"):
    body = app({{"REQUEST_METHOD": "GET", "PATH_INFO": path}}, lambda *a: None)
    list(body)
    body.close()

def scrape(port):
    '''GET /metrics over a bare socket: nothing here loads http.client.'''
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(b"GET /metrics HTTP/1.0\\r\\nAccept: text/plain\\r\\n\\r\\n")
        chunks = []
        while chunk := connection.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()
"""


def run(code: str, **env: str) -> dict[str, object]:
    """Run ``code`` after the prelude in a fresh interpreter; it prints its findings as one
    JSON line after ``RESULT``."""
    program = _PRELUDE.format(deferred=DEFERRED) + textwrap.dedent(code)
    result = subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", **env},
    )
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT "))
    found: dict[str, object] = json.loads(line.removeprefix("RESULT "))
    return found


def test_init_and_requests_load_nothing_deferred() -> None:
    """``init()`` with its defaults (the metrics server on) and then requests load none of
    the deferred modules; ``shutdown()`` loads only the export client, to send the spans."""
    port = free_port()
    found = run(
        f"""
        import sightline
        sightline.init(service="lazy", metrics_addr="127.0.0.1:{port}")
        after_init = loaded()
        app = sightline.instrument_app(hello)
        for _ in range(3):
            request(app)
        after_requests = loaded()
        sightline.shutdown()
        end = loaded()
        print("RESULT", json.dumps({{"init": after_init, "requests": after_requests, "end": end}}))
        """
    )
    assert found["init"] == found["requests"] == []
    export_client = {"sightline._transport", "http.client", "ssl", "urllib.request", "tempfile"}
    assert "sightline._transport" in found["end"]  # type: ignore[operator]
    assert set(found["end"]) <= export_client  # type: ignore[call-overload]


def test_an_agent_with_nothing_to_send_loads_nothing_to_stop() -> None:
    """A process that started the agent and had nothing to send or show (a short script
    under ``sightline run``) stops it without loading any deferred module."""
    found = run(
        """
        import sightline
        sightline.init(service="lazy", metrics_addr="off")
        sightline.shutdown()
        print("RESULT", json.dumps({"end": loaded()}))
        """
    )
    assert found == {"end": []}


def test_the_first_scrape_loads_prometheus_client_and_shows_earlier_requests() -> None:
    """The metrics server's first scrape loads prometheus-client on its own thread, and the
    page counts the requests made before it was loaded, with the process collectors."""
    port = free_port()
    found = run(
        f"""
        import sightline, time
        sightline.init(service="lazy", metrics_addr="127.0.0.1:{port}")
        app = sightline.instrument_app(hello)
        for _ in range(3):
            request(app)
        before = loaded()
        for _ in range(100):
            try:
                page = scrape({port})
                break
            except OSError:
                time.sleep(0.05)
        print("RESULT", json.dumps({{"before": before, "after": loaded(), "page": page}}))
        """
    )
    assert found["before"] == []
    assert "prometheus_client" in found["after"]  # type: ignore[operator]
    page = str(found["page"])
    assert page.startswith("HTTP/1.0 200"), page[:200]
    counted = (
        'http_server_request_duration_seconds_count{http_request_method="GET",'
        'http_response_status_code="200",http_route="_unmatched"} 3.0'
    )
    assert counted in page
    assert re.search(r'^target_info\{.*service_name="lazy"', page, re.M)
    assert "process_resident_memory_bytes" in page


def test_an_app_importing_prometheus_client_later_meets_sightlines_metrics() -> None:
    """When the app imports prometheus-client after ``init()``, Sightline's instruments are
    in the global registry at once: the app's ``generate_latest()`` shows requests made
    before, a metric of the app's with one of Sightline's names is refused in the app's
    code (as if ``init()`` had registered them), and the app's own metrics are served on
    Sightline's page."""
    found = run(
        """
        import sightline
        sightline.init(service="lazy", metrics_addr="off")
        app = sightline.instrument_app(hello)
        request(app)
        request(app)
        import prometheus_client
        theirs = prometheus_client.generate_latest().decode()
        try:
            prometheus_client.Counter("sightline_internal_errors", "the app's")
            refused = ""
        except ValueError as exc:
            refused = str(exc)
        orders = prometheus_client.Counter("shop_orders", "Orders.")
        orders.inc(5)
        from sightline import _state
        body = _state.current.metrics_app(
            {"REQUEST_METHOD": "GET", "PATH_INFO": "/metrics"}, lambda *a: None)
        ours = b"".join(body).decode()
        print("RESULT", json.dumps({"theirs": theirs, "refused": refused, "ours": ours}))
        """
    )
    counted = (
        'http_server_request_duration_seconds_count{http_request_method="GET",'
        'http_response_status_code="200",http_route="_unmatched"} 2.0'
    )
    assert counted in str(found["theirs"])
    assert "Duplicated timeseries" in str(found["refused"])
    assert "shop_orders_total 5.0" in str(found["ours"])
    assert counted in str(found["ours"])


def test_a_registry_given_to_init_binds_at_once() -> None:
    """A registry passed to ``init()`` gets Sightline's instruments before ``init()``
    returns, and a name the app registered there already fails ``init()`` quietly (logged),
    leaving the app's metric in place."""
    found = run(
        """
        import logging, prometheus_client, sightline
        from prometheus_client import CollectorRegistry
        logging.basicConfig(level=logging.ERROR)
        registry = CollectorRegistry()
        sightline.init(service="lazy", metrics_addr="off", registry=registry)
        bound = any(m.name == "target" for m in registry.collect())
        sightline.shutdown()
        clash = CollectorRegistry()
        prometheus_client.Counter("sightline_internal_errors", "the app's", registry=clash)
        sightline.init(service="lazy", metrics_addr="off", registry=clash)
        from sightline import _state
        names = sorted(m.name for m in clash.collect())
        print("RESULT", json.dumps({"bound": bound, "running": _state.current is not None,
                          "names": names}))
        """
    )
    assert found == {"bound": True, "running": False, "names": ["sightline_internal_errors"]}


@pytest.fixture
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """``time.time()`` fixed, so ``_created`` samples compare equal."""
    monkeypatch.setattr(time, "time", lambda: 1_700_000_000.0)


@pytest.mark.parametrize("created", [True, False])
def test_counters_and_gauges_are_exposed_as_prometheus_clients_are(
    frozen_clock: None, created: bool
) -> None:
    """Sightline's own ``Counter`` and ``Gauge`` write the page prometheus-client's would for
    the same operations: ``_total`` and ``_created`` samples (none with created series
    disabled), label values given as non-strings, ``clear()``."""
    if not created:
        metrics.disable_created_metrics()
    try:
        pages = []
        for counter_class, gauge_class, own in (
            (Counter, Gauge, True),
            (TheirCounter, TheirGauge, False),
        ):
            registry = CollectorRegistry()
            if own:
                counter = counter_class("jobs", "Jobs done.", ["queue", "attempt"])
                gauge = gauge_class("slots", "Slots.", ["pool"])
                cleared = gauge_class("gone", "Cleared.", ["pool"])
            else:
                counter = counter_class("jobs", "Jobs done.", ["queue", "attempt"], registry=None)
                gauge = gauge_class("slots", "Slots.", ["pool"], registry=None)
                cleared = gauge_class("gone", "Cleared.", ["pool"], registry=None)
            for collector in (counter, gauge, cleared):
                registry.register(collector)
            counter.labels("mail", 1).inc()
            counter.labels("mail", 1).inc(2.5)
            counter.labels("sms", 2)
            gauge.labels("a").set(4)
            gauge.labels("a").inc()
            gauge.labels("b").dec(3)
            cleared.labels("x").set(1)
            cleared.clear()
            pages.append(generate_latest(registry).decode())
    finally:
        metrics.enable_created_metrics()
    ours, theirs = pages
    assert ours == theirs
    assert ("jobs_created" in ours) is created


def test_a_counter_refuses_the_wrong_number_of_labels() -> None:
    """``labels()`` with more or fewer values than label names raises, as prometheus-client's."""
    counter = Counter("jobs", "Jobs done.", ["queue"])
    with pytest.raises(ValueError, match="jobs"):
        counter.labels("a", "b")
    with pytest.raises(ValueError, match="jobs"):
        counter.labels()


def test_devnull_without_subprocess_is_subprocess_devnull() -> None:
    """The keeper's streams go to the real ``subprocess.DEVNULL`` (named without loading it)."""
    assert _fork.DEVNULL == subprocess.DEVNULL


def test_a_fork_during_a_binding_leaves_a_child_that_reads_its_metrics() -> None:
    """A process forked while another thread holds the agent's binding lock (a thread
    registering the instruments as it loads prometheus-client) gives a child that loads
    prometheus-client and reads its registry without hanging on that lock, with the
    counts recorded before the fork."""
    found = run(
        """
        import os, threading, time
        import sightline
        from sightline import _state
        sightline.init(service="lazy", metrics_addr="off", traces=False, logs=False)
        agent = _state.current
        request(sightline.instrument_app(hello))
        held = threading.Event()
        def hold():
            with agent._bind_lock:
                held.set()
                time.sleep(0.3)
        threading.Thread(target=hold).start()
        held.wait()
        pid = os.fork()
        if pid == 0:
            registry = agent.registry
            value = registry.get_sample_value("http_server_request_duration_seconds_count", {
                "http_request_method": "GET", "http_route": "_unmatched",
                "http_response_status_code": "200"})
            os._exit(0 if value == 1.0 else 3)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.05)
        else:
            os.kill(pid, 9)
            status = "hung"
        print("RESULT", json.dumps({"status": status}))
        """
    )
    assert found == {"status": 0}
