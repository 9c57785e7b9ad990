"""Per-request cost Sightline adds to a Flask, FastAPI or Django app, beside the stacks it replaces.

Each variant serves ``GET /users/42`` from a hello-world app in-process, with no server or
sockets. A WSGI app (Flask, route ``/users/<int:uid>``; Django) is called as
``app(environ, start_response)``, then the body is iterated and closed as a WSGI server does
(Sightline records a request on close); an ASGI app (FastAPI) is awaited as
``app(scope, receive, send)`` with a scope built by hand, one request after another in one
event loop per batch. Variants are entries in :data:`VARIANTS`, grouped into the suites of
:data:`SUITES`:

``metrics``
    ``bare`` (plain Flask, the baseline), ``pfe`` (prometheus-flask-exporter's
    ``PrometheusMetrics`` with its defaults, a private registry and no ``/metrics`` route) and
    ``sightline`` (``sightline.init()``, metrics only, no metrics server).
``full``
    Metrics, traces and one JSON log line per request. The view logs ``served user`` with
    ``extra={"uid": uid}`` in every variant: ``bare_log`` (plain Flask, the line through a plain
    formatter; the baseline), ``incumbent`` (OpenTelemetry's Flask instrumentation and SDK with
    a batch processor and the OTLP/HTTP exporter, prometheus-flask-exporter, python-json-logger
    with a trace-id filter), ``sightline_full`` (``sightline.init()`` with traces and logs) and
    both again sampling 10% of traces (``incumbent_10pct``, ``sightline_10pct``). Spans go to
    a loopback OTLP/HTTP sink in the worker process, so export runs in a background thread of
    the process being timed, as in production; the worker flushes after timing and checks
    what the sink received.
``fastapi``
    The ``full`` suite's comparison, traces always on, for a FastAPI app (route
    ``/users/{uid}``, an ``async def`` endpoint that logs the same line and answers plain
    text): ``fastapi_bare`` (plain FastAPI, the line through a plain formatter; the baseline),
    ``fastapi_incumbent`` (OpenTelemetry's FastAPI instrumentation with the SDK and exporter as
    in ``incumbent``, prometheus-fastapi-instrumentator's defaults with a private registry and
    no ``/metrics`` route, python-json-logger with the trace-id filter) and
    ``fastapi_sightline`` (as ``sightline_full``).
``django``
    The same for a minimal Django project configured in-process (no database, no middleware
    of its own, ``users/<int:uid>/`` in an included URLconf; the request is
    ``GET /users/42/``), through Django's WSGI handler: ``django_bare``, ``django_incumbent``
    (OpenTelemetry's Django instrumentation, django-prometheus's two middlewares,
    python-json-logger) and ``django_sightline``.
``log``
    One ``logger.info`` call with trace ids rendered to JSON, inside a recording span, in a
    tight loop: Sightline's record factory and formatter (``log_sightline``) against
    python-json-logger with a trace-id filter (``log_jsonlogger``).
``celery``
    Per task of a Celery app on the in-memory broker (``memory://``) whose one task logs the
    same line: publishing it (``apply_async``, the message going to the broker, which is
    purged between chunks of :data:`TASK_CHUNK` tasks) and running it (``task.apply()``:
    Celery's tracer with the task signals both stacks hook, in-process). ``celery_bare`` (the
    line through a plain formatter; the baseline), ``celery_incumbent`` (OpenTelemetry's
    Celery instrumentation with the SDK and exporter as in ``incumbent``, python-json-logger
    with the trace-id filter) and ``celery_sightline`` (as ``sightline_full``).
``rq``
    The same for RQ on fakeredis (Redis in the worker process): ``queue.enqueue()``, then
    the jobs run one after another as RQ's worker loop runs them, without forking
    (``perform_job``, what a work horse runs). ``rq_bare`` and ``rq_sightline``; there is no
    OpenTelemetry instrumentation for RQ, so Sightline's added cost is given in µs against
    :data:`RQ_BOUND_US`, and as a share of a bare job.

``sqlalchemy``
    One ``SELECT`` through a SQLAlchemy connection on an in-memory SQLite database, what an
    app's query costs on the client side with no network: ``sqla_bare``, ``sqla_incumbent``
    (OpenTelemetry's SQLAlchemy instrumentation, a span per statement, with the SDK and
    exporter as in ``incumbent``) and ``sqla_sightline`` (``sightline.init()``: the
    statement's duration histogram and the pool's wait).
``redis``
    One ``GET`` through redis-py on an in-process Redis (fakeredis): ``redis_bare``,
    ``redis_incumbent`` (OpenTelemetry's Redis instrumentation, SDK and exporter as above)
    and ``redis_sightline`` (the command's histogram and the cache hit counter).
``psycopg``
    One ``SELECT`` by primary key through a psycopg 3 connection (autocommit) to
    PostgreSQL on loopback: ``pg_bare``, ``pg_incumbent`` (OpenTelemetry's psycopg
    instrumentation) and ``pg_sightline``. The server is the one :data:`POSTGRES_ENV` names,
    else a throwaway one started from Debian's package for the run.
``django_orm``
    ``Item.objects.get(pk=42).name`` through Django's ORM on a SQLite file: ``orm_bare``,
    ``orm_incumbent`` (OpenTelemetry's sqlite3 instrumentation, which traces the ORM's
    statements on SQLite; its Django instrumentation traces requests only) and
    ``orm_sightline``.
``http_client``, ``httpx``, ``urllib3``, ``aiohttp``
    One GET over a kept-alive connection to a loopback HTTP server in another process,
    through requests, a synchronous httpx ``Client``, a urllib3 ``PoolManager`` or an
    aiohttp ``ClientSession``: ``<client>_bare``, ``<client>_incumbent`` (OpenTelemetry's
    instrumentation for that client) and ``<client>_sightline`` (the request's histogram);
    the requests suite's variants are ``http_*``.

Each run is a fresh subprocess that checks its variant works, warms up, then times
``--requests`` requests (log calls in the ``log`` suite, tasks in ``celery`` and ``rq``) with
``time.perf_counter_ns``. Rounds run a suite's variants in rotating order. The report gives
each variant's median µs and spread, the cost it adds over the suite's baseline (median of
per-round differences) and that cost relative to the stack it is compared with::

    python benchmarks/overhead.py                       # every suite, about 5 minutes
    python benchmarks/overhead.py --suite metrics       # 12 rounds x 20000 requests
    python benchmarks/overhead.py --suite fastapi       # 8 rounds x 3000 requests
    python benchmarks/overhead.py --suite full --rounds 5 --requests 2000 --json
    python benchmarks/overhead.py --suite celery        # 8 rounds x 3000 tasks
    python benchmarks/overhead.py --suite rq            # 8 rounds x 1000 jobs
    python benchmarks/overhead.py --suite sqlalchemy    # 10 rounds x 20000 queries
    python benchmarks/overhead.py --suite redis         # 10 rounds x 20000 commands
    python benchmarks/overhead.py --suite psycopg       # 10 rounds x 5000 statements
    python benchmarks/overhead.py --suite django_orm    # 10 rounds x 10000 statements
    python benchmarks/overhead.py --suite http_client   # 10 rounds x 5000 requests
    python benchmarks/overhead.py --suite aiohttp       # the same for httpx, urllib3
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import gzip
import io
import json
import logging
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import version
from pathlib import Path
from typing import Any, NamedTuple

from flask import Flask
from prometheus_client import CollectorRegistry
from werkzeug.test import EnvironBuilder

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
ASGIApp = Callable[[dict[str, Any], Callable[..., Any], Callable[..., Any]], Awaitable[None]]
Probe = Callable[[], float]

#: The line the view logs in the ``full`` suite, and the ``log`` suite's call.
LOG_MESSAGE, LOG_UID = "served user", 42
#: python-json-logger's fields in the incumbent stack; the filter below fills the ids.
JSONLOGGER_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s %(trace_id)s %(span_id)s"
HEX_ID = re.compile(r"[0-9a-f]+\Z")
#: Spans either stack buffers for export (OTEL_BSP_MAX_QUEUE_SIZE's default for both).
QUEUE_SIZE = int(os.environ.get("OTEL_BSP_MAX_QUEUE_SIZE", "2048"))


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


def samples(registry: CollectorRegistry, name: str) -> Probe:
    return lambda: sum(s.value for m in registry.collect() for s in m.samples if s.name == name)


def setup_bare() -> Variant:
    return Variant(hello_app())


def setup_pfe() -> Variant:
    from prometheus_flask_exporter import PrometheusMetrics

    registry, app = CollectorRegistry(), hello_app()
    PrometheusMetrics(app, path=None, registry=registry)  # path=None: no /metrics route
    return Variant(app, samples(registry, "flask_http_request_total"))


def sightline_metrics() -> CollectorRegistry:
    """``sightline.init()`` with metrics alone and no server, the ``metrics`` suite's
    and the dependency suites'; returns its registry."""
    import sightline

    registry = CollectorRegistry()
    sightline.init(service="bench", registry=registry, metrics_addr="off", traces=False, logs=False)
    return registry


def setup_sightline() -> Variant:
    probe = samples(sightline_metrics(), "http_server_request_duration_seconds_count")
    return Variant(hello_app(), probe)


class Sink:
    """A loopback OTLP/HTTP receiver: answers every POST with 200 and keeps the bodies.

    Bodies are decoded only when :meth:`spans` is called, after the timed requests.
    """

    def __init__(self) -> None:
        self.bodies: list[tuple[str, bytes]] = []
        bodies = self.bodies

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as exporters expect

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                bodies.append((self.headers.get("Content-Encoding", ""), body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def spans(self) -> int:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        count = 0
        for encoding, body in self.bodies:
            request = ExportTraceServiceRequest.FromString(
                gzip.decompress(body) if encoding == "gzip" else body
            )
            for resource_spans in request.resource_spans:
                count += sum(len(scope.spans) for scope in resource_spans.scope_spans)
        return count


class TraceIdFilter(logging.Filter):
    """The usual way to put trace ids on records for python-json-logger."""

    def __init__(self) -> None:
        super().__init__()
        from opentelemetry import trace  # imported here: the metrics suite never loads it

        self.current_span = trace.get_current_span

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = self.current_span().get_span_context()
        if ctx.is_valid:
            record.trace_id = format(ctx.trace_id, "032x")
            record.span_id = format(ctx.span_id, "016x")
        else:
            record.trace_id = record.span_id = ""
        return True


def jsonlogger_handler() -> logging.StreamHandler[Any]:
    from pythonjsonlogger.json import JsonFormatter

    handler = logging.StreamHandler(open(os.devnull, "w"))  # noqa: SIM115 (lives with the process)
    handler.addFilter(TraceIdFilter())
    handler.setFormatter(JsonFormatter(JSONLOGGER_FORMAT))
    return handler


def on_root(handler: logging.StreamHandler[Any]) -> logging.StreamHandler[Any]:
    """Log through the root logger at INFO, where Sightline puts its own handler."""
    root = logging.getLogger()
    if root.handlers:
        raise SystemExit(f"the root logger has handlers already: {root.handlers}")
    root.setLevel(logging.INFO)
    root.addHandler(handler)
    return handler


def plain_log_handler() -> logging.StreamHandler[Any]:
    """The baselines' handler: the message alone, on the root logger."""
    handler = logging.StreamHandler(open(os.devnull, "w"))  # noqa: SIM115
    handler.setFormatter(logging.Formatter("%(message)s"))
    return on_root(handler)


def setup_bare_log() -> Variant:
    return Variant(hello_app(log_line=True), log=plain_log_handler())


def otel_sdk(ratio: float | None = None) -> tuple[Any, Callable[[], int]]:
    """The incumbent's tracing: the SDK's provider, a batch processor, the OTLP/HTTP exporter.

    Returns the provider, set as the global one, and the flush that counts what the sink got.
    """
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, TraceIdRatioBased

    sink = Sink()
    provider = TracerProvider(
        sampler=ParentBased(ALWAYS_ON if ratio is None else TraceIdRatioBased(ratio)),
        resource=Resource.create({"service.name": "bench"}),
    )
    provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{sink.url}/v1/traces"))
    )
    trace.set_tracer_provider(provider)

    def exported() -> int:
        provider.shutdown()  # flushes the batch processor, then shuts the exporter down
        return sink.spans()

    return provider, exported


def setup_incumbent(ratio: float | None = None) -> Variant:
    from opentelemetry.instrumentation.flask import FlaskInstrumentor
    from prometheus_flask_exporter import PrometheusMetrics

    provider, exported = otel_sdk(ratio)
    registry, app = CollectorRegistry(), hello_app(log_line=True)
    FlaskInstrumentor().instrument_app(app, tracer_provider=provider)
    PrometheusMetrics(app, path=None, registry=registry)
    handler = on_root(jsonlogger_handler())
    return Variant(
        app,
        samples(registry, "flask_http_request_total"),
        handler,
        exported,
        1.0 if ratio is None else ratio,
    )


def sightline_full(
    ratio: float | None = None, registry: CollectorRegistry | None = None
) -> tuple[Probe, logging.StreamHandler[Any], Callable[[], int]]:
    """``sightline.init()`` with metrics, traces and logs, exporting to a loopback sink.

    Returns the requests its metrics counted, its JSON handler on the root logger and the
    flush that counts what the sink got. Pass ``registry`` to read other metrics from it.
    """
    import sightline

    sink = Sink()
    if logging.getLogger().handlers:
        raise SystemExit("the root logger has handlers: Sightline would not add its own")
    # Sightline's own handler writes JSON lines to sys.stdout; the worker's result does not.
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115
    sampler: dict[str, Any] = {"traces_sampler": "parentbased_always_on"}
    if ratio is not None:
        sampler = {"traces_sampler": "parentbased_traceidratio", "traces_sampler_arg": ratio}
    registry = CollectorRegistry() if registry is None else registry
    sightline.init(
        service="bench",
        registry=registry,
        metrics_addr="off",
        otlp_endpoint=sink.url,
        logs=True,
        **sampler,
    )
    from sightline.logs import JsonFormatter

    handlers = logging.getLogger().handlers
    if len(handlers) != 1 or not isinstance(getattr(handlers[0], "formatter", None), JsonFormatter):
        raise SystemExit(f"sightline: expected its JSON handler on the root logger: {handlers}")
    assert isinstance(handlers[0], logging.StreamHandler)

    def exported() -> int:
        sightline.shutdown()  # flushes the span queue before it returns
        return sink.spans()

    return samples(registry, "http_server_request_duration_seconds_count"), handlers[0], exported


def setup_sightline_full(ratio: float | None = None) -> Variant:
    recorded, handler, exported = sightline_full(ratio)
    sampled = 1.0 if ratio is None else ratio
    return Variant(hello_app(log_line=True), recorded, handler, exported, sampled)


def hello_fastapi() -> ASGIApp:
    """The FastAPI app: ``GET /users/{uid}`` logs its line and answers ``hello {uid}``."""
    from fastapi import FastAPI
    from fastapi.responses import PlainTextResponse

    app = FastAPI()
    log = logging.getLogger("bench")

    @app.get("/users/{uid}", response_class=PlainTextResponse)
    async def user(uid: int) -> str:
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


DJANGO_PATH = f"/users/{LOG_UID}/"


def hello_django(
    apps: Sequence[str] = (),
    middleware: Sequence[str] = (),
    instrument: Callable[[], None] | None = None,
) -> WSGIApp:
    """A minimal Django project: ``users/<int:uid>/`` in an included URLconf, no database.

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
    return get_wsgi_application()


def setup_django_bare() -> Variant:
    return Variant(hello_django(), log=plain_log_handler(), path=DJANGO_PATH)


def setup_django_incumbent() -> Variant:
    from prometheus_client import REGISTRY

    provider, exported = otel_sdk()

    def instrument() -> None:
        from opentelemetry.instrumentation.django import DjangoInstrumentor

        # Puts its middleware first in settings.MIDDLEWARE.
        DjangoInstrumentor().instrument(tracer_provider=provider)

    # django-prometheus registers its metrics in the default registry (another one takes
    # subclassing its Metrics and both middlewares): each run is its own process anyway.
    app = hello_django(
        apps=["django_prometheus"],
        middleware=[
            "django_prometheus.middleware.PrometheusBeforeMiddleware",
            "django_prometheus.middleware.PrometheusAfterMiddleware",
        ],
        instrument=instrument,
    )
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


VARIANTS: dict[str, Setup] = {
    "bare": setup_bare,
    "pfe": setup_pfe,
    "sightline": setup_sightline,
    "bare_log": setup_bare_log,
    "incumbent": setup_incumbent,
    "incumbent_10pct": lambda: setup_incumbent(0.1),
    "sightline_full": setup_sightline_full,
    "sightline_10pct": lambda: setup_sightline_full(0.1),
    "fastapi_bare": setup_fastapi_bare,
    "fastapi_incumbent": setup_fastapi_incumbent,
    "fastapi_sightline": setup_fastapi_sightline,
    "django_bare": setup_django_bare,
    "django_incumbent": setup_django_incumbent,
    "django_sightline": setup_django_sightline,
}


def check_log_line(name: str, handler: logging.StreamHandler[Any], text: str) -> None:
    """One line per request, with the message, the extra field and (in JSON) the trace ids."""
    lines = text.splitlines()
    problem = None
    if len(lines) != 1:
        problem = f"{len(lines)} lines for one request"
    elif type(handler.formatter) is logging.Formatter:
        problem = None if lines[0] == LOG_MESSAGE else "not the message"
    else:
        doc = json.loads(lines[0])
        trace_id, span_id = doc.get("trace_id", ""), doc.get("span_id", "")
        if doc.get("message") != LOG_MESSAGE or doc.get("uid") != LOG_UID:
            problem = "no message or uid"
        elif len(trace_id) != 32 or not HEX_ID.match(trace_id) or not int(trace_id, 16):
            problem = "no trace id"
        elif len(span_id) != 16 or not HEX_ID.match(span_id) or not int(span_id, 16):
            problem = "no span id"
    if problem is not None:
        raise SystemExit(f"{name}: bad log line ({problem}): {text!r}")


def check_exported(name: str, spans: int, total: int, sampled: float, per_request: int = 1) -> None:
    """The sink received the spans the variant sampled, short of what its queue dropped.

    Both stacks buffer :data:`QUEUE_SIZE` spans and drop spans past that when the export
    thread falls behind; the flush after the timed requests delivers what is buffered.
    ``per_request`` is the number of spans a sampled request records.
    """
    most = total * per_request
    expected = most * sampled
    if sampled >= 1.0:
        ok = min(most, QUEUE_SIZE) <= spans <= most
    elif total >= 1000 and expected * 1.5 < QUEUE_SIZE:
        # Five standard deviations and more from the expected count fails.
        ok = abs(spans - expected) < expected / 2
    else:
        ok = 0 < spans <= most
    if not ok:
        each = f" ({per_request} a request)" if per_request != 1 else ""
        raise SystemExit(f"{name}: the sink received {spans} spans for {total} requests{each}")


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


def worker(name: str, requests: int, warmup: int) -> dict[str, Any]:
    """Set up one variant, check it, warm up, time ``requests`` requests, check what it did."""
    variant = VARIANTS[name]()
    if variant.asgi:
        run, statuses, ok = asgi_driver(variant.app, variant.path)  # type: ignore[arg-type]
    else:
        run, statuses, ok = wsgi_driver(variant.app, variant.path)  # type: ignore[arg-type]
    if variant.log is not None:
        stream = variant.log.setStream(io.StringIO())
        content = run(1)
        captured = variant.log.setStream(stream)
        assert isinstance(captured, io.StringIO)
        check_log_line(name, variant.log, captured.getvalue())
    else:
        content = run(1)
    run(warmup)
    statuses.clear()
    gc.collect()
    start = time.perf_counter_ns()
    run(requests)
    elapsed = time.perf_counter_ns() - start
    total = 1 + warmup + requests
    count = variant.recorded() if variant.recorded is not None else total
    if content != b"hello 42" or set(statuses) != {ok} or count != total:
        raise SystemExit(f"{name}: got {set(statuses)} {content!r}, {count} recorded")
    result: dict[str, Any] = {"us_per_request": elapsed / requests / 1000}
    if variant.exported is not None:
        per_request = variant.spans_per_request
        result["spans"] = spans = variant.exported()
        result["spans_share"] = spans / (total * per_request)  # requests whose spans arrived
        check_exported(name, spans, total, variant.sampled, per_request)
    return result


class TaskVariant(NamedTuple):
    """What a task setup built: a task system driven in batches, and how the worker checks it."""

    #: Publishes ``n`` tasks: Celery's ``apply_async`` to the broker, RQ's ``enqueue``.
    publish: Callable[[int], None]
    #: Messages waiting after a publish; empties the queue where ``execute`` does not.
    drain: Callable[[], int]
    #: Runs ``n`` tasks as a worker does; returns a function that reads the last one's result
    #: (called after timing: RQ reads it back from Redis).
    execute: Callable[[int], Callable[[], Any]]
    #: The handler the task's log line goes through; one line is captured and checked.
    log: logging.StreamHandler[Any]
    #: Tasks the variant's metrics counted as (published, run), read after the timed tasks.
    recorded: Callable[[], tuple[float, float]] | None = None
    #: Flushes the spans after the timed tasks; returns how many the sink received.
    exported: Callable[[], int] | None = None
    #: Spans a task exports: publishing it (PRODUCER) and running it (CONSUMER).
    spans_per_task: int = 2


TaskSetup = Callable[[], TaskVariant]

#: Tasks published before they are run, at most, so the broker never holds many.
TASK_CHUNK = 250


def task_counts(registry: CollectorRegistry) -> Callable[[], tuple[float, float]]:
    published = samples(registry, "worker_tasks_published_total")
    run = samples(registry, "worker_task_duration_seconds_count")
    return lambda: (published(), run())


def quiet_worker_logs(*names: str) -> None:
    """Keep the library's own INFO lines per task out, so each task logs exactly its line."""
    for name in names:
        logging.getLogger(name).setLevel(logging.WARNING)


def hello_celery(
    handler: logging.StreamHandler[Any],
    recorded: Callable[[], tuple[float, float]] | None = None,
    exported: Callable[[], int] | None = None,
) -> TaskVariant:
    """A Celery app on the in-memory broker with one task, ``bench.user``, that logs its line.

    Publishing sends the message to the broker (``apply_async``); ``drain`` purges the
    queue between chunks. Running a task is ``task.apply()``: Celery's tracer, as a worker
    runs it, with the task's signals, in this process (the published messages are not run).
    """
    from celery import Celery

    quiet_worker_logs("celery")  # the tracer logs "Task ... succeeded" at INFO
    # A host in the URL: without one, kombu warns that it falls back to localhost.
    app = Celery("bench", broker="memory://localhost/", set_as_current=True)
    log = logging.getLogger("bench")

    @app.task(name="bench.user")
    def user(uid: int) -> str:
        log.info(LOG_MESSAGE, extra={"uid": uid})
        return f"hello {uid}"

    channel = app.connection_for_write().default_channel
    queue = app.conf.task_default_queue

    def publish(n: int) -> None:
        for _ in range(n):
            user.apply_async((LOG_UID,))

    def drain() -> int:
        waiting: int = channel.queue_purge(queue) or 0
        return waiting

    def execute(n: int) -> Callable[[], Any]:
        result: Any = None
        for _ in range(n):
            result = user.apply((LOG_UID,))
        return lambda: result.get() if result.state == "SUCCESS" else result.state

    return TaskVariant(publish, drain, execute, handler, recorded, exported)


def setup_celery_bare() -> TaskVariant:
    return hello_celery(plain_log_handler())


def setup_celery_incumbent() -> TaskVariant:
    from opentelemetry.instrumentation.celery import CeleryInstrumentor

    provider, exported = otel_sdk()
    # Celery's six task signals; its task-runtime histogram goes to the API's no-op meter
    # (no meter provider is configured, as in the other incumbent setups).
    CeleryInstrumentor().instrument(tracer_provider=provider)
    return hello_celery(on_root(jsonlogger_handler()), exported=exported)


def setup_celery_sightline() -> TaskVariant:
    registry = CollectorRegistry()
    _, handler, exported = sightline_full(registry=registry)
    # Celery is imported after init(): Sightline connects its signals on that import.
    return hello_celery(handler, task_counts(registry), exported)


def rq_user(uid: int) -> str:
    """The RQ job; RQ imports it by name, as a worker imports job code."""
    logging.getLogger("bench").info(LOG_MESSAGE, extra={"uid": uid})
    return f"hello {uid}"


#: The most ``rq_sightline`` may add per job, in µs (docs/performance.md, "RQ").
RQ_BOUND_US = 600.0
#: The job's import path. Workers run this file as a script, so its directory is on
#: ``sys.path``; RQ refuses functions of ``__main__``, so the job names the module.
RQ_JOB = f"{os.path.splitext(os.path.basename(__file__))[0]}.{rq_user.__name__}"


def hello_rq(
    handler: logging.StreamHandler[Any],
    recorded: Callable[[], tuple[float, float]] | None = None,
    exported: Callable[[], int] | None = None,
) -> TaskVariant:
    """An RQ queue and worker on an in-process Redis (fakeredis): no server, no sockets.

    Publishing is ``queue.enqueue()``. Running jobs is the work loop of RQ's ``SimpleWorker``,
    one job after another in this process, on RQ's default ``Worker`` class: dequeue,
    ``prepare_execution`` (what the worker's main process does before it forks), then
    ``perform_job`` (what the work horse runs after the fork) and the heartbeat. Not a
    ``SimpleWorker`` itself: Sightline patches ``Worker``, and in RQ 3.0 ``SimpleWorker``
    derives from ``BaseWorker``, not from ``Worker``.
    """
    import fakeredis
    from rq import Queue, Worker
    from rq.worker import WorkerStatus

    # RQ's worker logs four INFO lines per job, on a logger whose level it sets itself.
    quiet_worker_logs("rq", "rq.worker")
    connection = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    queue = Queue("bench", connection=connection)
    worker = Worker([queue], connection=connection)

    def publish(n: int) -> None:
        for _ in range(n):
            queue.enqueue(RQ_JOB, LOG_UID)

    def execute(n: int) -> Callable[[], Any]:
        job: Any = None
        for _ in range(n):
            dequeued = worker.dequeue_job_and_maintain_ttl(None)  # burst mode: no blocking
            if dequeued is None:
                raise SystemExit("rq: the queue is empty")
            job, from_queue = dequeued
            worker.perform_job(job, from_queue, worker.prepare_execution(job))
            worker.set_state(WorkerStatus.IDLE)
            worker.heartbeat()
        return lambda: job.return_value() if job.get_status() == "finished" else job.get_status()

    return TaskVariant(publish, lambda: queue.count, execute, handler, recorded, exported)


def setup_rq_bare() -> TaskVariant:
    return hello_rq(plain_log_handler())


def setup_rq_sightline() -> TaskVariant:
    registry = CollectorRegistry()
    _, handler, exported = sightline_full(registry=registry)
    return hello_rq(handler, task_counts(registry), exported)


TASK_VARIANTS: dict[str, TaskSetup] = {
    "celery_bare": setup_celery_bare,
    "celery_incumbent": setup_celery_incumbent,
    "celery_sightline": setup_celery_sightline,
    "rq_bare": setup_rq_bare,
    "rq_sightline": setup_rq_sightline,
}


def task_worker(name: str, tasks: int, warmup: int) -> dict[str, Any]:
    """µs per task published and run, and for each of the two, in chunks of :data:`TASK_CHUNK`.

    The per-task total is reported under the key the other suites use, ``us_per_request``.
    """
    variant = TASK_VARIANTS[name]()

    def batch(n: int) -> tuple[int, int, Any]:
        """Publish and run ``n`` tasks; ns publishing, ns running, the last result."""
        publishing = running = 0
        result: Callable[[], Any] | None = None
        for done in range(0, n, TASK_CHUNK):
            size = min(TASK_CHUNK, n - done)
            start = time.perf_counter_ns()
            variant.publish(size)
            published = time.perf_counter_ns()
            waiting = variant.drain()
            if waiting != size:
                raise SystemExit(f"{name}: {waiting} messages waiting after publishing {size}")
            started = time.perf_counter_ns()
            result = variant.execute(size)
            running += time.perf_counter_ns() - started
            publishing += published - start
        return publishing, running, None if result is None else result()

    stream = variant.log.setStream(io.StringIO())
    _, _, result = batch(1)
    captured = variant.log.setStream(stream)
    assert isinstance(captured, io.StringIO)
    check_log_line(name, variant.log, captured.getvalue())
    batch(warmup)
    gc.collect()
    publishing, running, last = batch(tasks)
    total = 1 + warmup + tasks
    counted = variant.recorded() if variant.recorded is not None else (total, total)
    if result != last or last != f"hello {LOG_UID}" or counted != (total, total):
        raise SystemExit(f"{name}: got {result!r} then {last!r}, {counted} counted for {total}")
    out: dict[str, Any] = {
        "us_per_request": (publishing + running) / tasks / 1000,
        "phases": {"publish": publishing / tasks / 1000, "execute": running / tasks / 1000},
    }
    if variant.exported is not None:
        per_task = variant.spans_per_task
        out["spans"] = spans = variant.exported()
        out["spans_share"] = spans / (total * per_task)
        check_exported(name, spans, total, 1.0, per_task)
    return out


def log_sightline() -> logging.StreamHandler[Any]:
    from sightline.logs import JsonFormatter, TraceIdFactory

    logging.setLogRecordFactory(TraceIdFactory(logging.getLogRecordFactory()))
    handler = logging.StreamHandler(open(os.devnull, "w"))  # noqa: SIM115
    handler.setFormatter(JsonFormatter(service="bench"))
    return handler


LOG_VARIANTS: dict[str, Callable[[], logging.StreamHandler[Any]]] = {
    "log_sightline": log_sightline,
    "log_jsonlogger": jsonlogger_handler,
}


def log_worker(name: str, calls: int, warmup: int) -> dict[str, Any]:
    """µs per ``logger.info("msg %s", 1, extra={"k": 1})`` inside a recording span."""
    from opentelemetry.sdk.trace import TracerProvider

    handler = LOG_VARIANTS[name]()
    logger = logging.getLogger("bench")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    tracer = TracerProvider().get_tracer("bench")
    with tracer.start_as_current_span("request") as span:
        if not span.is_recording():
            raise SystemExit(f"{name}: the span is not recording")
        ctx = span.get_span_context()
        stream = handler.setStream(io.StringIO())
        logger.info("msg %s", 1, extra={"k": 1})
        captured = handler.setStream(stream)
        assert isinstance(captured, io.StringIO)
        doc = json.loads(captured.getvalue())
        expected = {
            "trace_id": format(ctx.trace_id, "032x"),
            "span_id": format(ctx.span_id, "016x"),
        }
        if {k: doc.get(k) for k in (*expected, "message", "k")} != {
            **expected,
            "message": "msg 1",
            "k": 1,
        }:
            raise SystemExit(f"{name}: bad log line {captured.getvalue()!r}")
        info = logger.info
        for _ in range(warmup):
            info("msg %s", 1, extra={"k": 1})
        gc.collect()
        start = time.perf_counter_ns()
        for _ in range(calls):
            info("msg %s", 1, extra={"k": 1})
        elapsed = time.perf_counter_ns() - start
    return {"us_per_request": elapsed / calls / 1000}


class OpVariant(NamedTuple):
    """What an operation setup built: one call to time, and how the worker checks it."""

    #: Runs the operation once; returns its result.
    call: Callable[[], Any]
    #: The result every call returns.
    expected: Any
    #: Operations the variant's metrics counted, read after the timed calls.
    recorded: Probe | None = None
    #: Flushes the spans after the timed calls; returns how many the sink received.
    exported: Callable[[], int] | None = None


def sqla_query() -> tuple[Callable[[], Any], Any]:
    """A SELECT on an in-memory SQLite database through one SQLAlchemy connection."""
    import sqlalchemy

    engine = sqlalchemy.create_engine("sqlite://")
    conn = engine.connect()
    conn.exec_driver_sql("CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT)")
    conn.exec_driver_sql("INSERT INTO item VALUES (42, 'lamp')")
    query = sqlalchemy.text("SELECT name FROM item WHERE id = :id")
    return (lambda: conn.execute(query, {"id": 42}).scalar()), engine


def setup_sqla_bare() -> OpVariant:
    call, _ = sqla_query()
    return OpVariant(call, "lamp")


def setup_sqla_incumbent() -> OpVariant:
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    provider, exported = otel_sdk()
    call, engine = sqla_query()
    SQLAlchemyInstrumentor().instrument(engine=engine, tracer_provider=provider)
    return OpVariant(call, "lamp", None, exported)


def setup_sqla_sightline() -> OpVariant:
    probe = samples(sightline_metrics(), "db_client_operation_duration_seconds_count")
    call, _ = sqla_query()
    return OpVariant(call, "lamp", probe)


def redis_get() -> tuple[Callable[[], Any], Any]:
    import fakeredis

    client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    client.set("user:42", "lamp")
    return (lambda: client.get("user:42")), client


def setup_redis_bare() -> OpVariant:
    call, _ = redis_get()
    return OpVariant(call, b"lamp")


def setup_redis_incumbent() -> OpVariant:
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    call, _ = redis_get()  # its SET before the instrumentation: GETs alone are traced
    provider, exported = otel_sdk()
    RedisInstrumentor().instrument(tracer_provider=provider)
    return OpVariant(call, b"lamp", None, exported)


def setup_redis_sightline() -> OpVariant:
    probe = samples(sightline_metrics(), "db_client_operation_duration_seconds_count")
    call, _ = redis_get()
    return OpVariant(call, b"lamp", probe)


#: A keep-alive HTTP/1.1 server answering every GET with "ok", run in a process of its
#: own so that it takes no time from the process being measured.
HTTP_SERVER = """
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

class Answer(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as written

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass

server = HTTPServer(("127.0.0.1", 0), Answer)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


def http_url() -> str:
    """Starts :data:`HTTP_SERVER` in a process of its own; returns the URL a client GETs."""
    import atexit

    server = subprocess.Popen(
        [sys.executable, "-c", HTTP_SERVER], stdout=subprocess.PIPE, text=True
    )
    atexit.register(server.kill)
    assert server.stdout is not None
    return f"http://127.0.0.1:{server.stdout.readline().strip()}/items/42"


def requests_get() -> Callable[[], Any]:
    """A GET through one requests Session (a kept-alive connection) to a loopback server."""
    import requests

    url, session = http_url(), requests.Session()
    return lambda: session.get(url).content


def httpx_get() -> Callable[[], Any]:
    """The same GET through one synchronous httpx Client."""
    import httpx

    url, client = http_url(), httpx.Client()
    return lambda: client.get(url).content


def urllib3_get() -> Callable[[], Any]:
    """The same GET through a urllib3 PoolManager."""
    import urllib3

    url, pool = http_url(), urllib3.PoolManager()
    return lambda: pool.request("GET", url).data


def aiohttp_get() -> Callable[[], Any]:
    """The same GET through one aiohttp ClientSession, each call run to completion on one
    event loop (the loop's own cost is in every variant alike)."""
    import asyncio

    import aiohttp

    url, loop = http_url(), asyncio.new_event_loop()

    async def start() -> aiohttp.ClientSession:
        return aiohttp.ClientSession()  # made on the loop that uses it

    session = loop.run_until_complete(start())

    async def get() -> bytes:
        async with session.get(url) as response:
            return await response.read()

    return lambda: loop.run_until_complete(get())


#: Each client suite's GET, and OpenTelemetry's instrumentor for it (module, class).
HTTP_CLIENTS: dict[str, tuple[Callable[[], Callable[[], Any]], str, str]] = {
    "http": (requests_get, "opentelemetry.instrumentation.requests", "RequestsInstrumentor"),
    "httpx": (httpx_get, "opentelemetry.instrumentation.httpx", "HTTPXClientInstrumentor"),
    "urllib3": (urllib3_get, "opentelemetry.instrumentation.urllib3", "URLLib3Instrumentor"),
    "aiohttp": (
        aiohttp_get,
        "opentelemetry.instrumentation.aiohttp_client",
        "AioHttpClientInstrumentor",
    ),
}


def client_variant(client: str, stack: str) -> OpVariant:
    """``<client>_<stack>``: the client's GET bare, under OpenTelemetry's instrumentation
    for that client (a span per request, SDK and exporter as in ``incumbent``), or under
    Sightline (the request's duration histogram by method, host and status)."""
    import importlib

    get, module, instrumentor = HTTP_CLIENTS[client]
    if stack == "incumbent":
        provider, exported = otel_sdk()
        instrumentation = getattr(importlib.import_module(module), instrumentor)()
        instrumentation.instrument(tracer_provider=provider)
        return OpVariant(get(), b"ok", None, exported)
    if stack == "sightline":
        probe = samples(sightline_metrics(), "http_client_request_duration_seconds_count")
        return OpVariant(get(), b"ok", probe)
    return OpVariant(get(), b"ok")


#: The environment variable naming the ``psycopg`` suite's PostgreSQL (a libpq
#: connection string); :func:`main` starts a throwaway server when it is unset.
POSTGRES_ENV = "BENCH_POSTGRES"


def pg_query() -> Callable[[], Callable[[], Any]]:
    """A SELECT by primary key through one psycopg 3 connection (autocommit) to PostgreSQL
    on loopback. The table is made here on a connection of its own; the returned function
    opens the timed connection, after the variant has instrumented what it does."""
    import psycopg

    dsn = os.environ[POSTGRES_ENV]
    with psycopg.connect(dsn, autocommit=True) as setup:
        setup.execute("CREATE TABLE IF NOT EXISTS item (id integer PRIMARY KEY, name text)")
        setup.execute("INSERT INTO item VALUES (42, 'lamp') ON CONFLICT DO NOTHING")

    def connect() -> Callable[[], Any]:
        cursor = psycopg.connect(dsn, autocommit=True).cursor()

        def call() -> Any:
            cursor.execute("SELECT name FROM item WHERE id = %s", (42,))
            row = cursor.fetchone()
            return None if row is None else row[0]

        return call

    return connect


def setup_pg_bare() -> OpVariant:
    return OpVariant(pg_query()(), "lamp")


def setup_pg_incumbent() -> OpVariant:
    from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor

    connect = pg_query()
    provider, exported = otel_sdk()
    PsycopgInstrumentor().instrument(tracer_provider=provider)
    return OpVariant(connect(), "lamp", None, exported)


def setup_pg_sightline() -> OpVariant:
    probe = samples(sightline_metrics(), "db_client_operation_duration_seconds_count")
    return OpVariant(pg_query()(), "lamp", probe)


def orm_query(instrument: Callable[[], None] | None = None) -> Callable[[], Any]:
    """``Item.objects.get(pk=42).name`` through Django's ORM on a SQLite file. The table is
    made with the sqlite3 module before ``instrument`` runs; Django opens its connection
    on the first query."""
    import sqlite3
    import tempfile

    import django
    from django.conf import settings
    from django.db import models

    path = os.path.join(tempfile.mkdtemp(prefix="bench-django-"), "db.sqlite3")
    setup = sqlite3.connect(path)
    with setup:  # commits
        setup.execute("CREATE TABLE bench_item (id integer PRIMARY KEY, name text)")
        setup.execute("INSERT INTO bench_item VALUES (42, 'lamp')")
    setup.close()
    if instrument is not None:
        instrument()
    settings.configure(
        SECRET_KEY="bench",
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": path}},
        INSTALLED_APPS=[],
    )
    django.setup()

    class Item(models.Model):  # type: ignore[misc]
        name = models.TextField()

        class Meta:
            app_label = "bench"

    return lambda: Item.objects.get(pk=42).name


def setup_orm_bare() -> OpVariant:
    return OpVariant(orm_query(), "lamp")


def setup_orm_incumbent() -> OpVariant:
    from opentelemetry.instrumentation.sqlite3 import SQLite3Instrumentor

    provider, exported = otel_sdk()
    call = orm_query(lambda: SQLite3Instrumentor().instrument(tracer_provider=provider))
    return OpVariant(call, "lamp", None, exported)


def setup_orm_sightline() -> OpVariant:
    probe = samples(sightline_metrics(), "db_client_operation_duration_seconds_count")
    return OpVariant(orm_query(), "lamp", probe)


OP_VARIANTS: dict[str, Callable[[], OpVariant]] = {
    "sqla_bare": setup_sqla_bare,
    "sqla_incumbent": setup_sqla_incumbent,
    "sqla_sightline": setup_sqla_sightline,
    "redis_bare": setup_redis_bare,
    "redis_incumbent": setup_redis_incumbent,
    "redis_sightline": setup_redis_sightline,
    "pg_bare": setup_pg_bare,
    "pg_incumbent": setup_pg_incumbent,
    "pg_sightline": setup_pg_sightline,
    "orm_bare": setup_orm_bare,
    "orm_incumbent": setup_orm_incumbent,
    "orm_sightline": setup_orm_sightline,
    **{
        f"{client}_{stack}": functools.partial(client_variant, client, stack)
        for client in HTTP_CLIENTS
        for stack in ("bare", "incumbent", "sightline")
    },
}


def op_worker(name: str, calls: int, warmup: int) -> dict[str, Any]:
    """µs per call of the variant's operation."""
    variant = OP_VARIANTS[name]()
    call = variant.call
    # The variant's setup ran operations of its own (a CREATE, a SET): counted from here.
    before = variant.recorded() if variant.recorded is not None else 0.0
    for _ in range(warmup):
        call()
    gc.collect()
    start = time.perf_counter_ns()
    for _ in range(calls):
        result = call()
    elapsed = time.perf_counter_ns() - start
    if result != variant.expected:
        raise SystemExit(f"{name}: got {result!r}, not {variant.expected!r}")
    total = warmup + calls
    if variant.recorded is not None and variant.recorded() - before != total:
        raise SystemExit(f"{name}: {variant.recorded() - before} counted for {total} calls")
    out: dict[str, Any] = {"us_per_request": elapsed / calls / 1000}
    if variant.exported is not None:
        out["spans"] = spans = variant.exported()
        out["spans_share"] = spans / total
        check_exported(name, spans, total, 1.0)
    return out


@dataclass(frozen=True)
class Suite:
    title: str
    variants: tuple[str, ...]
    #: Each variant's added cost is taken over this one; None compares times directly.
    baseline: str | None
    #: variant -> the variant whose (added) cost it is compared with; the baseline itself
    #: where there is no stack to compare with: the added cost is then a share of its cost.
    references: Mapping[str, str]
    #: variant -> the product target for that comparison's ratio.
    targets: Mapping[str, float]
    rounds: int
    requests: int
    warmup: int
    libraries: tuple[str, ...]
    unit: str = "request"
    #: The request each run serves (or what each unit is), as the report names it.
    request: str = f"GET /users/{LOG_UID}"
    #: Whether meeting a target means a ratio below it (rather than at most it).
    strict: bool = False
    target_text: dict[str, str] = field(default_factory=dict)
    #: variant -> the most it may add, in µs per unit, where no stack is compared with.
    bounds_us: Mapping[str, float] = field(default_factory=dict)


def client_suite(client: str, what: str, *libraries: str) -> Suite:
    """An outgoing-HTTP suite: ``<client>_bare``, ``_incumbent`` and ``_sightline`` each
    GET from :data:`HTTP_SERVER` in another process over a kept-alive connection."""
    return Suite(
        title=f"Outgoing HTTP: a {what} to a loopback server in another process",
        variants=(f"{client}_bare", f"{client}_incumbent", f"{client}_sightline"),
        baseline=f"{client}_bare",
        references={f"{client}_{s}": f"{client}_incumbent" for s in ("incumbent", "sightline")},
        targets={f"{client}_sightline": 0.25},
        rounds=10,
        requests=5000,
        warmup=500,
        libraries=libraries,
        unit="request",
        request="GET /items/42 (kept-alive connection)",
        target_text={f"{client}_sightline": "0.25x"},
    )


SUITES: dict[str, Suite] = {
    "metrics": Suite(
        title="Metrics: Sightline vs prometheus-flask-exporter",
        variants=("bare", "pfe", "sightline"),
        baseline="bare",
        references={"pfe": "pfe", "sightline": "pfe"},
        targets={"sightline": 0.25},
        rounds=12,
        requests=20000,
        warmup=2000,
        libraries=("flask", "werkzeug", "prometheus-client", "prometheus-flask-exporter"),
        target_text={"sightline": "0.25x"},
    ),
    "full": Suite(
        title="Full stack: metrics, traces and a JSON log line per request",
        variants=("bare_log", "incumbent", "incumbent_10pct", "sightline_full", "sightline_10pct"),
        baseline="bare_log",
        references={
            "incumbent": "incumbent",
            "incumbent_10pct": "incumbent_10pct",
            "sightline_full": "incumbent",
            "sightline_10pct": "incumbent_10pct",
        },
        targets={"sightline_full": 0.25, "sightline_10pct": 1 / 6},
        rounds=12,
        requests=5000,
        warmup=1000,
        libraries=(
            "flask",
            "werkzeug",
            "prometheus-client",
            "prometheus-flask-exporter",
            "opentelemetry-sdk",
            "opentelemetry-instrumentation-flask",
            "opentelemetry-exporter-otlp-proto-http",
            "python-json-logger",
        ),
        target_text={"sightline_full": "0.25x", "sightline_10pct": "1/6x (0.167x)"},
    ),
    "fastapi": Suite(
        title="FastAPI: metrics, traces and a JSON log line per request, over ASGI",
        variants=("fastapi_bare", "fastapi_incumbent", "fastapi_sightline"),
        baseline="fastapi_bare",
        references={
            "fastapi_incumbent": "fastapi_incumbent",
            "fastapi_sightline": "fastapi_incumbent",
        },
        targets={"fastapi_sightline": 0.25},
        rounds=8,
        requests=3000,
        warmup=1000,
        libraries=(
            "fastapi",
            "starlette",
            "prometheus-client",
            "prometheus-fastapi-instrumentator",
            "opentelemetry-sdk",
            "opentelemetry-instrumentation-fastapi",
            "opentelemetry-exporter-otlp-proto-http",
            "python-json-logger",
        ),
        target_text={"fastapi_sightline": "0.25x"},
    ),
    "django": Suite(
        title="Django: metrics, traces and a JSON log line per request, over WSGI",
        variants=("django_bare", "django_incumbent", "django_sightline"),
        baseline="django_bare",
        references={
            "django_incumbent": "django_incumbent",
            "django_sightline": "django_incumbent",
        },
        targets={"django_sightline": 0.25},
        rounds=8,
        requests=3000,
        warmup=1000,
        libraries=(
            "django",
            "prometheus-client",
            "django-prometheus",
            "opentelemetry-sdk",
            "opentelemetry-instrumentation-django",
            "opentelemetry-exporter-otlp-proto-http",
            "python-json-logger",
        ),
        target_text={"django_sightline": "0.25x"},
        request=f"GET {DJANGO_PATH}",
    ),
    "log": Suite(
        title="Log call with trace ids, rendered to JSON",
        variants=("log_sightline", "log_jsonlogger"),
        baseline=None,
        references={"log_sightline": "log_jsonlogger", "log_jsonlogger": "log_jsonlogger"},
        targets={"log_sightline": 1.0},
        rounds=7,
        requests=100000,
        warmup=5000,
        libraries=("opentelemetry-sdk", "python-json-logger"),
        unit="call",
        request="",
        strict=True,
        target_text={"log_sightline": "below 1x"},
    ),
    "celery": Suite(
        title="Celery: a task published to the in-memory broker and run, with a JSON log line",
        variants=("celery_bare", "celery_incumbent", "celery_sightline"),
        baseline="celery_bare",
        references={
            "celery_incumbent": "celery_incumbent",
            "celery_sightline": "celery_incumbent",
        },
        targets={"celery_sightline": 0.25},
        rounds=8,
        requests=3000,
        warmup=1000,
        libraries=(
            "celery",
            "kombu",
            "opentelemetry-sdk",
            "opentelemetry-instrumentation-celery",
            "opentelemetry-exporter-otlp-proto-http",
            "python-json-logger",
        ),
        unit="task",
        request="each published, then run with apply()",
        target_text={"celery_sightline": "0.25x"},
    ),
    "rq": Suite(
        title="RQ: a job enqueued on an in-process Redis (fakeredis) and run, with a JSON log line",
        variants=("rq_bare", "rq_sightline"),
        baseline="rq_bare",
        references={"rq_sightline": "rq_bare"},
        targets={},
        rounds=8,
        requests=1000,
        warmup=300,
        libraries=("rq", "redis", "fakeredis"),
        unit="job",
        request="each enqueued, then run by the worker's loop",
        bounds_us={"rq_sightline": RQ_BOUND_US},
    ),
    "sqlalchemy": Suite(
        title="SQLAlchemy: a SELECT on in-memory SQLite",
        variants=("sqla_bare", "sqla_incumbent", "sqla_sightline"),
        baseline="sqla_bare",
        references={"sqla_incumbent": "sqla_incumbent", "sqla_sightline": "sqla_incumbent"},
        targets={"sqla_sightline": 0.25},
        rounds=10,
        requests=20000,
        warmup=2000,
        libraries=("sqlalchemy", "opentelemetry-instrumentation-sqlalchemy"),
        unit="statement",
        request="SELECT name FROM item WHERE id = 42",
        target_text={"sqla_sightline": "0.25x"},
    ),
    "http_client": client_suite(
        "http",
        "GET through requests",
        "requests",
        "urllib3",
        "opentelemetry-instrumentation-requests",
    ),
    "httpx": client_suite(
        "httpx",
        "GET through a synchronous httpx Client",
        "httpx",
        "opentelemetry-instrumentation-httpx",
    ),
    "urllib3": client_suite(
        "urllib3",
        "GET through a urllib3 PoolManager",
        "urllib3",
        "opentelemetry-instrumentation-urllib3",
    ),
    "aiohttp": client_suite(
        "aiohttp",
        "GET through an aiohttp ClientSession",
        "aiohttp",
        "opentelemetry-instrumentation-aiohttp-client",
    ),
    "redis": Suite(
        title="Redis: a GET through redis-py on an in-process Redis (fakeredis)",
        variants=("redis_bare", "redis_incumbent", "redis_sightline"),
        baseline="redis_bare",
        references={"redis_incumbent": "redis_incumbent", "redis_sightline": "redis_incumbent"},
        targets={"redis_sightline": 0.25},
        rounds=10,
        requests=20000,
        warmup=2000,
        libraries=("redis", "fakeredis", "opentelemetry-instrumentation-redis"),
        unit="command",
        request="GET user:42",
        target_text={"redis_sightline": "0.25x"},
    ),
    "psycopg": Suite(
        title="psycopg 3: a SELECT by primary key on PostgreSQL over loopback",
        variants=("pg_bare", "pg_incumbent", "pg_sightline"),
        baseline="pg_bare",
        references={"pg_incumbent": "pg_incumbent", "pg_sightline": "pg_incumbent"},
        targets={"pg_sightline": 0.25},
        rounds=10,
        requests=5000,
        warmup=500,
        libraries=("psycopg", "opentelemetry-instrumentation-psycopg"),
        unit="statement",
        request="SELECT name FROM item WHERE id = 42 (one connection, autocommit)",
        target_text={"pg_sightline": "0.25x"},
    ),
    "django_orm": Suite(
        title="Django ORM: Item.objects.get(pk=42) on a SQLite file",
        variants=("orm_bare", "orm_incumbent", "orm_sightline"),
        baseline="orm_bare",
        references={"orm_incumbent": "orm_incumbent", "orm_sightline": "orm_incumbent"},
        targets={"orm_sightline": 0.25},
        rounds=10,
        requests=10000,
        warmup=1000,
        libraries=("django", "opentelemetry-instrumentation-sqlite3"),
        unit="statement",
        request="Item.objects.get(pk=42).name",
        target_text={"orm_sightline": "0.25x"},
    ),
}


def measure(name: str, requests: int, warmup: int) -> dict[str, Any]:
    """One fresh worker process: µs per request (or log call), and spans it exported."""
    command = [sys.executable, __file__, "--worker", name]
    command += ["--requests", str(requests), "--warmup", str(warmup)]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True)  # stderr passes through
    if done.returncode:
        raise SystemExit(f"{name} worker failed (exit status {done.returncode})")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def spread(values: list[float]) -> dict[str, Any]:
    q1, _, q3 = statistics.quantiles(values, n=4) if len(values) > 1 else values * 3
    return {"median": statistics.median(values), "q1": q1, "q3": q3, "values": values}


def summarize(suite: Suite, times: dict[str, list[float]]) -> dict[str, Any]:
    """Per variant: times, added cost over the baseline, and ratio to its reference."""
    variants: dict[str, Any] = {}
    for name, t in times.items():
        base = times[suite.baseline] if suite.baseline is not None else [0.0] * len(t)
        added = [v - b for v, b in zip(t, base, strict=True)]
        variants[name] = {"us_per_request": spread(t), "added_us": spread(added)}
    for name, entry in variants.items():
        reference = suite.references.get(name)
        ratio = None
        if name != suite.baseline and reference in variants:
            if reference == suite.baseline:  # no stack to compare with: a share of its cost
                ref = variants[reference]["us_per_request"]["median"]
            else:
                ref = variants[reference]["added_us"]["median"]
            ratio = entry["added_us"]["median"] / ref if ref else None
        entry["vs_reference"] = ratio
    return variants


def compare(suite: Suite, variants: dict[str, Any]) -> list[dict[str, Any]]:
    comparisons = []
    for name, target in suite.targets.items():
        if name not in variants or suite.references[name] not in variants:
            continue
        ratio = variants[name]["vs_reference"]
        meets = ratio is not None and (ratio < target if suite.strict else ratio <= target)
        comparisons.append(
            {
                "variant": name,
                "reference": suite.references[name],
                "ratio": ratio,
                "target": target,
                "strict": suite.strict,
                "meets_target": meets,
            }
        )
    for name, bound in suite.bounds_us.items():
        if name in variants:
            added = variants[name]["added_us"]["median"]
            comparisons.append(
                {
                    "variant": name,
                    "reference": suite.references[name],
                    "ratio": variants[name]["vs_reference"],
                    "added_us": added,
                    "bound_us": bound,
                    "meets_target": added <= bound,
                }
            )
    return comparisons


def run_rounds(
    suite_name: str, names: list[str], rounds: int, requests: int, warmup: int
) -> dict[str, Any]:
    suite = SUITES[suite_name]
    times: dict[str, list[float]] = {name: [] for name in names}
    shares: dict[str, list[float]] = {name: [] for name in names}
    phases: dict[str, dict[str, list[float]]] = {}  # operation -> variant -> µs, per round
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            result = measure(name, requests, warmup)
            times[name].append(result["us_per_request"])
            if "spans_share" in result:
                shares[name].append(result["spans_share"])
            for phase, us in result.get("phases", {}).items():
                phases.setdefault(phase, {n: [] for n in names})[name].append(us)
        done = "  ".join(f"{name} {times[name][-1]:.2f}" for name in names)
        print(f"{suite_name} round {r + 1}/{rounds}: {done}", file=sys.stderr)
    variants = summarize(suite, times)
    for name, share in shares.items():
        if share:  # spans the sink received, per request served
            variants[name]["spans_exported"] = spread(share)
    comparisons = compare(suite, variants)
    report = {
        "suite": suite_name,
        "title": suite.title,
        "python": platform.python_version(),
        "machine": f"{os.cpu_count()} CPUs, {platform.machine()}, {platform.platform()}",
        "versions": {lib: version(lib) for lib in (*suite.libraries, "sightline")},
        "config": {"rounds": rounds, "requests": requests, "warmup": warmup},
        "baseline": suite.baseline,
        "variants": variants,
        "comparisons": comparisons,
    }
    if phases:  # the operations a task's time is made of, each summarized as the whole
        report["phases"] = {phase: summarize(suite, t) for phase, t in phases.items()}
    if suite_name == "metrics":  # the fields this suite has always reported
        first = comparisons[0] if comparisons else {}
        report["sightline_vs_pfe"] = first.get("ratio")
        report["target"] = suite.targets["sightline"]
        report["meets_target"] = bool(first.get("meets_target"))
    return report


def markdown(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table, columns padded; every column but the first aligned right."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        padded = [
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (w + 1) + ("-" if i == 0 else ":") for i, w in enumerate(widths))
    return [line(header), rule + "|", *(line(row) for row in rows)]


def table(report: dict[str, Any]) -> str:
    suite = SUITES[report["suite"]]
    config, versions = report["config"], report["versions"]
    references = {r for n, r in suite.references.items() if n in report["variants"]}
    vs = f"vs {references.pop()}" if len(references) == 1 else "vs ref"
    what = f"{suite.unit}s, {suite.request}" if suite.request else f"{suite.unit}s"
    header = ["variant", "median", "min-max"]
    if suite.baseline is not None:
        header += ["added (median)", "added IQR"]
    else:
        header += ["IQR"]
    spans = any("spans_exported" in v for v in report["variants"].values())
    if spans:
        header += ["spans exported"]
    rows = []
    for name, v in report["variants"].items():
        t, a = v["us_per_request"], v["added_us"]
        row = [name, f"{t['median']:.2f}", f"{min(t['values']):.2f}-{max(t['values']):.2f}"]
        if suite.baseline is not None:
            row += [f"{a['median']:+.2f}", f"{a['q1']:+.2f} to {a['q3']:+.2f}"]
        else:
            row += [f"{t['q1']:.2f}-{t['q3']:.2f}"]
        if spans:
            share = v.get("spans_exported")
            row += ["-" if share is None else f"{share['median']:.0%}"]
        row += ["-" if v["vs_reference"] is None else f"{v['vs_reference']:.2f}x"]
        rows.append(row)
    lines = [
        report["title"],
        f"Python {report['python']} ({report['machine']})",
        ", ".join(f"{lib} {v}" for lib, v in versions.items()),
        f"{config['rounds']} rounds x {config['requests']} {what}, us/{suite.unit}",
        "",
        *markdown([*header, vs], rows),
    ]
    if spans:
        lines.append(
            f"(spans exported: share of {suite.unit}s whose spans the sink received, median)"
        )
    if "phases" in report:
        lines += ["", *phase_table(suite, report["phases"])]
    if report["comparisons"]:
        lines.append("")
    for c in report["comparisons"]:
        verdict = "meets" if c["meets_target"] else "misses"
        ratio = "n/a" if c["ratio"] is None else f"{c['ratio']:.2f}x"
        if "bound_us" in c:
            lines.append(
                f"{c['variant']} adds {c['added_us']:.1f} us per {suite.unit}, {ratio} of what "
                f"{c['reference']} costs (bound: at most {c['bound_us']:g} us; "
                f"{verdict} the bound)."
            )
            continue
        target = suite.target_text.get(c["variant"], f"{c['target']:.2f}x")
        if suite.baseline is not None:
            claim = f"{c['variant']} adds {ratio} of what {c['reference']} adds"
            target = f"at most {target}"
        else:
            claim = f"{c['variant']} costs {ratio} of what {c['reference']} costs"
        lines.append(f"{claim} (target: {target}; {verdict} the target).")
    return "\n".join(lines)


def phase_table(suite: Suite, phases: dict[str, dict[str, Any]]) -> list[str]:
    """Each operation of a task: median µs per variant, added over the baseline, and ratio."""
    names = list(next(iter(phases.values())))
    compared = [n for n in names if n != suite.baseline and suite.references.get(n) != n]
    header = ["operation", *names, *(f"{n} vs {suite.references[n]}" for n in compared)]
    rows = []
    for phase, variants in phases.items():
        row = [phase]
        for name in names:
            t, a = variants[name]["us_per_request"], variants[name]["added_us"]
            added = "" if name == suite.baseline else f" ({a['median']:+.2f})"
            row.append(f"{t['median']:.2f}{added}")
        for name in compared:
            ratio = variants[name]["vs_reference"]
            row.append("-" if ratio is None else f"{ratio:.2f}x")
        rows.append(row)
    added_over = f"; added over {suite.baseline} in parentheses" if suite.baseline else ""
    return [f"Per operation, us/{suite.unit} (medians{added_over}):", *markdown(header, rows)]


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[str]:
    """A PostgreSQL server (Debian's package, the newest installed) in a temporary
    directory, on a loopback port, trusting local connections, for the ``psycopg`` suite;
    yields its connection string. As root it runs as the ``postgres`` account."""
    import shutil
    import socket
    import tempfile

    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: p.parts)
    if not found:
        raise SystemExit(
            f"psycopg suite: no PostgreSQL server (apt-get install postgresql), "
            f"or name one in {POSTGRES_ENV} (a libpq connection string)"
        )
    bin_dir, base = found[-1].parent, Path(tempfile.mkdtemp(prefix="bench-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        import pwd

        account = pwd.getpwnam("postgres")
        os.chown(base, account.pw_uid, account.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data = base / "data"
    subprocess.run(
        [*as_user, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres",
         "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [*as_user, str(bin_dir / "postgres"), "-D", str(data), "-p", str(port),
         "-k", str(base), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    dsn = f"host=127.0.0.1 port={port} user=postgres dbname=postgres"
    try:
        for _ in range(300):
            if server.poll() is not None:
                raise SystemExit(f"psycopg suite: PostgreSQL exited with {server.returncode}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        yield dsn
    finally:
        server.terminate()
        server.wait(30)
        shutil.rmtree(base, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--suite", choices=["all", *SUITES], default="all", help="which comparison to run"
    )
    parser.add_argument("--rounds", type=int, help="default: each suite's own (--list)")
    parser.add_argument(
        "--requests",
        type=int,
        help="timed requests (log calls, tasks, statements) per run; default: each suite's own",
    )
    parser.add_argument("--warmup", type=int, help="default: each suite's own")
    parser.add_argument(
        "--list", action="store_true", help="list the suites with their defaults, and stop"
    )
    every = [*VARIANTS, *LOG_VARIANTS, *TASK_VARIANTS, *OP_VARIANTS]
    parser.add_argument(
        "--variants", nargs="+", choices=every, help="run only these (and baselines)"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--worker", choices=every, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        out = sys.stdout  # a variant may point sys.stdout elsewhere
        run: Callable[[str, int, int], dict[str, Any]] = worker
        if args.worker in LOG_VARIANTS:
            run = log_worker
        elif args.worker in TASK_VARIANTS:
            run = task_worker
        elif args.worker in OP_VARIANTS:
            run = op_worker
        print(json.dumps(run(args.worker, args.requests, args.warmup)), file=out, flush=True)
        return
    if args.list:
        for name, suite in SUITES.items():
            print(
                f"{name:12} {suite.rounds:3} rounds x {suite.requests:6} {suite.unit}s "
                f"(+{suite.warmup} warm-up)  {', '.join(suite.variants)}"
            )
        return
    reports = {}
    with contextlib.ExitStack() as servers:
        for name, suite in SUITES.items():
            if args.suite not in ("all", name):
                continue
            chosen = [v for v in suite.variants if args.variants is None or v in args.variants]
            if not chosen:
                continue
            if suite.baseline is not None:
                chosen = list(dict.fromkeys([suite.baseline, *chosen]))
            if name == "psycopg" and POSTGRES_ENV not in os.environ:
                os.environ[POSTGRES_ENV] = servers.enter_context(throwaway_postgres())
            reports[name] = run_rounds(
                name,
                chosen,
                args.rounds or suite.rounds,
                args.requests or suite.requests,
                args.warmup if args.warmup is not None else suite.warmup,
            )
    if args.json:
        only = next(iter(reports.values())) if len(reports) == 1 else reports
        print(json.dumps(only, indent=2))
    else:
        print("\n\n".join(table(report) for report in reports.values()))


if __name__ == "__main__":
    main()
