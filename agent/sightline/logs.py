"""Logs: trace ids on every record, one JSON renderer, and shipping to Loki.

``init()`` wraps the log-record factory so every record carries the current span's
ids (``otelTraceID``/``otelSpanID``, the names OpenTelemetry's logging instrumentation
uses, so ``extra={"trace_id": ...}`` in app code never collides). Only if the root
logger has no handler does it add one, writing to stdout as JSON
(``SIGHTLINE_LOG_FORMAT=json|text``), and it changes the root level only when
``SIGHTLINE_LOG_LEVEL`` asks. It never calls ``basicConfig`` and never removes the
app's handlers; an app that calls ``logging.basicConfig()`` later gets exactly its own
configuration (Sightline's stdout handler steps aside, so no line is written twice).
``shutdown()`` restores everything it changed.

Rendering never raises and never writes anything but valid UTF-8 JSON: a value whose
``repr`` raises is named instead, a lone surrogate (a file name decoded with
``surrogateescape``) is written as the escaped byte, and ``extra`` keys that collide
with the document's own keys (or with the trace-id attributes) are kept with an
``extra_`` prefix.

With ``SIGHTLINE_LOKI_URL`` set, a handler on the root logger ships each record's
JSON line to Loki through a bounded queue; see docs/logs.md for why Sightline has its
own transport and how it behaves when Loki is slow or down.
"""

from __future__ import annotations

import json
import json.encoder
import logging
import os
import re
import sys
import time
import traceback
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry import trace

from . import _safety
from ._export import (
    BatchQueue,
    Endpoint,
    ExportStats,
    Retrying,
    basic_auth,
    push,
    split_credentials,
)
from ._settings import Settings, tls_context
from ._spans import current_span_reader

logger = logging.getLogger("sightline")

TRACE_ID = "otelTraceID"
SPAN_ID = "otelSpanID"
_CACHE = "_sightline_json"
#: Prefix of ``extra`` keys that would collide with the document's keys.
EXTRA_PREFIX = "extra_"

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
            _value(record.levelname),
            ',"logger":',
            _value(record.name),
            ',"message":',
            _value(_message(record)),
            self._identity,
        ]
        trace_id = attrs.get(TRACE_ID)
        if trace_id:
            parts += [',"trace_id":', _value(trace_id), ',"span_id":', _value(attrs.get(SPAN_ID))]
        if record.exc_info and record.exc_info[0] is not None:
            parts += [',"exception":', _value(_exception(record.exc_info))]
        elif record.exc_text:
            exception = {"type": "", "message": "", "stack": record.exc_text}
            parts += [',"exception":', _value(exception)]
        if record.stack_info:
            parts += [',"stack_info":', _value(record.stack_info)]
        for key, value in attrs.items():
            if key not in _STANDARD:
                name = key if key not in _CORE_KEYS else EXTRA_PREFIX + key
                parts += [",", _value(str(key) if name is key else name), ":", _value(value)]
        parts.append("}")
        rendered = escape_surrogates("".join(parts))
        attrs[_CACHE] = (self, rendered)
        return rendered


# One encoder for every record: json.dumps with options builds a new one per call.
_encode = json.JSONEncoder(
    default=repr, ensure_ascii=False, separators=(",", ":"), allow_nan=False
).encode
_quote = json.encoder.encode_basestring  # the C escaper where available


def _value(value: Any) -> str:
    """One JSON value; what JSON cannot hold (NaN, non-string keys, cycles) as its repr,
    and a value whose repr raises as a note naming its type."""
    kind = value.__class__
    if kind is str:
        return _quote(value)
    if kind is int:
        return int.__repr__(value)
    if kind is bool or value is None:
        return "true" if value is True else "false" if value is False else "null"
    try:
        return _encode(value)
    except Exception:
        pass
    try:
        return _quote(str(repr(value)))
    except Exception:
        return _quote(f"<unrepresentable {type(value).__name__}>")


def _message(record: logging.LogRecord) -> str:
    """The record's message; if its arguments do not fit the format, the format and the
    arguments as they are (the stdlib would print a traceback and lose the line)."""
    try:
        return record.getMessage()
    except Exception:
        try:
            return f"{record.msg!s} {record.args!r}"
        except Exception:
            return f"<unrepresentable {type(record.msg).__name__} message>"


def _exception(exc_info: Any) -> dict[str, str]:
    kind, value, tb = exc_info
    try:
        message = str(value)
    except Exception:
        message = f"<unrepresentable {kind.__qualname__}>"
    try:
        stack = "".join(traceback.format_exception(kind, value, tb))
    except Exception:
        stack = ""
    return {"type": kind.__qualname__, "message": message, "stack": stack}


_SURROGATE = re.compile("[\ud800-\udfff]")


def _surrogate_text(match: re.Match[str]) -> str:
    """What a lone surrogate stands for, as text: the undecodable byte 0xNN that
    ``surrogateescape`` maps to U+DC80..U+DCFF as backslash-x-NN, any other as
    backslash-u-NNNN."""
    code = ord(match.group())
    return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}"


def _surrogate_json(match: re.Match[str]) -> str:
    return _surrogate_text(match).replace("\\", "\\\\")  # inside a JSON string


def escape_surrogates(text: str, plain: bool = False) -> str:
    """``text`` made encodable as UTF-8: each lone surrogate (which, in JSON text, only a
    string can hold) becomes the escaped byte it stands for, readable and valid."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub(_surrogate_text if plain else _surrogate_json, text)
    return text


TEXT_FORMAT = (
    "%(asctime)s %(levelname)s %(name)s [trace_id=%(otelTraceID)s span_id=%(otelSpanID)s] "
    "%(message)s"
)


class TextFormatter(logging.Formatter):
    """The readable format, with the trace ids; lone surrogates escaped as in JSON."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT, defaults={TRACE_ID: "", SPAN_ID: ""})

    def format(self, record: logging.LogRecord) -> str:
        return escape_surrogates(super().format(record), plain=True)


def text_formatter() -> logging.Formatter:
    return TextFormatter()


LokiItem = tuple[tuple[tuple[str, str], ...], str, str, dict[str, str]]


def loki_endpoint(settings: Settings) -> Endpoint:
    """Loki's push API, with the credentials, tenant and TLS the settings give."""
    url, user, password = split_credentials(settings.loki_url)
    if urllib.parse.urlsplit(url).path in ("", "/"):
        url = url.rstrip("/") + "/loki/api/v1/push"
    headers: dict[str, str] = {}
    if settings.loki_token:
        headers["Authorization"] = f"Bearer {settings.loki_token}"
    elif settings.loki_username or user is not None:
        if settings.loki_username:
            user, password = settings.loki_username, settings.loki_password
        headers["Authorization"] = basic_auth(user or "", password)
    if settings.loki_tenant:
        headers["X-Scope-OrgID"] = settings.loki_tenant
    return Endpoint(
        url=url,
        headers=headers,
        timeout=settings.loki_timeout,
        tls=tls_context(
            settings.loki_certificate,
            settings.loki_client_certificate,
            settings.loki_client_key,
        ),
        ca_setting="SIGHTLINE_LOKI_CERTIFICATE",
    )


class LokiSender:
    """Groups a batch into streams and pushes it as Loki's JSON push body."""

    def __init__(self, settings: Settings, stats: ExportStats) -> None:
        self.endpoint = loki_endpoint(settings)
        self.stats = stats
        self.policy = Retrying(base=0.5, cap=10.0, max_attempts=8)
        self.queue: BatchQueue[LokiItem] | None = None

    def __call__(self, batch: Sequence[LokiItem]) -> None:
        streams: dict[tuple[tuple[str, str], ...], list[list[Any]]] = {}
        sent = 0
        for item in batch:
            if not _well_formed(item):  # dropped alone, never its batch
                self.stats.dropped("unencodable", 1)
                continue
            labels, ts, line, metadata = item
            value: list[Any] = [ts, line, metadata] if metadata else [ts, line]
            streams.setdefault(labels, []).append(value)
            sent += 1
        if not sent:
            return
        text = json.dumps(
            {"streams": [{"stream": dict(k), "values": v} for k, v in streams.items()]},
            ensure_ascii=False,
            separators=(",", ":"),
        )
        # A surrogate in a logger name or label value: escaped, as the formatter does.
        body = escape_surrogates(text).encode()
        assert self.queue is not None
        push(
            self.endpoint,
            body,
            "application/json",
            sent,
            self.stats,
            self.queue.stopping,
            self.queue.deadline,
            self.policy,
        )


def _well_formed(item: Any) -> bool:
    try:
        labels, ts, line, metadata = item
        return (
            type(line) is str
            and type(ts) is str
            and all(type(k) is str and type(v) is str for k, v in labels)
            and all(type(k) is str and type(v) is str for k, v in metadata.items())
        )
    except Exception:
        return False


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
        _safety.report("logs.loki", sys.exc_info()[1] or RuntimeError("log record failed"))


def _item_size(item: LokiItem) -> int:
    return len(item[2]) + 64  # the line, and about what its stream entry adds


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
        if settings.loki_url and not settings.ships_logs:
            logger.warning(
                "sightline: logs are not shipped to %s: %s",
                settings.loki_url.rpartition("@")[2],
                "OTEL_SDK_DISABLED is true"
                if settings.sdk_disabled
                else f"OTEL_LOGS_EXPORTER={settings.logs_exporter}",
            )
        elif (
            not settings.loki_url
            and settings.logs_exporter == "otlp"
            and os.environ.get("OTEL_LOGS_EXPORTER", "").strip()
        ):
            logger.warning(
                "sightline: OTEL_LOGS_EXPORTER=otlp ships no logs: Sightline ships them to "
                "Loki's push API; set SIGHTLINE_LOKI_URL (logs still go to stdout)"
            )
        if settings.ships_logs:
            sender = LokiSender(settings, stats)
            self.queue = BatchQueue(
                "logs",
                sender,
                stats,
                max_items=settings.loki_buffer,
                max_bytes=settings.loki_buffer_bytes,
                batch_items=settings.loki_batch_size,
                interval=1.0,
                size_of=_item_size,
                on_stop=sender.endpoint.close,
                batch_bytes=settings.loki_batch_bytes,
            )
            sender.queue = self.queue

    def install(self) -> None:
        root = logging.getLogger()
        self.factory = TraceIdFactory(logging.getLogRecordFactory())
        logging.setLogRecordFactory(self.factory)
        install_make_record()
        if not root.handlers:
            handler = logging.StreamHandler(sys.stdout)
            handler.setFormatter(
                self.formatter if self.settings.log_format == "json" else text_formatter()
            )
            self.stdout = handler
            if self.settings.log_level:  # only when asked: more records could carry secrets
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
        uninstall_make_record()
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
_pristine_make_record = logging.Logger.makeRecord
_RENAMED = (TRACE_ID, SPAN_ID)


def _make_record(
    self: logging.Logger,
    name: str,
    level: int,
    fn: str,
    lno: int,
    msg: object,
    args: Any,
    exc_info: Any,
    func: str | None = None,
    extra: Any = None,
    sinfo: str | None = None,
) -> logging.LogRecord:
    # The record factory has put the trace ids on the record already, and makeRecord
    # raises KeyError into the app for an `extra` key the record has: such keys are
    # kept under the prefix instead.
    if extra is not None and (TRACE_ID in extra or SPAN_ID in extra):
        extra = {(EXTRA_PREFIX + k if k in _RENAMED else k): v for k, v in extra.items()}
    return _pristine_make_record(
        self, name, level, fn, lno, msg, args, exc_info, func, extra, sinfo
    )


def install_make_record() -> None:
    logging.Logger.makeRecord = _make_record  # type: ignore[method-assign]


def uninstall_make_record() -> None:
    if logging.Logger.makeRecord is _make_record:
        logging.Logger.makeRecord = _pristine_make_record  # type: ignore[method-assign]
