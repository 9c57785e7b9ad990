"""What the suites share: the incumbent's tracing (the SDK exporting OTLP/HTTP to a
loopback sink in the process), Sightline's set-ups, the log handlers compared, the
checks a worker makes of what a variant delivered, and :class:`Suite`."""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry

Probe = Callable[[], float]


#: The line the view logs in the ``full`` suite, and the ``log`` suite's call.
LOG_MESSAGE, LOG_UID = "served user", 42


#: python-json-logger's fields in the incumbent stack; the filter below fills the ids.
JSONLOGGER_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s %(trace_id)s %(span_id)s"


HEX_ID = re.compile(r"[0-9a-f]+\Z")


#: Spans either stack buffers for export (OTEL_BSP_MAX_QUEUE_SIZE's default for both).
QUEUE_SIZE = int(os.environ.get("OTEL_BSP_MAX_QUEUE_SIZE", "2048"))


def samples(registry: CollectorRegistry, name: str) -> Probe:
    return lambda: sum(s.value for m in registry.collect() for s in m.samples if s.name == name)


def sightline_metrics() -> CollectorRegistry:
    """``sightline.init()`` with metrics alone and no server, the ``metrics`` suite's
    and the dependency suites'; returns its registry."""
    import sightline

    registry = CollectorRegistry()
    sightline.init(service="bench", registry=registry, metrics_addr="off", traces=False, logs=False)
    return registry


class Sink:
    """A loopback OTLP/HTTP and Loki receiver: answers every POST with 200 and keeps the
    bodies, decoded only when :meth:`spans` or :meth:`lines` is called, after the timed
    requests. ``GET /count`` answers both counts as JSON, for :class:`RemoteSink`.
    """

    def __init__(self, port: int = 0) -> None:
        self.bodies: list[tuple[str, str, bytes]] = []  # path, encoding, body
        bodies, sink = self.bodies, self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as exporters expect

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                bodies.append((self.path, self.headers.get("Content-Encoding", ""), body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self) -> None:
                answer = json.dumps({"spans": sink.spans(), "lines": sink.lines()}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        # No poll timer: a thread woken every 0.5 s waits for the GIL through futile
        # wakeups while the timed loop runs, and slows it down (about 8 µs a request of
        # a Flask app logging a line), a cost only the variants with a sink would pay.
        # The sink is never shut down, so nothing needs the timer.
        threading.Thread(target=self.server.serve_forever, args=(None,), daemon=True).start()

    def _decoded(self, path: str) -> list[bytes]:
        return [
            gzip.decompress(body) if encoding == "gzip" else body
            for at, encoding, body in list(self.bodies)
            if at == path
        ]

    def spans(self) -> int:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        count = 0
        for body in self._decoded("/v1/traces"):
            request = ExportTraceServiceRequest.FromString(body)
            for resource_spans in request.resource_spans:
                count += sum(len(scope.spans) for scope in resource_spans.scope_spans)
        return count

    def lines(self) -> int:
        """Log lines pushed to Loki's push API (JSON bodies)."""
        return sum(
            len(stream["values"])
            for body in self._decoded("/loki/api/v1/push")
            for stream in json.loads(body)["streams"]
        )


class RemoteSink:
    """A :class:`Sink` in a process of its own, so that receiving and decoding what the
    stacks export costs the timed process nothing: for suites that count all of the
    process's CPU time."""

    def __init__(self) -> None:
        code = (
            "import sys; from suites.common import Sink; "
            "s = Sink(); print(s.url, flush=True); sys.stdin.read()"
        )
        self.process = subprocess.Popen(
            [sys.executable, "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        )
        assert self.process.stdout is not None
        self.url = self.process.stdout.readline().strip()
        if not self.url.startswith("http://"):
            raise SystemExit(f"the sink process did not start: {self.url!r}")

    def _counts(self) -> dict[str, int]:
        with urllib.request.urlopen(f"{self.url}/count", timeout=60) as response:
            counts: dict[str, int] = json.loads(response.read())
        return counts

    def spans(self) -> int:
        return self._counts()["spans"]

    def lines(self) -> int:
        return self._counts()["lines"]


#: What :func:`new_sink` starts: :func:`use_remote_sink` switches a worker to RemoteSink.
_sink_class: Callable[[], Sink | RemoteSink] = Sink


def use_remote_sink() -> None:
    global _sink_class
    _sink_class = RemoteSink


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def new_sink() -> Sink | RemoteSink:
    return _sink_class()


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

    sink = new_sink()
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


def sightline_full(
    ratio: float | None = None,
    registry: CollectorRegistry | None = None,
    sink: Sink | RemoteSink | None = None,
    loki: bool = False,
    served: bool = False,
) -> tuple[Probe, logging.StreamHandler[Any], Callable[[], int]]:
    """``sightline.init()`` with metrics, traces and logs, exporting to a loopback sink
    (``sink``, or a new one), with ``loki`` shipping every log line to it too, and with
    ``served`` serving ``/metrics`` from its background server, as it does by default.

    Returns the requests its metrics counted, its JSON handler on the root logger and the
    flush that counts the spans the sink got. Pass ``registry`` to read other metrics
    from it.
    """
    import sightline

    sink = new_sink() if sink is None else sink
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
        metrics_addr=f"127.0.0.1:{free_port()}" if served else "off",
        otlp_endpoint=sink.url,
        logs=True,
        log_level="INFO",  # the root level the other stacks log at (see on_root)
        loki_url=sink.url if loki else "",
        **sampler,
    )
    from sightline.logs import JsonFormatter

    handlers = logging.getLogger().handlers
    if len(handlers) != 1 + loki or not isinstance(
        getattr(handlers[0], "formatter", None), JsonFormatter
    ):
        raise SystemExit(f"sightline: expected its JSON handler on the root logger: {handlers}")
    assert isinstance(handlers[0], logging.StreamHandler)

    def exported() -> int:
        sightline.shutdown()  # flushes the span queue before it returns
        return sink.spans()

    return samples(registry, "http_server_request_duration_seconds_count"), handlers[0], exported


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
    #: What the suite's runs need running beside them (a database server), entered
    #: before its first run and left after its last.
    server: Callable[[], AbstractContextManager[None]] | None = None


def versus(
    prefix: str,
    title: str,
    target: float = 0.25,
    target_text: str = "0.25x",
    floor: str | None = None,
    **settings: Any,
) -> Suite:
    """The usual comparison: ``<prefix>_bare`` (the baseline), ``<prefix>_incumbent`` and
    ``<prefix>_sightline``, which must add at most ``target`` times what the incumbent
    adds; with ``floor``, ``<prefix>_<floor>`` too, a reference compared with the
    incumbent and given no target. ``settings`` are the rest of :class:`Suite`'s fields."""
    bare, incumbent, ours = (f"{prefix}_{stack}" for stack in ("bare", "incumbent", "sightline"))
    references = {incumbent: incumbent, ours: incumbent}
    if floor is not None:
        references = {f"{prefix}_{floor}": incumbent, **references}
    return Suite(
        title=title,
        variants=(bare, *references),
        baseline=bare,
        references=references,
        targets={ours: target},
        target_text={ours: target_text},
        **settings,
    )
