"""Instruments: the cardinality guard, exemplars and target_info."""

from __future__ import annotations

import os
from typing import Any

import pytest
import sightline
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.samples import Exemplar
from sightline.metrics import OVERFLOW, Counter, Histogram

from .helpers import call_wsgi, count, series

DURATION = "http_server_request_duration_seconds"


def hello(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [])
    return [b"ok"]


def test_cardinality_guard_folds_past_the_cap(registry: CollectorRegistry) -> None:
    """Past SIGHTLINE_MAX_SERIES label sets, observations share one overflow series and count."""
    sightline.init(service="t", registry=registry, metrics_addr="off", max_series=3)
    app = sightline.instrument_app(hello, route_of=lambda environ: environ["PATH_INFO"])
    for i in range(10):
        call_wsgi(app, f"/r{i}")
    labels = series(registry, DURATION)
    assert len(labels) == 4
    assert count(registry, "_overflow", "_overflow", method="_overflow") == 7
    assert registry.get_sample_value("sightline_series_folded_total", {"metric": DURATION}) == 7
    call_wsgi(app, "/r1")
    assert count(registry, "/r1", "200") == 2, "label sets seen before the cap keep their series"


def test_distinct_unmatched_paths_do_not_grow_series(agent: CollectorRegistry) -> None:
    """10,000 requests to distinct unmatched Flask paths leave routes + overflow series at most."""
    flask = pytest.importorskip("flask")
    app = flask.Flask("t")

    @app.route("/users/<int:uid>")
    def user(uid: int) -> str:
        return "u"

    @app.route("/health")
    def health() -> str:
        return "ok"

    call_wsgi(app, "/users/1")
    call_wsgi(app, "/health")
    for i in range(10_000):
        call_wsgi(app, f"/random/{i}/{os.urandom(4).hex()}")
    labels = series(agent, DURATION)
    assert len(labels) <= 2 + 1 + 1  # two routes, the unmatched value, the overflow series
    assert count(agent, "_unmatched", "404") == 10_000
    assert b"/random/" not in generate_latest(agent)


def test_exemplar_carries_the_recording_span(agent: CollectorRegistry) -> None:
    """An observation made under a recording SDK span carries its trace and span id."""
    sdk = pytest.importorskip("opentelemetry.sdk.trace")
    tracer = sdk.TracerProvider().get_tracer("test")
    app = sightline.instrument_app(hello)
    with tracer.start_as_current_span("request") as span:
        call_wsgi(app)
    ctx = span.get_span_context()
    text = generate_openmetrics(agent).decode()
    expected = f'# {{span_id="{ctx.span_id:016x}",trace_id="{ctx.trace_id:032x}"}}'
    assert expected in text


def test_no_exemplar_without_a_recording_span(agent: CollectorRegistry) -> None:
    """Without a span, or with exemplars off, no exemplar is attached."""
    call_wsgi(sightline.instrument_app(hello))
    assert "trace_id" not in generate_openmetrics(agent).decode()


def test_target_info_carries_resource_attributes(
    registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """target_info exposes service name, version, environment, instance id and extra attributes."""
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=prod,team=pay")
    sightline.init(
        service="checkout", service_version="1.4.2", registry=registry, metrics_addr="off"
    )
    [labels] = [s.labels for f in registry.collect() if f.name == "target" for s in f.samples]
    assert labels["service_name"] == "checkout"
    assert labels["service_version"] == "1.4.2"
    assert labels["deployment_environment_name"] == "prod"
    assert labels["team"] == "pay"
    assert len(labels["service_instance_id"]) == 36


@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")
def test_instance_id_is_renewed_after_fork() -> None:
    """A forked worker reports a service.instance.id different from its parent's."""
    from sightline import _resource

    parent = _resource.instance_id()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (child)
        os.write(write, _resource.instance_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 100).decode()
    assert child
    assert child != parent


def test_histogram_samples_are_those_prometheus_client_builds() -> None:
    """A histogram's collected samples (buckets, count, sum, exemplars, the overflow series)
    are exactly those ``HistogramMetricFamily.add_metric`` makes from the same counts."""
    folded = Counter("folded", "Folded.", ["metric"])
    histogram = Histogram("latency_seconds", "Latency.", ["route", "code"], (0.1, 1.0), 2, folded)
    histogram.child(("/a", "200")).observe(0.05, {"trace_id": "ab"})
    histogram.child(("/a", "200")).observe(3.0)
    histogram.child(("/b", "500")).observe(0.5)
    histogram.child(("/c", "200")).observe(0.2)  # past the cap of 2: the overflow series
    ours = next(iter(histogram.collect()))

    expected = HistogramMetricFamily("latency_seconds", "Latency.", labels=["route", "code"])
    for key, child in [
        *histogram._children.items(),
        ((OVERFLOW, OVERFLOW), histogram._overflow),
    ]:
        assert child is not None
        counts, total, exemplars = child.snapshot()
        buckets: list[Any] = []
        cumulative = 0
        for i, le in enumerate(["0.1", "1.0", "+Inf"]):
            cumulative += counts[i]
            held = exemplars[i]
            buckets.append((le, cumulative, Exemplar(*held)) if held else (le, cumulative))
        expected.add_metric(list(key), buckets, total)
    assert ours.samples == expected.samples
    assert len(ours.samples) == 3 * 5
    assert ours.samples[0].exemplar is not None
    assert ours.samples[0].exemplar.labels == {"trace_id": "ab"}
