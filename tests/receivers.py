"""Loopback backends that decode what they are sent: OTLP/HTTP and OTLP/gRPC protobuf,
Loki's push API and Loki's OTLP logs endpoint.

One :class:`Backend` serves ``/v1/traces`` (decoded with ``opentelemetry-proto``),
``/loki/api/v1/push`` (Loki's JSON push body) and ``/otlp/v1/logs`` (OTLP logs, as the
Collector sends them to Loki's native OTLP endpoint), and can misbehave on demand:
answer a scripted sequence of error statuses, refuse a wrong ``Authorization`` with 401,
send a Date header from a clock that is off, or accept connections and never answer.
With ``keep_alive`` it speaks HTTP/1.1 and keeps connections open, as the Collector and
Loki do; ``drop_idle`` then closes each one after answering without saying so, as a
backend or load balancer timing out idle connections does. With ``tls`` (a server-side
``ssl.SSLContext``) it speaks HTTPS, and ``client_certificates`` records the subject of
each client certificate presented.
It is a test double for Tempo/the Collector and Loki, which cannot run here; it checks
the wire format, not those servers. :class:`GrpcTraces` stands in for Tempo's OTLP/gRPC
ingest (port 4317), where the Collector sends the traces it keeps.
"""

from __future__ import annotations

import gzip
import json
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from .helpers import free_port


class Backend:
    def __init__(
        self,
        port: int | None = None,
        keep_alive: bool = False,
        drop_idle: bool = False,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.port = port or free_port()
        self.tls = tls
        self.url = f"https://localhost:{self.port}" if tls else f"http://127.0.0.1:{self.port}"
        self.client_certificates: list[Any] = []
        self.handshake_failures: list[str] = []
        self.trace_requests: list[ExportTraceServiceRequest] = []
        self.loki_pushes: list[dict[str, Any]] = []
        self.otlp_logs: list[ExportLogsServiceRequest] = []
        self.headers: list[dict[str, str]] = []
        self.targets: list[str] = []  # request targets as sent (absolute through a proxy)
        self.peers: list[tuple[str, int]] = []  # the client address of each request
        self.keep_alive = keep_alive
        self.drop_idle = drop_idle
        self.script: list[int] = []  # statuses to answer before succeeding
        self.answered: list[int] = []
        self.hang = threading.Event()  # while set, requests are accepted and never answered
        self.authorization: str | None = None  # when set, any other Authorization gets 401
        self.clock_offset = 0.0  # seconds added to the time in its Date headers
        self._release = threading.Event()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # -- lifecycle
    def start(self) -> Backend:
        backend = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1" if self.keep_alive else "HTTP/1.0"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def date_time_string(self, timestamp: float | None = None) -> str:
                return super().date_time_string(time.time() + backend.clock_offset)

            def do_POST(self) -> None:
                backend._handle(self)
                if backend.drop_idle:
                    self.close_connection = True

        self._server = _Server(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._server.backend = self
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # -- what arrived
    def spans(self) -> list[tuple[dict[str, Any], Span]]:
        """Every span received, with its resource attributes."""
        with self._lock:
            return spans_of(self.trace_requests)

    def log_records(self) -> list[tuple[dict[str, Any], LogRecord]]:
        """Every OTLP log record received on ``/otlp/v1/logs``, with its resource attributes."""
        with self._lock:
            return _flatten(self.otlp_logs, "resource_logs", "scope_logs", "log_records")

    def log_entries(self) -> list[tuple[dict[str, str], str, str, dict[str, str]]]:
        """Every (labels, ts, line, structured metadata) received."""
        with self._lock:
            pushes = list(self.loki_pushes)
        entries = []
        for push in pushes:
            for stream in push["streams"]:
                for value in stream["values"]:
                    metadata = value[2] if len(value) > 2 else {}
                    entries.append((stream["stream"], value[0], value[1], metadata))
        return entries

    def wait_for(self, condition: Callable[[], bool], timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return True
            time.sleep(0.05)
        return condition()

    # -- serving
    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length)
        if self.hang.is_set():
            self._release.wait(60)
            return
        with self._lock:
            if isinstance(request.connection, ssl.SSLSocket):
                self.client_certificates.append(request.connection.getpeercert())
            self.headers.append({k.lower(): v for k, v in request.headers.items()})
            self.targets.append(request.path)
            self.peers.append(request.client_address)
            status = self.script.pop(0) if self.script else 0
            if self.authorization is not None and (
                request.headers.get("Authorization") != self.authorization
            ):
                status = 401
        if status:
            self.answered.append(status)
            self._answer(request, status)
            return
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        path = urllib.parse.urlsplit(request.path).path
        if path == "/v1/traces":
            message = ExportTraceServiceRequest()
            message.ParseFromString(body)
            with self._lock:
                self.trace_requests.append(message)
            self._answer(request, 200)
        elif path == "/loki/api/v1/push":
            assert request.headers.get("Content-Type") == "application/json"
            with self._lock:
                self.loki_pushes.append(json.loads(body))
            self._answer(request, 204)
        elif path == "/otlp/v1/logs":
            # Loki's OTLP endpoint takes protobuf (and JSON, which the Collector never sends).
            if request.headers.get("Content-Type") != "application/x-protobuf":
                self._answer(request, 415)
                return
            logs = ExportLogsServiceRequest()
            logs.ParseFromString(body)
            with self._lock:
                self.otlp_logs.append(logs)
            self._answer(request, 204)
        else:
            self._answer(request, 404)

    @staticmethod
    def _answer(request: BaseHTTPRequestHandler, status: int) -> None:
        request.send_response(status)
        request.send_header("Content-Length", "0")
        request.end_headers()


class _Server(ThreadingHTTPServer):
    """Serves each connection on its own thread, the TLS handshake included (so a client
    that fails it is recorded, and never stalls the others)."""

    backend: Backend

    def finish_request(self, request: Any, client_address: Any) -> None:
        tls = self.backend.tls
        if tls is None:
            super().finish_request(request, client_address)
            return
        try:
            wrapped = tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            self.backend.handshake_failures.append(str(exc))
            return
        with wrapped:
            super().finish_request(wrapped, client_address)


class GrpcTraces:
    """OTLP/gRPC trace ingest (``TraceService/Export``, gzip or not) on a loopback port, as
    Tempo serves it on 4317: records and decodes every request and answers success."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.requests: list[ExportTraceServiceRequest] = []
        self.peers: list[str] = []
        self._lock = threading.Lock()
        self._server: Any = None

    def start(self) -> GrpcTraces:
        from concurrent import futures

        import grpc
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

        receiver = self

        class Service(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request: ExportTraceServiceRequest, context: Any) -> Any:
                with receiver._lock:
                    receiver.requests.append(request)
                    receiver.peers.append(context.peer())
                return trace_service_pb2.ExportTraceServiceResponse()

        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), self._server)
        if self._server.add_insecure_port(f"127.0.0.1:{self.port}") != self.port:
            raise OSError(f"cannot listen on 127.0.0.1:{self.port}")
        self._server.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None)
            self._server = None

    def spans(self) -> list[tuple[dict[str, Any], Span]]:
        """Every span received, with its resource attributes."""
        with self._lock:
            return spans_of(self.requests)


def spans_of(requests: list[ExportTraceServiceRequest]) -> list[tuple[dict[str, Any], Span]]:
    return _flatten(requests, "resource_spans", "scope_spans", "spans")


def _flatten(requests: list[Any], resources: str, scopes: str, items: str) -> list[Any]:
    """Every item of OTLP export requests (spans, log records), with its resource's
    attributes."""
    found = []
    for request in requests:
        for per_resource in getattr(request, resources):
            resource = attributes(per_resource.resource.attributes)
            for scope in getattr(per_resource, scopes):
                found.extend((resource, item) for item in getattr(scope, items))
    return found


def attributes(pairs: Any) -> dict[str, Any]:
    """OTLP KeyValues as a plain dict."""
    result: dict[str, Any] = {}
    for pair in pairs:
        kind = pair.value.WhichOneof("value")
        result[pair.key] = getattr(pair.value, kind) if kind else None
    return result


class Posts(ThreadingHTTPServer):
    """A loopback HTTP endpoint keeping every JSON body POSTed to it, by path."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _PostHandler)
        self.daemon_threads = True
        self.bodies: list[tuple[str, dict[str, Any]]] = []
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"

    def at(self, path: str) -> list[dict[str, Any]]:
        return [body for p, body in list(self.bodies) if p == path]


class _PostHandler(BaseHTTPRequestHandler):
    server: Posts

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.server.bodies.append((self.path, json.loads(self.rfile.read(length))))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        pass
