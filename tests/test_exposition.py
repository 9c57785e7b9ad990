"""The merged page written by Sightline itself: byte for byte what prometheus-client writes."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, exposition
from prometheus_client.openmetrics import exposition as openmetrics
from sightline import _exposition
from sightline._exposition import Family, Samples
from sightline._multiprocess import Scrape, Server, Snapshots
from sightline._store import Store

#: What Prometheus sends, as read from the servers themselves: Debian 12's 2.42 and 3.x.
PROMETHEUS_2 = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
PROMETHEUS_3 = (
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,"
    "application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;"
    "escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
)
ACCEPTS = [
    None,
    "text/plain",
    "text/plain;version=1.0.0;escaping=underscores",
    "application/openmetrics-text",
    "application/openmetrics-text; version=1.0.0",
    PROMETHEUS_2,
    PROMETHEUS_3,
]


def samples(*rows: tuple[Any, ...]) -> Samples:
    found: Samples = {}
    for row in rows:
        name, labels, value = row[:3]
        exemplar = row[3] if len(row) > 3 else None
        found[(name, tuple(sorted(labels.items())))] = [value, exemplar, labels]
    return found


def rich() -> list[Family]:
    """Every type, the odd values and characters a page can hold."""
    route = {"http_route": '/a\\b"c\nd', "method": "GÉT"}
    buckets = [
        ("job:latency_seconds_bucket", {**route, "le": le}, count)
        for le, count in (("0.005", 0), ("0.1", 3), ("+Inf", 7))
    ]
    return [
        (
            "requests",
            "counter",
            'Requests \\ served\n"all"',
            "",
            samples(
                ("requests_total", {"code": "200"}, 5, [{"trace_id": 'a"b'}, 0.25, 1700000000.5]),
                ("requests_total", {"code": "500"}, 0.0),
                ("requests_created", {"code": "200"}, 1700000000.123),
            ),
        ),
        (
            "temperature",
            "gauge",
            "",
            "",
            samples(
                ("temperature", {}, -0.0),
                ("temperature", {"a": "1"}, float("inf")),
                ("temperature", {"a": "2"}, float("-inf")),
                ("temperature", {"a": "3"}, float("nan")),
                ("temperature", {"a": "4"}, 123456789.0),
                ("temperature", {"a": "5"}, 1e22),
                ("temperature", {"a": "6"}, 1e-9),
                ("temperature", {"a": "7"}, 12345678901234),
            ),
        ),
        (
            "job:latency_seconds",
            "histogram",
            "Latency.",
            "seconds",
            samples(
                *buckets[:2],
                (*buckets[2], [{"trace_id": "ab", "span_id": "cd"}, 0.3, None]),
                ("job:latency_seconds_count", route, 7),
                ("job:latency_seconds_sum", route, 1.25),
                ("job:latency_seconds_created", route, 1700000000.0),
            ),
        ),
        (
            "rpc",
            "summary",
            "RPCs.",
            "",
            samples(
                ("rpc", {"quantile": "0.5"}, 0.1),
                ("rpc_count", {}, 2),
                ("rpc_sum", {}, 0.2),
            ),
        ),
        ("build", "info", "Build.", "", samples(("build_info", {"version": "1.2"}, 1))),
        ("state", "stateset", "State.", "", samples(("state", {"state": "a"}, 1))),
        (
            "queue",
            "gaugehistogram",
            "Queue.",
            "",
            samples(
                ("queue_bucket", {"le": "+Inf"}, 3),
                ("queue_gcount", {}, 3),
                ("queue_gsum", {}, 4.5),
            ),
        ),
        ("mystery", "unknown", "Unknown.", "", samples(("mystery", {"x": "y"}, 2))),
    ]


class _Families:
    def __init__(self, families: list[Family]) -> None:
        self.families = families

    def collect(self) -> Any:
        return _exposition.metrics(self.families)


def theirs(accept: str | None, families: list[Family]) -> bytes:
    encoder, _ = exposition.choose_encoder(accept or "")
    return encoder(_Families(families))  # type: ignore[arg-type]


def test_text_page_is_the_bytes_prometheus_client_writes() -> None:
    """Every type, special float and escaped character comes out in the text format exactly as
    prometheus-client writes the same families."""
    families = rich()
    assert _exposition.render_text(families) == exposition.generate_latest(_Families(families))  # type: ignore[arg-type]


@pytest.mark.parametrize("escaping", [openmetrics.UNDERSCORES, openmetrics.ALLOWUTF8])
def test_openmetrics_page_is_the_bytes_prometheus_client_writes(escaping: str) -> None:
    """OpenMetrics, exemplars and units included, comes out exactly as prometheus-client writes
    it with the same escaping (with underscores, a colon in a sample name becomes one)."""
    families = rich()
    ours = _exposition.render_openmetrics(families, utf8=escaping == openmetrics.ALLOWUTF8)
    assert ours == openmetrics.generate_latest(_Families(families), escaping=escaping)  # type: ignore[arg-type]
    assert (b"job_latency_seconds_count{" in ours) == (escaping == openmetrics.UNDERSCORES)


@pytest.mark.parametrize("accept", ACCEPTS)
def test_what_prometheus_asks_for_is_written_by_sightline(accept: str | None) -> None:
    """The formats Prometheus 2 and 3 negotiate are written by Sightline's renderer, with the
    content type and the bytes prometheus-client would have answered."""
    encoder, content_type = exposition.choose_encoder(accept or "")
    assert _exposition._renderer(encoder) is not None
    families = rich()
    status, headers, body = _exposition.bake(lambda: families, CollectorRegistry, accept, None, "")
    assert status == "200 OK"
    assert headers == [("Content-Type", content_type)]
    assert body == theirs(accept, families)


@pytest.mark.parametrize(
    "accept",
    [
        "application/openmetrics-text;version=1.0.0;escaping=dots",
        "application/openmetrics-text;version=1.0.0;escaping=values",
        "text/plain;version=1.0.0;escaping=values",
    ],
)
def test_other_escapings_are_left_to_prometheus_client(accept: str) -> None:
    """An escaping Sightline does not write (dots, values) is answered by prometheus-client."""
    encoder, _ = exposition.choose_encoder(accept)
    assert _exposition._renderer(encoder) is None
    families = rich()
    body = _exposition.bake(lambda: families, CollectorRegistry, accept, None, "")[2]
    assert body == theirs(accept, families)


@pytest.mark.parametrize("accept", ACCEPTS)
def test_a_name_outside_the_classic_characters_is_left_to_prometheus_client(
    accept: str | None,
) -> None:
    """A label or metric name the escapings would rewrite (a dot in it) makes the whole page
    prometheus-client's, so it is escaped as prometheus-client escapes it."""
    for families in (
        [("dotted", "gauge", "", "", samples(("dotted", {"a.b": "1"}, 1)))],
        [("dot.ted", "gauge", "", "", samples(("dot.ted", {}, 1)))],
    ):
        body = _exposition.bake(lambda: families, CollectorRegistry, accept, None, "")[2]  # noqa: B023
        assert body == theirs(accept, families)


def test_a_name_filter_is_answered_from_the_registry() -> None:
    """``?name[]=`` is answered by prometheus-client from the registry, with that family only."""
    registry = CollectorRegistry()
    Counter("kept", "Kept.", registry=registry).inc(3)
    Counter("other", "Other.", registry=registry).inc()

    def source() -> list[Family]:
        raise AssertionError("the filtered page is not read from the merged families")

    body = _exposition.bake(source, lambda: registry, None, None, "name[]=kept_total")[2].decode()
    assert "kept_total 3.0" in body
    assert "other" not in body


def call(app: Any, method: str = "GET", path: str = "/metrics", **headers: str) -> Any:
    found: dict[str, Any] = {}

    def start_response(status: str, response_headers: list[tuple[str, str]]) -> None:
        found.update(status=status, headers=dict(response_headers))

    environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": "", **headers}
    found["body"] = b"".join(app(environ, start_response))
    return found


def test_the_wsgi_app_answers_as_prometheus_clients_does() -> None:
    """The WSGI app answers OPTIONS, refuses other methods, serves an empty favicon, and
    gzips the page when the client accepts it."""
    families = rich()
    app = _exposition.make_wsgi_app(lambda: families, CollectorRegistry)
    assert call(app, "OPTIONS")["headers"] == {"Allow": "OPTIONS,GET"}
    refused = call(app, "POST")
    assert refused["status"].startswith("405")
    assert call(app, path="/favicon.ico")["body"] == b""
    zipped = call(app, HTTP_ACCEPT=PROMETHEUS_3, HTTP_ACCEPT_ENCODING="gzip")
    assert zipped["headers"]["Content-Encoding"] == "gzip"
    assert gzip.decompress(zipped["body"]) == theirs(PROMETHEUS_3, families)


def test_the_asgi_app_serves_the_same_page() -> None:
    """The ASGI app serves the page and headers the WSGI app does."""
    import asyncio

    families = rich()
    app = _exposition.make_asgi_app(lambda: families, CollectorRegistry)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "headers": [(b"accept", PROMETHEUS_2.encode())], "query_string": b""}
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 200
    assert dict(sent[0]["headers"])[b"Content-Type"].startswith(b"application/openmetrics-text")
    assert sent[1]["body"] == theirs(PROMETHEUS_2, families)


#: A process of the same server that counts and exits (its numbers are folded into the totals).
EXITED = """
import sys
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram
from sightline._multiprocess import Server, Snapshots
from sightline._store import Store

registry = CollectorRegistry()
Counter("jobs", "Jobs.", ["queue"], registry=registry).labels("b").inc(5)
Histogram("job_seconds", "Job time.", registry=registry).observe(3, exemplar={"trace_id": "cd"})
store = Store.open(Path(sys.argv[1]), sys.argv[2])
Snapshots(store, "test", registry, Server("gunicorn", int(sys.argv[3]), workers=2)).close()
"""


@pytest.mark.parametrize("accept", ACCEPTS)
def test_a_merged_server_page_is_the_one_its_registry_gives(tmp_path: Path, accept: str) -> None:
    """A real merged view (an exited process's totals and a live one's snapshot, exemplars,
    per-process gauges, the server's gauges) is served as prometheus-client writes it."""
    import os
    import subprocess
    import sys

    store = Store.open(tmp_path, "store")
    server = Server("gunicorn", os.getpid(), workers=2)
    subprocess.run(
        [sys.executable, "-c", EXITED, str(tmp_path), "store", str(os.getpid())], check=True
    )
    registry = CollectorRegistry()
    Counter("jobs", "Jobs.", ["queue"], registry=registry).labels("a").inc(2)
    Histogram("job_seconds", "Job time.", registry=registry).observe(
        0.2, exemplar={"trace_id": "ab"}
    )
    Gauge("process_open_things", "Per process.", registry=registry).set(4)
    scrape = Scrape(Snapshots(store, "test", registry, server))
    encoder, _ = exposition.choose_encoder(accept or "")
    for _ in range(2):  # the second merge reads the totals the first wrote
        page = call(scrape.wsgi, HTTP_ACCEPT=accept) if accept else call(scrape.wsgi)
        assert page["body"] == encoder(scrape.registry)
    body = page["body"]
    assert b"server_workers_live 1.0" in body
    assert b'jobs_total{queue="a"} 2.0' in body
    assert b'jobs_total{queue="b"} 5.0' in body
    assert b"job_seconds_count 2.0" in body
    if accept and "openmetrics" in accept:
        assert b'# {trace_id="ab"} 0.2' in body
        assert b'# {trace_id="cd"} 3.0' in body


def test_the_collector_is_held_off_while_a_page_is_merged_and_left_as_found() -> None:
    """The cyclic garbage collector is off while the families are merged, on again after
    the scrape, and still off after it if the app had turned it off."""
    import gc

    seen: list[bool] = []

    def source() -> list[Family]:
        seen.append(gc.isenabled())
        return rich()

    assert gc.isenabled()
    _exposition.bake(source, CollectorRegistry, PROMETHEUS_3, None, "")
    assert seen == [False]
    assert gc.isenabled()
    gc.disable()
    try:
        _exposition.bake(source, CollectorRegistry, None, None, "")
        assert not gc.isenabled()
    finally:
        gc.enable()
