"""Traces: server spans over OTLP/HTTP protobuf, decoded by a loopback receiver."""

from __future__ import annotations

from typing import Any

import pytest
import sightline
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.exposition import generate_latest

from .helpers import call_wsgi
from .receivers import Backend, attributes

flask = pytest.importorskip("flask")


def make_app() -> Any:
    app = flask.Flask("shop")

    @app.route("/users/<int:uid>")
    def user(uid: int) -> str:
        return "ok"

    @app.route("/boom")
    def boom() -> str:
        raise KeyError("missing")

    return app


def start(backend: Backend, registry: CollectorRegistry, **settings: Any) -> None:
    sightline.init(
        service="shop",
        service_version="2.1",
        environment="staging",
        registry=registry,
        metrics_addr="off",
        otlp_endpoint=backend.url,
        bsp_schedule_delay=0.05,
        logs=False,
        **settings,
    )


def server_spans(backend: Backend) -> list[tuple[dict[str, Any], Span]]:
    return [(r, s) for r, s in backend.spans() if s.kind == Span.SPAN_KIND_SERVER]


def test_server_span_carries_stable_http_attributes(
    backend: Backend, registry: CollectorRegistry
) -> None:
    """A request becomes one SERVER span named after the route, with the stable attributes."""
    start(backend, registry)
    call_wsgi(
        make_app(),
        "/users/7",
        headers={
            "User-Agent": "probe/1.0",
            "X-Forwarded-For": "203.0.113.9, 10.0.0.1",
            "Host": "shop.example:8443",
            "Authorization": "Bearer s3cr3t",
            "Cookie": "sid=abc",
        },
        query="q=shoes&api_key=k123&Password=hunter2&session_id=zz&page=2",
    )
    sightline.shutdown()  # flushes
    [(resource, span)] = server_spans(backend)
    assert span.name == "GET /users/<int:uid>"
    attrs = attributes(span.attributes)
    assert attrs == {
        "http.request.method": "GET",
        "http.route": "/users/<int:uid>",
        "http.response.status_code": 200,
        "url.path": "/users/7",
        "url.scheme": "http",
        "url.query": "q=shoes&api_key=REDACTED&Password=REDACTED&session_id=REDACTED&page=2",
        "server.address": "shop.example",
        "server.port": 8443,
        "client.address": "203.0.113.9",
        "user_agent.original": "probe/1.0",
        "network.protocol.version": "1.1",
    }
    wire = span.SerializeToString()
    for secret in (b"s3cr3t", b"sid=abc", b"k123", b"hunter2"):
        assert secret not in wire
    assert span.status.code == Status.STATUS_CODE_UNSET
    assert resource["service.name"] == "shop"
    assert resource["service.version"] == "2.1"
    assert resource["deployment.environment.name"] == "staging"
    assert len(resource["service.instance.id"]) == 36
    assert resource["process.pid"] > 0
    assert resource["host.name"]


def test_errors_set_span_status_and_record_the_exception(
    backend: Backend, registry: CollectorRegistry
) -> None:
    """A view's exception marks the span ERROR with error.type and an exception event."""
    start(backend, registry)
    call_wsgi(make_app(), "/boom")
    call_wsgi(make_app(), "/nowhere")
    sightline.shutdown()
    spans = {s.name: s for _, s in server_spans(backend)}
    boom = spans["GET /boom"]
    assert boom.status.code == Status.STATUS_CODE_ERROR
    assert attributes(boom.attributes)["error.type"] == "KeyError"
    [event] = boom.events
    assert event.name == "exception"
    assert attributes(event.attributes)["exception.type"].endswith("KeyError")
    missing = spans["GET"]
    assert missing.status.code == Status.STATUS_CODE_UNSET, "a 404 is not a server error"
    assert attributes(missing.attributes)["http.response.status_code"] == 404
    assert "http.route" not in attributes(missing.attributes)


def test_incoming_traceparent_and_baggage_are_honoured(
    backend: Backend, registry: CollectorRegistry
) -> None:
    """A request with traceparent continues the caller's trace under the caller's span."""
    seen: dict[str, Any] = {}
    start(backend, registry)
    app = make_app()

    @app.route("/peek")
    def peek() -> str:
        from opentelemetry import baggage

        seen["tenant"] = baggage.get_baggage("tenant")
        return "ok"

    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    call_wsgi(
        app,
        "/peek",
        headers={
            "traceparent": f"00-{trace_id}-{parent_id}-01",
            "baggage": "tenant=acme",
        },
    )
    sightline.shutdown()
    [(_, span)] = server_spans(backend)
    assert span.trace_id.hex() == trace_id
    assert span.parent_span_id.hex() == parent_id
    assert seen["tenant"] == "acme"


@pytest.mark.parametrize(
    "traceparent", ["garbage", "00-" + "0" * 32 + "-" + "0" * 16 + "-01", "ff-zz-yy-01", "x" * 5000]
)
def test_malformed_traceparent_starts_a_new_trace(
    backend: Backend, registry: CollectorRegistry, traceparent: str
) -> None:
    """A malformed traceparent is ignored: the request still succeeds as a new trace root."""
    start(backend, registry)
    assert call_wsgi(make_app(), "/users/1", headers={"traceparent": traceparent})[0] == "200 OK"
    sightline.shutdown()
    [(_, span)] = server_spans(backend)
    assert span.parent_span_id == b""


def test_unsampled_requests_export_nothing(backend: Backend, registry: CollectorRegistry) -> None:
    """With a ratio of 0 nothing is exported, and metrics are still recorded."""
    start(backend, registry, traces_sampler="traceidratio", traces_sampler_arg=0.0)
    for _ in range(20):
        call_wsgi(make_app(), "/users/1")
    sightline.shutdown()
    assert backend.spans() == []
    assert registry.get_sample_value("sightline_exported_total", {"signal": "traces"}) is None


def test_attributes_are_built_only_for_recording_spans(
    backend: Backend, registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unsampled request never builds span attributes; a sampled one does, once."""
    from sightline.integrations import wsgi

    calls: list[str] = []
    original = wsgi.span_attributes

    def counting(environ: Any, method: str, redact: tuple[str, ...]) -> dict[str, Any]:
        calls.append(environ["PATH_INFO"])
        return original(environ, method, redact)

    monkeypatch.setattr(wsgi, "span_attributes", counting)
    start(backend, registry, traces_sampler="always_off")
    call_wsgi(make_app(), "/users/1")
    assert calls == []
    sightline.shutdown()
    start(backend, registry, traces_sampler="always_on")
    call_wsgi(make_app(), "/users/2")
    assert calls == ["/users/2"]


def test_exemplar_is_the_server_span(backend: Backend, registry: CollectorRegistry) -> None:
    """The duration exemplar names the exported server span."""
    start(backend, registry)
    call_wsgi(make_app(), "/users/3")
    exposition = generate_latest(registry).decode()
    sightline.shutdown()
    [(_, span)] = server_spans(backend)
    assert f'span_id="{span.span_id.hex()}",trace_id="{span.trace_id.hex()}"' in exposition


def test_export_counts_and_headers(backend: Backend, registry: CollectorRegistry) -> None:
    """Exported spans are counted; configured OTLP headers and gzip are sent."""
    start(backend, registry, otlp_headers="x-api-key=abc%20def")
    for _ in range(3):
        call_wsgi(make_app(), "/users/1")
    assert backend.wait_for(lambda: len(backend.spans()) == 3)

    def exported() -> float | None:  # counted once the answer is read, just after arrival
        return registry.get_sample_value("sightline_exported_total", {"signal": "traces"})

    assert backend.wait_for(lambda: exported() == 3), exported()
    assert backend.headers[0]["x-api-key"] == "abc def"
    assert backend.headers[0]["content-encoding"] == "gzip"
    assert backend.headers[0]["content-type"] == "application/x-protobuf"


def test_app_tracer_provider_is_reused(registry: CollectorRegistry) -> None:
    """An SDK provider the app installed first receives Sightline's server spans."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        import sightline
        sightline.init(service="own", metrics_addr="off", logs=False)
        def app(environ, start_response):
            start_response("200 OK", [])
            return [b"x"]
        body = sightline.instrument_app(app)({"REQUEST_METHOD": "GET", "PATH_INFO": "/"},
                                             lambda *a: None)
        list(body); body.close()
        print("spans:", [s.name for s in exporter.get_finished_spans()])
    """)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "spans: ['GET']" in result.stdout


def test_the_sdk_loads_when_something_asks_for_a_tracer(backend: Backend) -> None:
    """``init()`` with traces on imports neither the OpenTelemetry SDK nor psutil; the first
    ``trace.get_tracer(...)`` span loads the SDK, is sampled as configured and reaches the
    collector beside Sightline's own spans; a processor the app adds through the global
    provider sees it too."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(f"""
        import sys
        import sightline
        sightline.init(service="lazy", metrics_addr="off", logs=False,
                       otlp_endpoint={backend.url!r}, bsp_schedule_delay=0.05)
        print("after init:", "opentelemetry.sdk.trace" in sys.modules, "psutil" in sys.modules)
        def app(environ, start_response):
            start_response("200 OK", [])
            return [b"x"]
        body = sightline.instrument_app(app)({{"REQUEST_METHOD": "GET", "PATH_INFO": "/"}},
                                             lambda *a: None)
        list(body); body.close()
        print("after a request:", "opentelemetry.sdk.trace" in sys.modules)
        from opentelemetry import trace
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        seen = InMemorySpanExporter()
        trace.get_tracer_provider().add_span_processor(SimpleSpanProcessor(seen))
        with trace.get_tracer("app.code").start_as_current_span("work") as span:
            print("recording:", span.is_recording())
        print("seen:", [s.name for s in seen.get_finished_spans()])
        sightline.shutdown()
    """)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "after init: False False" in result.stdout
    assert "after a request: False" in result.stdout
    assert "recording: True" in result.stdout
    assert "seen: ['work']" in result.stdout
    names = {(resource.get("service.name"), span.name) for resource, span in backend.spans()}
    assert names == {("lazy", "GET"), ("lazy", "work")}


def test_trace_joins_two_apps_over_http(backend: Backend, tmp_path: Any) -> None:
    """App A calling app B with requests yields one trace: A server -> A client -> B server."""
    pytest.importorskip("gunicorn")
    pytest.importorskip("opentelemetry.instrumentation.requests")
    from .servers import gunicorn

    common = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": backend.url,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "SIGHTLINE_METRICS_ADDR": "off",
        "SIGHTLINE_LOKI_URL": backend.url,
    }
    app = "tests.apps.chain_app:app"
    (tmp_path / "b").mkdir()
    (tmp_path / "a").mkdir()
    with (
        gunicorn(app, {**common, "SIGHTLINE_SERVICE": "b"}, [], tmp_path / "b") as b_url,
        gunicorn(
            app, {**common, "SIGHTLINE_SERVICE": "a", "DOWNSTREAM": b_url}, [], tmp_path / "a"
        ) as a_url,
    ):
        import urllib.request

        with urllib.request.urlopen(f"{a_url}/call", timeout=10) as response:
            assert response.read() == b"user 5"

        def chain() -> list[tuple[dict[str, Any], Span]]:
            return [(r, s) for r, s in backend.spans() if "/health" not in s.name]

        assert backend.wait_for(lambda: len(chain()) >= 3)
        spans = {(r["service.name"], s.kind): s for r, s in chain()}
        a_server = spans[("a", Span.SPAN_KIND_SERVER)]
        a_client = spans[("a", Span.SPAN_KIND_CLIENT)]
        b_server = spans[("b", Span.SPAN_KIND_SERVER)]
        assert a_server.name == "GET /call"
        assert b_server.name == "GET /users/<int:uid>"
        assert a_server.trace_id == a_client.trace_id == b_server.trace_id
        assert a_client.parent_span_id == a_server.span_id
        assert b_server.parent_span_id == a_client.span_id

        # The log lines written while serving carry the same trace, in Loki's metadata.
        trace_id = a_server.trace_id.hex()
        assert backend.wait_for(
            lambda: len([e for e in backend.log_entries() if e[3].get("trace_id") == trace_id]) >= 2
        )
        by_service = {
            e[0]["service_name"]: e
            for e in backend.log_entries()
            if e[3].get("trace_id") == trace_id
        }
        assert by_service["b"][3]["span_id"] == b_server.span_id.hex()
        assert by_service["a"][3]["span_id"] == a_server.span_id.hex()


@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")
def test_forked_worker_exports_with_its_own_identity(
    backend: Backend, registry: CollectorRegistry
) -> None:
    """Spans from a forked child carry the child's pid and a new service.instance.id."""
    import os

    from sightline import _resource

    start(backend, registry)
    call_wsgi(make_app(), "/users/1")  # the parent's export thread is running
    pid = os.fork()
    if pid == 0:  # pragma: no cover (child)
        code = 1
        try:
            call_wsgi(make_app(), "/users/2")
            sightline.shutdown()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert status == 0
    sightline.shutdown()
    by_path = {attributes(s.attributes)["url.path"]: r for r, s in server_spans(backend)}
    assert set(by_path) == {"/users/1", "/users/2"}, "each span exported once, by its process"
    assert by_path["/users/1"]["process.pid"] == os.getpid()
    assert by_path["/users/2"]["process.pid"] == pid
    assert by_path["/users/1"]["service.instance.id"] == _resource.instance_id()
    assert by_path["/users/2"]["service.instance.id"] != _resource.instance_id()


@pytest.mark.parametrize("client", ["requests", "urllib3", "httpx"])
def test_client_spans_redact_secrets_in_urls(
    backend: Backend, registry: CollectorRegistry, client: str
) -> None:
    """Outgoing calls made through the client instrumentations export their URL with the
    values of secret-named query keys and any user:password replaced, as server spans do."""
    library = pytest.importorskip(client)
    pytest.importorskip(f"opentelemetry.instrumentation.{client}")
    start(backend, registry)
    authority = backend.url.removeprefix("http://")
    url = f"http://me:hunter2@{authority}/api?token=t1&password=p2&secret=s3&session=q4&page=5"
    if client == "requests":
        library.get(url, timeout=5)
    elif client == "urllib3":
        library.PoolManager().request("GET", url, timeout=5)
    else:
        library.get(url, timeout=5)
    sightline.shutdown()
    [client_span] = [s for _, s in backend.spans() if s.kind == Span.SPAN_KIND_CLIENT]
    shown = attributes(client_span.attributes)
    urls = [v for k, v in shown.items() if k in ("url.full", "http.url")]
    assert urls, shown
    for value in urls:
        for secret in ("t1", "p2", "s3", "q4", "hunter2", "me:"):
            assert secret not in value, (value, secret)
        assert "page=5" in value


@pytest.mark.parametrize("sampler", ["parentbased_always_on", "always_off"])
def test_message_headers_carry_what_the_propagators_write(
    backend: Backend, registry: CollectorRegistry, sampler: str
) -> None:
    """A task's headers get the traceparent and tracestate OpenTelemetry's propagators
    would write, sampled or not, with or without a tracestate."""
    from opentelemetry import propagate, trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState
    from sightline import _state
    from sightline._spans import LeanSpan
    from sightline._tasks import publish_span
    from sightline.tracing import _is_default_textmap

    start(backend, registry, traces_sampler=sampler)
    agent = _state.current
    assert agent is not None
    assert agent.tracing is not None
    remote = SpanContext(
        0xABC, 0xDEF, True, TraceFlags(TraceFlags.SAMPLED), TraceState([("vendor", "x1")])
    )
    for parent in (None, trace.set_span_in_context(NonRecordingSpan(remote))):
        token = trace.context_api.attach(parent) if parent is not None else None
        try:
            span = publish_span(agent, ("celery", "q", "t"), "id-1")
        finally:
            if token is not None:
                trace.context_api.detach(token)
        # Sightline's own span and the default propagators: the direct writer's case.
        assert type(span) is LeanSpan
        assert _is_default_textmap(propagate.get_global_textmap())
        ours: dict[str, str] = {}
        agent.tracing.inject(ours, span)
        theirs: dict[str, str] = {}
        propagate.inject(theirs, context=trace.set_span_in_context(span))
        assert ours == theirs
        assert ("tracestate" in ours) == (parent is not None)
        span.end()


def test_message_headers_carry_baggage_and_other_propagators(
    backend: Backend, registry: CollectorRegistry
) -> None:
    """With baggage in the context, or propagators other than the default, the headers are
    what the global propagator writes (baggage included)."""
    from opentelemetry import baggage, context, propagate, trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    from sightline import _state
    from sightline._tasks import publish_span

    start(backend, registry)
    agent = _state.current
    assert agent is not None
    assert agent.tracing is not None
    token = context.attach(baggage.set_baggage("tenant", "acme"))
    try:
        span = publish_span(agent, ("celery", "q", "t"), "id-1")
        carrier: dict[str, str] = {}
        agent.tracing.inject(carrier, span)
        assert carrier["baggage"] == "tenant=acme"
        assert carrier["traceparent"].split("-")[2] == span.hex_ids[1]
    finally:
        context.detach(token)
    default = propagate.get_global_textmap()
    propagate.set_global_textmap(TraceContextTextMapPropagator())
    try:
        carrier = {}
        agent.tracing.inject(carrier, span)
        expected: dict[str, str] = {}
        propagate.inject(expected, context=trace.set_span_in_context(span))
        assert carrier == expected
    finally:
        propagate.set_global_textmap(default)
    span.end()


@pytest.mark.internal_errors_expected
def test_a_failing_sdk_provider_gives_the_app_a_tracer_and_reports_why(
    monkeypatch: pytest.MonkeyPatch, internal_errors: list[BaseException]
) -> None:
    """If the SDK provider behind Sightline's stand-in cannot be made, ``get_tracer`` still
    answers (a no-op tracer, so app code runs on) and the cause is reported and counted."""
    from opentelemetry import trace
    from sightline import tracing

    def broken() -> Any:
        raise RuntimeError("no SDK here")

    monkeypatch.setattr(tracing, "sdk_provider", broken)
    tracer = tracing._StandIn().get_tracer("app.code")
    assert isinstance(tracer, trace.NoOpTracer)
    with tracer.start_as_current_span("work") as span:
        assert not span.is_recording()
    assert [str(e) for e in internal_errors] == ["no SDK here"]
