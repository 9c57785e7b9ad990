"""End to end: a Flask app under gunicorn, scraped by a real Prometheus."""

from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .helpers import free_port, wait_until
from .servers import FLAVOURS, Prometheus, binary, gunicorn, launcher, prometheus

pytest.importorskip("flask")
pytest.importorskip("gunicorn")


def request(url: str, method: str = "GET", headers: dict[str, str] | None = None) -> Any:
    req = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        return urllib.request.urlopen(req, timeout=10)
    except urllib.error.HTTPError as error:
        return error


@pytest.fixture(scope="module", params=FLAVOURS)
def stack(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[dict[str, Any]]:
    """The app under gunicorn, scraped by Debian's Prometheus and by the version compose
    pins (3.x, which negotiates OpenMetrics with the escaping ``allow-utf-8``)."""
    tmp = tmp_path_factory.mktemp(f"e2e-{request.param}")
    metrics_port = free_port()
    env = {"SIGHTLINE_METRICS_ADDR": f"127.0.0.1:{metrics_port}"}
    args = ["--workers", "1", "--threads", "4"]
    with (
        gunicorn("tests.apps.flask_app:application", env, args, tmp) as base,
        prometheus(tmp, {"app": f"127.0.0.1:{metrics_port}"}, flavour=request.param) as prom,
    ):
        yield {"base": base, "prom": prom, "metrics": f"http://127.0.0.1:{metrics_port}/metrics"}


def wait_for_result(prom: Prometheus, promql: str, expected: Any, timeout: float = 30) -> Any:
    """Poll a query until it returns ``expected`` (scrapes arrive every second)."""
    deadline = time.monotonic() + timeout
    while True:
        got = {tuple(sorted(r["metric"].items())): float(r["value"][1]) for r in prom.query(promql)}
        if got == expected or time.monotonic() > deadline:
            return got
        time.sleep(0.5)


def test_prometheus_sees_exact_golden_signals(stack: dict[str, Any]) -> None:
    """After a known mix of requests PromQL returns exactly the expected counts per route."""
    base = stack["base"]
    for uid in (1, 2, 3, 4):
        assert request(f"{base}/users/{uid}").status == 200
    for _ in range(3):
        assert request(f"{base}/health").status == 200
    for _ in range(2):
        assert request(f"{base}/orders", method="POST").status == 201
    assert request(f"{base}/missing/abc").status == 404
    assert request(f"{base}/missing/def?x=1").status == 404
    assert request(f"{base}/boom").status == 500
    assert request(f"{base}/teapot/earl-grey").status == 418
    assert request(f"{base}/users/1", method="BREW").status == 405

    expected = {
        (
            ("http_request_method", "GET"),
            ("http_response_status_code", "200"),
            ("http_route", "/users/<int:uid>"),
        ): 4.0,
        (
            ("http_request_method", "GET"),
            ("http_response_status_code", "200"),
            ("http_route", "/health"),
        ): 3.0 + 1.0,  # +1: the fixture's readiness probe
        (
            ("http_request_method", "POST"),
            ("http_response_status_code", "201"),
            ("http_route", "/orders"),
        ): 2.0,
        (
            ("http_request_method", "GET"),
            ("http_response_status_code", "404"),
            ("http_route", "_unmatched"),
        ): 2.0,
        (
            ("http_request_method", "GET"),
            ("http_response_status_code", "500"),
            ("http_route", "/boom"),
        ): 1.0,
        (
            ("http_request_method", "GET"),
            ("http_response_status_code", "418"),
            ("http_route", "/teapot/<kind>"),
        ): 1.0,
        (
            ("http_request_method", "_OTHER"),
            ("http_response_status_code", "405"),
            ("http_route", "_unmatched"),
        ): 1.0,
    }
    promql = (
        "sum by (http_request_method, http_route, http_response_status_code)"
        ' (http_server_request_duration_seconds_count{job="app"})'
    )
    assert wait_for_result(stack["prom"], promql, expected) == expected
    [active] = stack["prom"].query('http_server_active_requests{job="app"}')
    assert active["value"][1] == "0"
    [capacity] = stack["prom"].query('http_server_worker_capacity{job="app"}')
    assert capacity["value"][1] == "4", "gunicorn --threads 4 is detected"
    [info] = stack["prom"].query('target_info{job="app"}')
    assert info["metric"]["service_name"] == "shop"


def test_exemplar_of_a_traced_request_reaches_prometheus(stack: dict[str, Any]) -> None:
    """A request observed under a recording span is queryable by its trace id as an exemplar."""
    response = request(f"{stack['base']}/users/77", headers={"X-Start-Span": "1"})
    assert response.status == 200
    trace_id = response.headers["X-Trace-Id"]
    assert len(trace_id) == 32
    start = time.time() - 60
    deadline = time.monotonic() + 30
    found: list[dict[str, str]] = []
    while not found and time.monotonic() < deadline:
        data = stack["prom"].get(
            "/api/v1/query_exemplars",
            query='http_server_request_duration_seconds_bucket{job="app"}',
            start=f"{start:.3f}",
            end=f"{time.time() + 5:.3f}",
        )
        found = [
            {**group["seriesLabels"], **exemplar["labels"]}
            for group in data
            for exemplar in group["exemplars"]
            if exemplar["labels"].get("trace_id") == trace_id
        ]
        time.sleep(0.5)
    assert found, "exemplar with the request's trace id not found"
    assert found[0]["http_route"] == "/users/<int:uid>"
    assert len(found[0]["span_id"]) == 16


def test_promtool_accepts_the_text_exposition(stack: dict[str, Any]) -> None:
    """`promtool check metrics` finds no problem in what /metrics serves as text."""
    promtool = binary("promtool")
    with urllib.request.urlopen(stack["metrics"], timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read()
    assert b"http_server_request_duration_seconds_bucket" in text
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, timeout=30
    )
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


def test_metrics_endpoint_negotiates_openmetrics_and_gzip(stack: dict[str, Any]) -> None:
    """/metrics answers OpenMetrics when asked (as Prometheus does) and gzips on request."""
    import gzip

    req = urllib.request.Request(
        stack["metrics"],
        headers={
            "Accept": "application/openmetrics-text; version=1.0.0",
            "Accept-Encoding": "gzip",
        },
    )
    with urllib.request.urlopen(req, timeout=5) as response:
        assert response.headers["Content-Type"].startswith("application/openmetrics-text")
        assert response.headers["Content-Encoding"] == "gzip"
        body = gzip.decompress(response.read())
    assert body.rstrip().endswith(b"# EOF")


def test_two_services_never_share_a_metrics_port(tmp_path: Path) -> None:
    """A second gunicorn app (another service) configured with the port a first one serves
    does not join it: every scrape of the port shows the first service only, and each of
    the second app's workers logs an error naming the port, the service holding it and the
    setting that moves it, and exposes sightline_metrics_server_up 0."""
    port = free_port()
    metrics = f"http://127.0.0.1:{port}/metrics"
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    first_dir.mkdir()
    second_dir.mkdir()
    first_env = {"SIGHTLINE_METRICS_ADDR": f"127.0.0.1:{port}", "TMPDIR": str(first_dir)}
    # The second serves its own metrics on a path too, where the failure must show.
    second_env = {**first_env, "TMPDIR": str(second_dir), "SIGHTLINE_METRICS_PATH": "/metrics"}
    args = ["--workers", "2"]
    prefix = [*launcher(), "run", "--service", "ledger", "--"]
    line = f"cannot serve metrics on 127.0.0.1:{port}: port {port} is held by the service 'shop'"
    with gunicorn("tests.apps.flask_app:application", first_env, args, first_dir):
        assert wait_until(lambda: b'service_name="shop"' in _page(metrics), timeout=15)
        with gunicorn(
            "tests.apps.plain_app:app", second_env, args, second_dir, prefix=prefix
        ) as second:
            log = second_dir / "gunicorn.log"
            assert wait_until(lambda: log.read_text().count(line) == 2, timeout=20), log.read_text()
            text = log.read_text()
            assert "SIGHTLINE_METRICS_ADDR" in text
            assert "pid " in text
            for _ in range(5):
                assert request(f"{second}/users/1").status == 200

            def up() -> list[str]:
                own = request(f"{second}/metrics").read().decode()
                return [ln for ln in own.splitlines() if ln.startswith("sightline_metrics_server")]

            assert wait_until(lambda: len(up()) == 2, timeout=15), up()  # one per worker
            assert all(ln.endswith(" 0.0") for ln in up())
            pages = [_page(metrics) for _ in range(12)]
    for page in pages:
        assert b'service_name="shop"' in page
        assert b"ledger" not in page


def _page(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return bytes(response.read())
    except OSError:
        return b""


def test_taken_port_does_not_stop_the_app(tmp_path: Path) -> None:
    """If another program holds the metrics port the app still starts and serves; the
    failure is logged once, within seconds, naming the port and the setting."""
    import socket

    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        env = {"SIGHTLINE_METRICS_ADDR": f"127.0.0.1:{port}", "TMPDIR": str(tmp_path)}
        log = tmp_path / "gunicorn.log"
        line = f"cannot serve metrics on 127.0.0.1:{port}"
        with gunicorn(
            "tests.apps.flask_app:application", env, ["--workers", "1"], tmp_path
        ) as base:
            assert request(f"{base}/users/5").status == 200
            assert wait_until(lambda: line in log.read_text(), timeout=10)
        text = log.read_text()
    assert text.count(line) == 1
    assert "SIGHTLINE_METRICS_ADDR" in text
