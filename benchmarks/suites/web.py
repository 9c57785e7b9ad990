"""Per request of a hello-world app, served in-process: the ``metrics``, ``full``,
``fastapi`` and ``django`` suites (see ``overhead.py``)."""

from __future__ import annotations

import gc
import io
import logging
import sys
import threading
import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from flask import Flask
from prometheus_client import CollectorRegistry
from werkzeug.test import EnvironBuilder

from suites.common import (
    LOG_MESSAGE,
    LOG_UID,
    Probe,
    Suite,
    check_exported,
    check_log_line,
    jsonlogger_handler,
    on_root,
    otel_sdk,
    plain_log_handler,
    samples,
    sightline_full,
    sightline_metrics,
    versus,
)

if TYPE_CHECKING:
    from fastapi import FastAPI

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


ASGIApp = Callable[[dict[str, Any], Callable[..., Any], Callable[..., Any]], Awaitable[None]]


class Variant(NamedTuple):
    """What a setup built: the app and how the worker checks it did its job."""

    app: WSGIApp | ASGIApp
    #: Requests the variant recorded in its metrics, read after the timed requests.
    recorded: Probe | None = None
    #: The handler the view's log line goes through; one line is captured and checked.
    log: logging.StreamHandler[Any] | None = None
    #: Flushes the spans after the timed requests; returns how many the sink received.
    exported: Callable[[], int] | None = None
    #: The fraction of requests the variant samples into exported spans.
    sampled: float = 1.0
    #: Spans a sampled request exports (the server span, and any internal spans).
    spans_per_request: int = 1
    #: Whether ``app`` is an ASGI app (driven by :func:`asgi_driver`) rather than WSGI.
    asgi: bool = False
    #: The path requested; Django's pattern ends with a slash.
    path: str = f"/users/{LOG_UID}"


Setup = Callable[[], Variant]


def hello_app(log_line: bool = False) -> Flask:
    app = Flask("bench")
    log = logging.getLogger("bench")

    def user(uid: int) -> str:
        return f"hello {uid}"

    def user_logged(uid: int) -> str:
        log.info(LOG_MESSAGE, extra={"uid": uid})
        return f"hello {uid}"

    app.add_url_rule("/users/<int:uid>", "user", user_logged if log_line else user)
    return app


def setup_bare() -> Variant:
    return Variant(hello_app())


def setup_pfe() -> Variant:
    from prometheus_flask_exporter import PrometheusMetrics

    registry, app = CollectorRegistry(), hello_app()
    PrometheusMetrics(app, path=None, registry=registry)  # path=None: no /metrics route
    return Variant(app, samples(registry, "flask_http_request_total"))


def setup_sightline() -> Variant:
    probe = samples(sightline_metrics(), "http_server_request_duration_seconds_count")
    return Variant(hello_app(), probe)


#: The floor recorder's bucket bounds: OpenTelemetry's for HTTP server durations, as Sightline's.
FLOOR_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)


class FloorRecorder:
    """A minimal recorder of request durations at the WSGI level, written in Python as
    Sightline is: a reference for the ``metrics`` suite, near the least such a recorder
    can cost.

    Per request: a clock read at the start and one once the server has closed the body
    (a streamed body is timed until then), the status taken from ``start_response``, the
    body passed through a generator (to see an error raised half-way), and one
    observation: its bucket found by bisection and counted, with the sum, under a lock,
    in a histogram per status code. An app raising before it returns a body, or a body
    raising half-way, is a 500. Nothing else: no route, method, in-flight gauge,
    exemplar, cardinality cap or queue-time header, which a useful recorder (Sightline,
    prometheus-flask-exporter) adds on top. A request is recorded, and its body closed,
    once, however often the server closes it. Its count is the variant's ``recorded``.
    """

    def __init__(self, app: WSGIApp, clock: Callable[[], float] = time.perf_counter) -> None:
        self.app = app
        self.clock = clock
        self.lock = threading.Lock()
        self.histograms: dict[str, list[float]] = {}  # status -> bucket counts, then the sum

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        exchange = FloorExchange(self, start_response)
        try:
            exchange.body = self.app(environ, exchange.start_response)
        except BaseException:
            exchange.status = "500"
            exchange.close()
            raise
        return exchange

    def record(self, status: str, elapsed: float) -> None:
        with self.lock:
            buckets = self.histograms.get(status)
            if buckets is None:
                buckets = self.histograms[status] = [0.0] * (len(FLOOR_BOUNDS) + 2)
            buckets[bisect_left(FLOOR_BOUNDS, elapsed)] += 1
            buckets[-1] += elapsed

    def count(self) -> float:
        return sum(sum(buckets[:-1]) for buckets in self.histograms.values())


class FloorExchange:
    """One request in :class:`FloorRecorder`: the ``start_response`` hook and the body."""

    __slots__ = ("body", "recorder", "server_start_response", "started", "status")

    def __init__(self, recorder: FloorRecorder, start_response: Callable[..., Any]) -> None:
        self.started = recorder.clock()
        self.recorder: FloorRecorder | None = recorder
        self.server_start_response = start_response
        self.status = "500"
        self.body: Iterable[bytes] = ()

    def start_response(self, status: str, headers: Any, exc_info: Any = None) -> Any:
        self.status = status[:3]
        return self.server_start_response(status, headers, exc_info)

    def __iter__(self) -> Iterator[bytes]:
        try:
            for chunk in self.body:  # noqa: UP028 (yield from would close the body twice)
                yield chunk
        except GeneratorExit:
            raise
        except BaseException:
            self.status = "500"
            raise

    def close(self) -> None:
        body, self.body = self.body, ()
        close = getattr(body, "close", None)
        if close is not None:
            close()
        recorder, self.recorder = self.recorder, None
        if recorder is not None:
            recorder.record(self.status, recorder.clock() - self.started)


def setup_floor() -> Variant:
    app = hello_app()
    recorder = FloorRecorder(app.wsgi_app)
    app.wsgi_app = recorder  # type: ignore[method-assign]
    return Variant(app, recorder.count)


def setup_bare_log() -> Variant:
    return Variant(hello_app(log_line=True), log=plain_log_handler())


def setup_incumbent(ratio: float | None = None) -> Variant:
    from opentelemetry.instrumentation.flask import FlaskInstrumentor
    from prometheus_flask_exporter import PrometheusMetrics

    provider, exported = otel_sdk(ratio)
    registry, app = CollectorRegistry(), hello_app(log_line=True)
    FlaskInstrumentor().instrument_app(app, tracer_provider=provider)  # type: ignore[no-untyped-call]
    PrometheusMetrics(app, path=None, registry=registry)
    handler = on_root(jsonlogger_handler())
    return Variant(
        app,
        samples(registry, "flask_http_request_total"),
        handler,
        exported,
        1.0 if ratio is None else ratio,
    )


def setup_sightline_full(ratio: float | None = None, served: bool = False) -> Variant:
    recorded, handler, exported = sightline_full(ratio, served=served)
    sampled = 1.0 if ratio is None else ratio
    return Variant(hello_app(log_line=True), recorded, handler, exported, sampled)


def hello_fastapi(log_line: bool = True) -> FastAPI:
    """The FastAPI app: ``GET /users/{uid}`` logs its line (if ``log_line``) and answers
    ``hello {uid}``."""
    from fastapi import FastAPI
    from fastapi.responses import PlainTextResponse

    app = FastAPI()
    log = logging.getLogger("bench")

    @app.get("/users/{uid}", response_class=PlainTextResponse)
    async def user(uid: int) -> str:
        if log_line:
            log.info(LOG_MESSAGE, extra={"uid": uid})
        return f"hello {uid}"

    return app


def setup_fastapi_bare() -> Variant:
    app = hello_fastapi()
    # Recent FastAPI has OpenTelemetry telemetry of its own, which switches itself on once
    # a provider is configured; the baseline must pay for none. The API is loaded (FastAPI
    # imports it), but the SDK is not and no provider is set.
    from opentelemetry import trace

    if "opentelemetry.sdk" in sys.modules or type(trace.get_tracer_provider()).__name__ != (
        "ProxyTracerProvider"
    ):
        raise SystemExit("fastapi_bare: the OpenTelemetry SDK is loaded or a provider is set")
    return Variant(app, log=plain_log_handler(), asgi=True)


def setup_fastapi_incumbent() -> Variant:
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    from prometheus_fastapi_instrumentator import Instrumentator

    provider, exported = otel_sdk()
    registry, app = CollectorRegistry(), hello_fastapi()
    FastAPIInstrumentor.instrument_app(app, tracer_provider=provider)
    Instrumentator(registry=registry).instrument(app)  # no .expose(app): no /metrics route
    handler = on_root(jsonlogger_handler())
    # The ASGI middleware also records an internal span for each ``http send`` (the
    # response start and its body): three spans per request, all exported.
    return Variant(
        app,
        samples(registry, "http_requests_total"),
        handler,
        exported,
        spans_per_request=3,
        asgi=True,
    )


def setup_fastapi_sightline() -> Variant:
    recorded, handler, exported = sightline_full()
    return Variant(hello_fastapi(), recorded, handler, exported, asgi=True)


def setup_fastapi_metrics_bare() -> Variant:
    return Variant(hello_fastapi(log_line=False), asgi=True)


def setup_fastapi_metrics_incumbent() -> Variant:
    from prometheus_fastapi_instrumentator import Instrumentator

    registry, app = CollectorRegistry(), hello_fastapi(log_line=False)
    Instrumentator(registry=registry).instrument(app)  # no .expose(app): no /metrics route
    return Variant(app, samples(registry, "http_requests_total"), asgi=True)


def setup_fastapi_metrics_sightline() -> Variant:
    probe = samples(sightline_metrics(), "http_server_request_duration_seconds_count")
    return Variant(hello_fastapi(log_line=False), probe, asgi=True)


DJANGO_PATH = f"/users/{LOG_UID}/"


def hello_django(
    apps: Sequence[str] = (),
    middleware: Sequence[str] = (),
    instrument: Callable[[], None] | None = None,
    log_line: bool = True,
) -> WSGIApp:
    """A minimal Django project: ``users/<int:uid>/`` in an included URLconf, no database;
    the view logs its line if ``log_line``.

    Settings are configured in-process (once per process: each run is its own process);
    ``instrument`` runs once they are, before the WSGI handler loads the middleware.
    """
    import types

    from django.conf import settings
    from django.core.wsgi import get_wsgi_application
    from django.http import HttpRequest, HttpResponse
    from django.urls import include, path

    log = logging.getLogger("bench")

    def user(request: HttpRequest, uid: int) -> HttpResponse:
        if log_line:
            log.info(LOG_MESSAGE, extra={"uid": uid})
        return HttpResponse(f"hello {uid}", content_type="text/plain")

    settings.configure(
        DEBUG=False,
        ALLOWED_HOSTS=["*"],
        SECRET_KEY="bench",
        DATABASES={},
        INSTALLED_APPS=list(apps),
        MIDDLEWARE=list(middleware),
        ROOT_URLCONF="bench_urls",
    )
    # The project's urls.py includes the app's, as ``startproject`` and ``startapp`` lay out.
    users = sys.modules["bench_users"] = types.ModuleType("bench_users")
    users.urlpatterns = [path("users/<int:uid>/", user)]  # type: ignore[attr-defined]
    root = sys.modules["bench_urls"] = types.ModuleType("bench_urls")
    root.urlpatterns = [path("", include("bench_users"))]  # type: ignore[attr-defined]
    if instrument is not None:
        instrument()
    app: WSGIApp = get_wsgi_application()
    return app


#: django-prometheus as its README sets it up. It registers its metrics in the default
#: registry (another one takes subclassing its Metrics and both middlewares): each run is
#: its own process anyway.
DJANGO_PROMETHEUS: dict[str, Any] = {
    "apps": ["django_prometheus"],
    "middleware": [
        "django_prometheus.middleware.PrometheusBeforeMiddleware",
        "django_prometheus.middleware.PrometheusAfterMiddleware",
    ],
}


def setup_django_bare() -> Variant:
    return Variant(hello_django(), log=plain_log_handler(), path=DJANGO_PATH)


def setup_django_incumbent() -> Variant:
    from prometheus_client import REGISTRY

    provider, exported = otel_sdk()

    def instrument() -> None:
        from opentelemetry.instrumentation.django import DjangoInstrumentor

        # Puts its middleware first in settings.MIDDLEWARE.
        DjangoInstrumentor().instrument(tracer_provider=provider)

    app = hello_django(instrument=instrument, **DJANGO_PROMETHEUS)
    handler = on_root(jsonlogger_handler())
    return Variant(
        app,
        samples(REGISTRY, "django_http_responses_before_middlewares_total"),
        handler,
        exported,
        path=DJANGO_PATH,
    )


def setup_django_sightline() -> Variant:
    recorded, handler, exported = sightline_full()
    return Variant(hello_django(), recorded, handler, exported, path=DJANGO_PATH)


def setup_django_metrics_bare() -> Variant:
    return Variant(hello_django(log_line=False), path=DJANGO_PATH)


def setup_django_metrics_incumbent() -> Variant:
    from prometheus_client import REGISTRY

    app = hello_django(log_line=False, **DJANGO_PROMETHEUS)
    probe = samples(REGISTRY, "django_http_responses_before_middlewares_total")
    return Variant(app, probe, path=DJANGO_PATH)


def setup_django_metrics_sightline() -> Variant:
    probe = samples(sightline_metrics(), "http_server_request_duration_seconds_count")
    return Variant(hello_django(log_line=False), probe, path=DJANGO_PATH)


VARIANTS: dict[str, Setup] = {
    "bare": setup_bare,
    "pfe": setup_pfe,
    "floor": setup_floor,
    "sightline": setup_sightline,
    "bare_log": setup_bare_log,
    "incumbent": setup_incumbent,
    "incumbent_10pct": lambda: setup_incumbent(0.1),
    "sightline_full": setup_sightline_full,
    "sightline_10pct": lambda: setup_sightline_full(0.1),
    "sightline_served": lambda: setup_sightline_full(served=True),
    "fastapi_bare": setup_fastapi_bare,
    "fastapi_incumbent": setup_fastapi_incumbent,
    "fastapi_sightline": setup_fastapi_sightline,
    "django_bare": setup_django_bare,
    "django_incumbent": setup_django_incumbent,
    "django_sightline": setup_django_sightline,
    "fastapi_metrics_bare": setup_fastapi_metrics_bare,
    "fastapi_metrics_incumbent": setup_fastapi_metrics_incumbent,
    "fastapi_metrics_sightline": setup_fastapi_metrics_sightline,
    "django_metrics_bare": setup_django_metrics_bare,
    "django_metrics_incumbent": setup_django_metrics_incumbent,
    "django_metrics_sightline": setup_django_metrics_sightline,
}


class Driver(NamedTuple):
    """Serves ``n`` requests in-process and returns the last body; statuses are collected."""

    run: Callable[[int], bytes]
    statuses: list[Any]
    #: The status every response must have.
    ok: Any


def wsgi_driver(app: WSGIApp, path: str) -> Driver:
    template = EnvironBuilder(path=path, method="GET").get_environ()
    statuses: list[str] = []

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Callable[..., Any]:
        statuses.append(status)
        return statuses.append  # the write() callable, which Flask never calls

    def run(n: int) -> bytes:
        content = b""
        for _ in range(n):
            body = app(dict(template), start_response)
            content = b"".join(body)
            close = getattr(body, "close", None)
            if close is not None:
                close()
        return content

    return Driver(run, statuses, "200 OK")


def asgi_driver(app: ASGIApp, path: str) -> Driver:
    """Requests awaited one after another in one event loop, as an ASGI server calls the app.

    One ``asyncio.run`` per batch of requests, so the loop's start is not paid per request.
    """
    import asyncio

    template: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"localhost")],
        "client": ("127.0.0.1", 50000),
        "server": ("localhost", 80),
    }
    statuses: list[int] = []
    chunks: list[bytes] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    async def serve(n: int) -> bytes:
        content = b""
        for _ in range(n):
            chunks.clear()
            await app(dict(template), receive, send)
            content = b"".join(chunks)
        return content

    return Driver(lambda n: asyncio.run(serve(n)), statuses, 200)


def warmed(name: str, variant: Variant, warmup: int) -> tuple[Driver, bytes]:
    """``variant``'s driver, after a first request whose log line is checked and
    ``warmup`` more; returns the driver (its statuses cleared) and the first body."""
    if variant.asgi:
        driver = asgi_driver(variant.app, variant.path)  # type: ignore[arg-type]
    else:
        driver = wsgi_driver(variant.app, variant.path)  # type: ignore[arg-type]
    if variant.log is not None:
        stream = variant.log.setStream(io.StringIO())
        content = driver.run(1)
        captured = variant.log.setStream(stream)
        assert isinstance(captured, io.StringIO)
        check_log_line(name, variant.log, captured.getvalue())
    else:
        content = driver.run(1)
    driver.run(warmup)
    driver.statuses.clear()
    gc.collect()
    return driver, content


def check_served(name: str, driver: Driver, content: bytes, count: float, total: int) -> None:
    """Every response as expected, and the variant's metrics counted every request."""
    if content != b"hello 42" or set(driver.statuses) != {driver.ok} or count != total:
        raise SystemExit(f"{name}: got {set(driver.statuses)} {content!r}, {count} recorded")


def worker(name: str, requests: int, warmup: int) -> dict[str, Any]:
    """Set up one variant, check it, warm up, time ``requests`` requests, check what it did."""
    variant = VARIANTS[name]()
    driver, content = warmed(name, variant, warmup)
    start = time.perf_counter_ns()
    driver.run(requests)
    elapsed = time.perf_counter_ns() - start
    total = 1 + warmup + requests
    count = variant.recorded() if variant.recorded is not None else total
    check_served(name, driver, content, count, total)
    result: dict[str, Any] = {"us_per_request": elapsed / requests / 1000}
    if variant.exported is not None:
        per_request = variant.spans_per_request
        result["spans"] = spans = variant.exported()
        result["spans_share"] = spans / (total * per_request)  # requests whose spans arrived
        check_exported(name, spans, total, variant.sampled, per_request)
    return result


#: The libraries whose versions a full-stack report names (the ``full`` and ``paced`` suites).
FULL_STACK_LIBRARIES = (
    "flask",
    "werkzeug",
    "prometheus-client",
    "prometheus-flask-exporter",
    "opentelemetry-sdk",
    "opentelemetry-instrumentation-flask",
    "opentelemetry-exporter-otlp-proto-http",
    "python-json-logger",
)

#: The libraries whose versions the FastAPI and Django reports name (their metrics suites';
#: the full-stack suites add OpenTelemetry's).
FASTAPI_METRICS_LIBRARIES = (
    "fastapi",
    "starlette",
    "prometheus-client",
    "prometheus-fastapi-instrumentator",
)
DJANGO_METRICS_LIBRARIES = ("django", "prometheus-client", "django-prometheus")

SUITES: dict[str, Suite] = {
    "metrics": Suite(
        title="Metrics: Sightline vs prometheus-flask-exporter, and a minimal recorder (floor)",
        variants=("bare", "pfe", "floor", "sightline"),
        baseline="bare",
        references={"pfe": "pfe", "floor": "pfe", "sightline": "pfe"},
        targets={"sightline": 0.125},
        rounds=12,
        requests=20000,
        warmup=2000,
        libraries=("flask", "werkzeug", "prometheus-client", "prometheus-flask-exporter"),
        target_text={"sightline": "0.125x"},
    ),
    "fastapi_metrics": versus(
        "fastapi_metrics",
        "Metrics, FastAPI: Sightline vs prometheus-fastapi-instrumentator, over ASGI",
        target=0.125,
        target_text="0.125x",
        rounds=12,
        requests=10000,
        warmup=1000,
        libraries=FASTAPI_METRICS_LIBRARIES,
    ),
    "django_metrics": versus(
        "django_metrics",
        "Metrics, Django: Sightline vs django-prometheus, over WSGI",
        target=0.125,
        target_text="0.125x",
        rounds=12,
        requests=10000,
        warmup=1000,
        libraries=DJANGO_METRICS_LIBRARIES,
        request=f"GET {DJANGO_PATH}",
    ),
    "full": Suite(
        title="Full stack: metrics, traces and a JSON log line per request",
        variants=(
            "bare_log",
            "incumbent",
            "incumbent_10pct",
            "sightline_full",
            "sightline_10pct",
            "sightline_served",
        ),
        baseline="bare_log",
        references={
            "incumbent": "incumbent",
            "incumbent_10pct": "incumbent_10pct",
            "sightline_full": "incumbent",
            "sightline_10pct": "incumbent_10pct",
            "sightline_served": "incumbent",
        },
        targets={"sightline_full": 0.25, "sightline_10pct": 1 / 6},
        rounds=12,
        requests=5000,
        warmup=1000,
        libraries=FULL_STACK_LIBRARIES,
        target_text={"sightline_full": "0.25x", "sightline_10pct": "1/6x (0.167x)"},
    ),
    "fastapi": versus(
        "fastapi",
        "FastAPI: metrics, traces and a JSON log line per request, over ASGI",
        rounds=8,
        requests=3000,
        warmup=1000,
        libraries=(
            *FASTAPI_METRICS_LIBRARIES,
            "opentelemetry-sdk",
            "opentelemetry-instrumentation-fastapi",
            "opentelemetry-exporter-otlp-proto-http",
            "python-json-logger",
        ),
    ),
    "django": versus(
        "django",
        "Django: metrics, traces and a JSON log line per request, over WSGI",
        rounds=8,
        requests=3000,
        warmup=1000,
        libraries=(
            *DJANGO_METRICS_LIBRARIES,
            "opentelemetry-sdk",
            "opentelemetry-instrumentation-django",
            "opentelemetry-exporter-otlp-proto-http",
            "python-json-logger",
        ),
        request=f"GET {DJANGO_PATH}",
    ),
}
