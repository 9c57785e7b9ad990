"""Logs: trace ids on every record, one JSON renderer, and shipping to Loki.

``init()`` wraps the log-record factory so every record carries the current span's
ids (``otelTraceID``/``otelSpanID``, the names OpenTelemetry's logging instrumentation
uses, so ``extra={"trace_id": ...}`` in app code never collides). Only if the root
logger has no handler does it add one, writing to stdout as JSON
(``SIGHTLINE_LOG_FORMAT=json|text``). It never calls ``basicConfig`` and never removes
the app's handlers; an app that calls ``logging.basicConfig()`` later gets exactly
its own configuration (Sightline's stdout handler steps aside, so no line is written
twice). ``shutdown()`` restores everything it changed.

With ``SIGHTLINE_LOKI_URL`` set, a handler on the root logger ships each record's
JSON line to Loki through a bounded queue; see docs/logs.md for why Sightline has its
own transport and how it behaves when Loki is slow or down.
"""

from __future__ import annotations

import base64
import json
import json.encoder
import logging
import sys
import time
import traceback
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry import trace

from ._export import BatchQueue, Endpoint, ExportStats, Retrying, push
from ._settings import Settings
from ._spans import current_span_reader

TRACE_ID = "otelTraceID"
SPAN_ID = "otelSpanID"
_CACHE = "_sightline_json"

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
    TRACE_ID,
    SPAN_ID,
    _CACHE,
}
_CORE_KEYS = (
    "ts",
    "level",
    "logger",
    "message",
    "service",
    "env",
    "trace_id",
    "span_id",
    "exception",
    "stack_info",
)


class TraceIdFactory:
    """A log-record factory adding the current span's ids (empty strings outside a span)."""

    def __init__(self, previous: Callable[..., logging.LogRecord]) -> None:
        self.previous = previous
        self.active = True
        self._current_span = current_span_reader()

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record = self.previous(*args, **kwargs)
        if self.active:
            span = self._current_span()
            ids: tuple[str, str] | None = getattr(span, "hex_ids", None)
            if ids is not None:  # Sightline's request span: formatted once per request
                record.otelTraceID, record.otelSpanID = ids
                return record
            ctx = trace.get_current_span().get_span_context() if span is not None else None
            if ctx is not None and ctx.is_valid:
                record.otelTraceID = format(ctx.trace_id, "032x")
                record.otelSpanID = format(ctx.span_id, "016x")
            else:
                record.otelTraceID = record.otelSpanID = ""
        return record


class _Clock:
    """RFC 3339 UTC timestamps with milliseconds; the per-second prefix is computed once."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._prefix}.{int((created - second) * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, message, service, env, trace ids,
    exception and every ``extra`` field (unserialisable values as ``repr``, never an error).

        handler.setFormatter(JsonFormatter(service="checkout", environment="prod"))
    """

    def __init__(self, service: str = "", environment: str = "") -> None:
        super().__init__()
        self.service = service
        self.environment = environment
        self._clock = _Clock()
        self._identity = ',"service":' + _quote(service)
        if environment:
            self._identity += ',"env":' + _quote(environment)

    def format(self, record: logging.LogRecord) -> str:
        # A record shipped to Loki and printed to stdout is rendered once.
        attrs = record.__dict__
        cached = attrs.get(_CACHE)
        if cached is not None and cached[0] is self:
            return cached[1]  # type: ignore[no-any-return]
        # The fixed keys are written directly (strings escaped by the json module's C
        # escaper); only the exception and `extra` values go through the encoder.
        parts = [
            '{"ts":"',
            self._clock(record.created),
            '","level":',
            _quote(record.levelname),
            ',"logger":',
            _quote(record.name),
            ',"message":',
            _quote(record.getMessage()),
            self._identity,
        ]
        trace_id = attrs.get(TRACE_ID)
        if trace_id:
            parts += [',"trace_id":"', trace_id, '","span_id":"', attrs.get(SPAN_ID, ""), '"']
        if record.exc_info and record.exc_info[0] is not None:
            kind, value, tb = record.exc_info
            exception = {
                "type": kind.__qualname__,
                "message": str(value),
                "stack": "".join(traceback.format_exception(kind, value, tb)),
            }
            parts += [',"exception":', _value(exception)]
        elif record.exc_text:
            exception = {"type": "", "message": "", "stack": record.exc_text}
            parts += [',"exception":', _value(exception)]
        if record.stack_info:
            parts += [',"stack_info":', _quote(record.stack_info)]
        for key, value in attrs.items():
            if key not in _STANDARD and key not in _CORE_KEYS:
                parts += [",", _quote(str(key)), ":", _value(value)]
        parts.append("}")
        rendered = "".join(parts)
        attrs[_CACHE] = (self, rendered)
        return rendered


# One encoder for every record: json.dumps with options builds a new one per call.
_encode = json.JSONEncoder(
    default=repr, ensure_ascii=False, separators=(",", ":"), allow_nan=False
).encode
_quote = json.encoder.encode_basestring  # the C escaper where available


def _value(value: Any) -> str:
    """One JSON value; what JSON cannot hold (NaN, non-string keys, cycles) as its repr."""
    kind = value.__class__
    if kind is str:
        return _quote(value)
    if kind is int:
        return int.__repr__(value)
    if kind is bool or value is None:
        return "true" if value is True else "false" if value is False else "null"
    try:
        return _encode(value)
    except (TypeError, ValueError, RecursionError):
        return _quote(repr(value))


TEXT_FORMAT = (
    "%(asctime)s %(levelname)s %(name)s [trace_id=%(otelTraceID)s span_id=%(otelSpanID)s] "
    "%(message)s"
)


def text_formatter() -> logging.Formatter:
    return logging.Formatter(TEXT_FORMAT, defaults={TRACE_ID: "", SPAN_ID: ""})


LokiItem = tuple[tuple[tuple[str, str], ...], str, str, dict[str, str]]


class LokiSender:
    """Groups a batch into streams and pushes it as Loki's JSON push body."""

    def __init__(self, settings: Settings, stats: ExportStats) -> None:
        url = settings.loki_url
        if urllib.parse.urlsplit(url).path in ("", "/"):
            url = url.rstrip("/") + "/loki/api/v1/push"
        headers: dict[str, str] = {}
        if settings.loki_token:
            headers["Authorization"] = f"Bearer {settings.loki_token}"
        elif settings.loki_username:
            pair = f"{settings.loki_username}:{settings.loki_password}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        if settings.loki_tenant:
            headers["X-Scope-OrgID"] = settings.loki_tenant
        self.endpoint = Endpoint(url=url, headers=headers, timeout=settings.loki_timeout)
        self.stats = stats
        self.policy = Retrying(base=0.5, cap=10.0, max_attempts=8)
        self.queue: BatchQueue[LokiItem] | None = None

    def __call__(self, batch: Sequence[LokiItem]) -> None:
        streams: dict[tuple[tuple[str, str], ...], list[list[Any]]] = {}
        for labels, ts, line, metadata in batch:
            value: list[Any] = [ts, line, metadata] if metadata else [ts, line]
            streams.setdefault(labels, []).append(value)
        body = json.dumps(
            {"streams": [{"stream": dict(k), "values": v} for k, v in streams.items()]},
            ensure_ascii=False,
            separators=(",", ":"),
        ).encode()
        assert self.queue is not None
        push(
            self.endpoint,
            body,
            "application/json",
            len(batch),
            self.stats,
            self.queue.stopping,
            self.queue.deadline,
            self.policy,
        )


class LokiHandler(logging.Handler):
    """Queues each record's JSON line for Loki. Never blocks, never raises."""

    def __init__(
        self, settings: Settings, queue: BatchQueue[LokiItem], formatter: JsonFormatter
    ) -> None:
        super().__init__()
        self.setFormatter(formatter)
        self.queue = queue
        static = {
            "service_name": settings.service,
            "deployment_environment": settings.environment,
            "service_version": settings.service_version,
        }
        self._static = tuple((k, static[k]) for k in settings.loki_labels if k in static)
        self._with_level = "level" in settings.loki_labels
        self._with_logger = "logger" in settings.loki_labels

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
            labels = self._static
            if self._with_level:
                labels = (*labels, ("level", record.levelname.lower()))
            if self._with_logger:
                labels = (*labels, ("logger", record.name))
            metadata = {}
            trace_id = record.__dict__.get(TRACE_ID)
            if trace_id:
                metadata = {"trace_id": trace_id, "span_id": record.__dict__.get(SPAN_ID, "")}
            self.queue.put((labels, str(int(record.created * 1e9)), line, metadata))
        except Exception:
            self.handleError(record)

    def handleError(self, record: logging.LogRecord) -> None:
        from . import _safety

        _safety.report("logs.loki", sys.exc_info()[1] or RuntimeError("log record failed"))


class Logs:
    """What one ``init()`` changed in logging; :meth:`close` puts it all back."""

    def __init__(self, settings: Settings, stats: ExportStats) -> None:
        self.settings = settings
        self.formatter = JsonFormatter(settings.service, settings.environment)
        self.factory: TraceIdFactory | None = None
        self.stdout: logging.Handler | None = None
        self.loki: LokiHandler | None = None
        self.queue: BatchQueue[LokiItem] | None = None
        self._root_level: int | None = None
        self._access_level: int | None = None
        self._original_basic_config: Callable[..., None] | None = None
        if settings.loki_url:
            sender = LokiSender(settings, stats)
            self.queue = BatchQueue(
                "logs",
                sender,
                stats,
                max_items=settings.loki_buffer,
                batch_items=settings.loki_batch_size,
                interval=1.0,
                size_of=lambda item: len(item[2]) + 64,
                on_stop=sender.endpoint.close,
                batch_bytes=settings.loki_batch_bytes,
            )
            sender.queue = self.queue

    def install(self) -> None:
        root = logging.getLogger()
        self.factory = TraceIdFactory(logging.getLogRecordFactory())
        logging.setLogRecordFactory(self.factory)
        if not root.handlers:
            handler = logging.StreamHandler(sys.stdout)
            handler.setFormatter(
                self.formatter if self.settings.log_format == "json" else text_formatter()
            )
            self.stdout = handler
            self._root_level = root.level
            root.setLevel(self.settings.log_level)
            root.addHandler(handler)
        if self.queue is not None:
            self.loki = LokiHandler(self.settings, self.queue, self.formatter)
            root.addHandler(self.loki)
        if self.settings.access_log:
            access = logging.getLogger("sightline.access")
            self._access_level = access.level
            access.setLevel(logging.INFO)
        self._original_basic_config = logging.basicConfig
        # basicConfig() does nothing once the root logger has a handler; Sightline's
        # handlers must not change what an app's later basicConfig() call does.
        logging.basicConfig = self._basic_config

    def reattach(self) -> None:
        """Put the Loki handler back if a framework cleared the root logger's handlers
        (Celery's worker does, unless ``worker_hijack_root_logger`` is off)."""
        root = logging.getLogger()
        if self.loki is not None and self.loki not in root.handlers:
            root.addHandler(self.loki)

    def _basic_config(self, **kwargs: Any) -> None:
        root = logging.getLogger()
        original = self._original_basic_config or _pristine_basic_config
        if self.stdout is not None and self.stdout in root.handlers:
            root.removeHandler(self.stdout)
            if self._root_level is not None:
                root.setLevel(self._root_level)
            self.stdout = None
            self._root_level = None
        loki = self.loki if self.loki is not None and self.loki in root.handlers else None
        if loki is not None:
            root.removeHandler(loki)
        try:
            original(**kwargs)
        finally:
            if loki is not None and loki not in root.handlers:
                root.addHandler(loki)

    def close(self, deadline: float) -> None:
        root = logging.getLogger()
        if logging.basicConfig == self._basic_config:
            logging.basicConfig = self._original_basic_config or _pristine_basic_config
        if self.factory is not None:
            if logging.getLogRecordFactory() is self.factory:
                logging.setLogRecordFactory(self.factory.previous)
            else:  # someone wrapped ours since: stay in the chain, but inert
                self.factory.active = False
        if self.stdout is not None:
            root.removeHandler(self.stdout)
            if self._root_level is not None:
                root.setLevel(self._root_level)
        if self.loki is not None:
            root.removeHandler(self.loki)
        if self._access_level is not None:
            logging.getLogger("sightline.access").setLevel(self._access_level)
        if self.queue is not None:
            self.queue.close(deadline)


_pristine_basic_config = logging.basicConfig
