"""Traces: an OpenTelemetry SDK provider exporting OTLP/HTTP protobuf, and server spans.

``init()`` configures tracing unless the app already installed an SDK tracer provider
(then Sightline's server spans go to that provider and its exporters, and Sightline
exports nothing itself). The standard variables are honoured: ``OTEL_TRACES_SAMPLER``
and ``_ARG``, ``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT``, ``_HEADERS``, ``_TIMEOUT``,
``_COMPRESSION`` (gzip by default) and ``OTEL_BSP_*``.

Export runs through Sightline's own bounded queue and HTTP pusher rather than the
SDK's batch processor and exporter: every dropped span is counted, retries are
bounded and shutdown ends on time even with the collector hung (the SDK's exporter
can block shutdown for over a minute). Sightline's own spans need no SDK. The global
provider is a stand-in, set once per process (it can be set only once), which makes the
SDK's provider when something first asks it for a tracer (``_sdk``): that provider's
sampler and processor follow whatever the current ``init()`` configured
(:class:`Current`); ``shutdown()`` turns both off.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry import baggage, context, propagate, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import Getter
from opentelemetry.semconv.attributes import (
    error_attributes,
    http_attributes,
)
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from . import _fork, _otlp, _resource, _safety
from ._export import BatchQueue, Endpoint, ExportStats, Retrying, push
from ._http import redact_target, redact_url
from ._settings import Settings, tls_context
from ._spans import SPAN_KEY, LeanSpan, Sampling, context_var, wire_size
from .metrics import OTHER_METHOD

logger = logging.getLogger("sightline")


@dataclass
class Current:
    """What the current ``init()`` configured for the SDK provider's spans (:mod:`._sdk`):
    the sampler (``OTEL_TRACES_SAMPLER`` and its argument; None: sample nothing) and the
    export queue (None: export nothing)."""

    sampler: tuple[str, float] | None = None
    queue: BatchQueue[Any] | None = None


_lock = threading.Lock()
_current = Current()
#: The SDK's provider, once something asked the stand-in for a tracer (``_sdk``).
_sdk_provider: Any = None
_stand_in: _StandIn | None = None


class _StandIn(trace.TracerProvider):
    """The global provider Sightline sets: the SDK's, made when first asked for a tracer
    (every other attribute, ``add_span_processor`` say, is the SDK provider's too)."""

    def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
        try:
            return sdk_provider().get_tracer(*args, **kwargs)  # type: ignore[no-any-return]
        except Exception as exc:  # the app asked: it gets a tracer whatever happens here
            _safety.report("tracing.sdk_provider", exc)
            return trace.NoOpTracer()

    def __getattr__(self, name: str) -> Any:
        return getattr(sdk_provider(), name)


def sdk_provider() -> Any:
    """The SDK provider behind the stand-in, made (and the SDK imported) on first use."""
    global _sdk_provider
    with _lock:
        if _sdk_provider is None:
            # Imported with forks held off: a worker forked half-way through would
            # inherit the module's import lock, held for good.
            with _fork.exclusive():
                from . import _sdk
            _sdk_provider = _sdk.provider(_current)
        return _sdk_provider


def _install_stand_in() -> None:
    global _stand_in
    with _lock:
        if _stand_in is None:
            _stand_in = _StandIn()
            trace.set_tracer_provider(_stand_in)


def otlp_endpoint(settings: Settings) -> Endpoint:
    """Where spans go, with the headers and TLS the settings give."""
    url = settings.otlp_traces_endpoint or settings.otlp_endpoint.rstrip("/") + "/v1/traces"
    return Endpoint(
        url=url,
        headers=dict(settings.otlp_headers),
        timeout=settings.otlp_timeout,
        gzip=settings.otlp_compression == "gzip",
        tls=tls_context(
            settings.otlp_certificate,
            settings.otlp_client_certificate,
            settings.otlp_client_key,
        ),
        ca_setting="OTEL_EXPORTER_OTLP_CERTIFICATE",
    )


class OtlpSender:
    """Encodes a batch of spans as OTLP protobuf and pushes it with retries."""

    def __init__(self, settings: Settings, stats: ExportStats) -> None:
        self.endpoint = otlp_endpoint(settings)
        self.settings = settings
        self.stats = stats
        # OTEL_BSP_EXPORT_TIMEOUT caps the backoff between two attempts.
        self.policy = Retrying(base=0.5, cap=min(10.0, settings.bsp_export_timeout), max_attempts=6)
        self.queue: BatchQueue[Any] | None = None

    def __call__(self, batch: Sequence[Any]) -> None:
        own = [span for span in batch if isinstance(span, LeanSpan)]
        sdk = [span for span in batch if not isinstance(span, LeanSpan)]
        # The provider outlives init() and fork; the wire carries this process's identity.
        resource = _resource.attributes(self.settings)
        body = b""
        skipped = 0

        def skip(exc: BaseException) -> None:  # a span that cannot be encoded goes alone
            nonlocal skipped
            skipped += 1
            self.stats.dropped("unencodable", 1)

        if sdk:
            # The SDK's encoder and protobuf, loaded here: Sightline's own spans are
            # encoded without them, and a process that never has an SDK span (most) never
            # pays for their import. Imported with forks held off: a worker forked half-way
            # through would inherit the module's import lock, held for good.
            with _fork.exclusive():
                from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
                from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
            request = _encode_sdk_spans(encode_spans, sdk, skip)
            pairs = [
                KeyValue(
                    key=k,
                    value=AnyValue(int_value=v) if isinstance(v, int) else AnyValue(string_value=v),
                )
                for k, v in resource.items()
            ]
            for resource_spans in request.resource_spans:
                del resource_spans.resource.attributes[:]
                resource_spans.resource.attributes.extend(pairs)
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        _redact_urls(span.attributes, self.settings.redact_query_keys)
            body = request.SerializeToString()
        if own:  # serialised requests concatenate into one holding both
            body += _otlp.resource_spans(resource, own, skip)
        if len(batch) == skipped:
            return
        assert self.queue is not None
        push(
            self.endpoint,
            body,
            "application/x-protobuf",
            len(batch) - skipped,
            self.stats,
            self.queue.stopping,
            self.queue.deadline,
            self.policy,
        )


def _encode_sdk_spans(
    encode_spans: Callable[[Sequence[Any]], Any],
    spans: list[Any],
    skip: Callable[[BaseException], None],
) -> Any:
    try:
        return encode_spans(spans)
    except Exception:  # find the span that cannot be encoded (a lone surrogate, say)
        good = []
        for span in spans:
            try:
                encode_spans([span])
                good.append(span)
            except Exception as exc:
                skip(exc)
        return encode_spans(good)


#: Attributes of client spans (the OpenTelemetry instrumentations', old and stable
#: conventions) that hold a URL or its query, redacted as server spans' are.
_URL_ATTRIBUTES = frozenset(("url.full", "http.url"))
_QUERY_ATTRIBUTES = frozenset(("url.query", "http.target"))


def _redact_urls(attributes: Any, extra_words: tuple[str, ...]) -> None:
    redact: Callable[[str, tuple[str, ...]], str]
    for pair in attributes:
        key = pair.key
        if key in _URL_ATTRIBUTES:
            redact = redact_url
        elif key in _QUERY_ATTRIBUTES:
            redact = redact_target
        else:
            continue
        if pair.value.WhichOneof("value") == "string_value":
            pair.value.string_value = redact(pair.value.string_value, extra_words)


class _EnvironGetter(Getter[Any]):
    """Reads propagation headers from a WSGI environ (``traceparent`` -> ``HTTP_TRACEPARENT``)."""

    def get(self, carrier: Any, key: str) -> list[str] | None:
        value = carrier.get("HTTP_" + key.upper().replace("-", "_"))
        return [value] if isinstance(value, str) else None

    def keys(self, carrier: Any) -> list[str]:
        return [k[5:].lower().replace("_", "-") for k in carrier if k.startswith("HTTP_")]


environ_getter = _EnvironGetter()


def _is_default_textmap(textmap: Any) -> bool:
    """Whether ``textmap`` is OpenTelemetry's default: W3C trace context, then baggage."""
    if type(textmap) is not CompositePropagator:
        return False
    propagators = getattr(textmap, "_propagators", None)
    return (
        type(propagators) is list
        and len(propagators) == 2
        and type(propagators[0]) is TraceContextTextMapPropagator
        and type(propagators[1]) is W3CBaggagePropagator
    )


class Tracing:
    """What one ``init()`` set up for traces; :meth:`close` undoes it within a deadline."""

    def __init__(self, settings: Settings, stats: ExportStats) -> None:
        self.settings = settings
        existing = trace.get_tracer_provider()
        self.queue: BatchQueue[Any] | None = None
        # Set when Sightline owns the provider: the request span is then a LeanSpan.
        self.sampling: Sampling | None = None
        self._tracer: Any = None  # see the tracer property
        # Without the SDK imported, no provider of the app's can be the SDK's.
        sdk = sys.modules.get("opentelemetry.sdk.trace")
        if (
            sdk is not None
            and isinstance(existing, sdk.TracerProvider)
            and existing is not _sdk_provider
        ):
            logger.debug("sightline: using the app's tracer provider; it exports the spans")
            self._tracer = existing.get_tracer("sightline")
        else:
            _install_stand_in()
            sender = OtlpSender(settings, stats)
            self.queue = BatchQueue(
                "traces",
                sender,
                stats,
                max_items=settings.bsp_max_queue_size,
                max_bytes=settings.traces_buffer_bytes,
                size_of=wire_size,
                batch_items=settings.bsp_max_export_batch_size,
                interval=settings.bsp_schedule_delay,
                on_stop=sender.endpoint.close,
            )
            sender.queue = self.queue
            _current.sampler = (settings.traces_sampler, settings.traces_sampler_arg)
            _current.queue = self.queue
            self.sampling = Sampling(settings.traces_sampler, settings.traces_sampler_arg)
        self._context = context_var()
        # The environ keys of the propagator's headers: a request carrying none of them
        # skips extraction entirely.
        fields = propagate.get_global_textmap().fields
        self.header_keys = tuple("HTTP_" + f.upper().replace("-", "_") for f in fields)
        self.header_names = frozenset(f.lower().encode("latin-1") for f in fields)

    @property
    def tracer(self) -> Any:
        """A tracer of the provider in use: the app's SDK provider's, or the SDK provider
        behind Sightline's stand-in (made, and the SDK imported, on first use)."""
        if self._tracer is None:
            self._tracer = sdk_provider().get_tracer("sightline")
        return self._tracer

    def inject(self, carrier: dict[str, Any], span: Any) -> None:
        """Put ``span``'s context into a message's headers, as the global propagator does.

        With the default propagators (W3C trace context, then baggage) and no baggage,
        ``traceparent`` (and ``tracestate``, if any) is written directly from the span's
        formatted ids: what the propagators write, at a tenth of their cost per task.
        """
        if (
            type(span) is LeanSpan
            and _is_default_textmap(propagate.get_global_textmap())
            and not baggage.get_all()
        ):
            trace_hex, span_hex = span.hex_ids
            ctx = span.get_span_context()
            carrier["traceparent"] = f"00-{trace_hex}-{span_hex}-{ctx.trace_flags:02x}"
            if ctx.trace_state:
                carrier["tracestate"] = ctx.trace_state.to_header()
            return
        propagate.inject(carrier, context=trace.set_span_in_context(span))

    def extract_headers(self, headers: Any) -> Context | None:
        """The parent context from ASGI headers (``[(name, value), ...]`` as bytes)."""
        names = self.header_names
        if not any(name in names for name, _ in headers):
            return None
        carrier: dict[str, str] = {}
        for name, value in headers:
            key = name.decode("latin-1")
            text = value.decode("latin-1")
            # Repeated headers (several tracestate lines) are one comma-separated list.
            carrier[key] = f"{carrier[key]},{text}" if key in carrier else text
        return propagate.extract(carrier)

    def extract(self, carrier: Any) -> Context | None:
        """The parent context from a WSGI environ, or None when no propagation header came."""
        for key in self.header_keys:
            if key in carrier:
                return propagate.extract(carrier, getter=environ_getter)
        return None

    def start_server_span(self, name: str, parent: Context | None) -> tuple[Any, object]:
        """Start the SERVER span of a request and make it current; returns (span, token)."""
        span: Any
        variable = self._context
        if variable is not None and self.sampling is not None and self.queue is not None:
            # The same steps as below, without the API's layers (see _spans.context_var).
            current = variable.get()
            if parent is None:
                parent = current
            outer = parent.get(SPAN_KEY)
            outer_ctx = None
            if outer is not None and isinstance(outer, trace.Span):
                outer_ctx = outer.get_span_context()
            span = LeanSpan(
                name,
                outer_ctx if outer_ctx is not None and outer_ctx.is_valid else None,
                self.sampling,
                self.queue.put,
            )
            return span, variable.set(Context({**parent, SPAN_KEY: span}))
        if parent is None:
            parent = context.get_current()  # an outer span (another middleware) is the parent
        if self.sampling is not None and self.queue is not None:
            parent_span = trace.get_current_span(parent).get_span_context()
            span = LeanSpan(
                name,
                parent_span if parent_span.is_valid else None,
                self.sampling,
                self.queue.put,
            )
        else:
            span = self.tracer.start_span(name, context=parent, kind=SpanKind.SERVER)
        token = context.attach(trace.set_span_in_context(span, parent))
        return span, token

    def start_span(
        self,
        name: str,
        kind: SpanKind,
        parent: Context | None,
        attributes: dict[str, Any],
    ) -> Any:
        """A span of ``kind`` (a task's PRODUCER or CONSUMER), not made current: Sightline's
        lean span when it owns the provider, else one from the app's provider. With no
        ``parent`` the current context is the parent."""
        if self.sampling is None or self.queue is None:
            return self.tracer.start_span(name, context=parent, kind=kind, attributes=attributes)
        if parent is None:
            parent = context.get_current()
        outer = trace.get_current_span(parent).get_span_context()
        span = LeanSpan(
            name, outer if outer.is_valid else None, self.sampling, self.queue.put, kind
        )
        if span.is_recording():
            span.set_attributes(attributes)
        return span

    def client_span(
        self, name: str, attributes: dict[str, Any], error: str, seconds: float
    ) -> None:
        """A CLIENT span (a database call) that ended just now after ``seconds``, under the
        current span, made only when that span is recorded: a call outside any recorded
        trace is a metric alone. Attribute values that are callables are computed only
        for a span that is recorded."""
        parent = context.get_current()
        outer = trace.get_current_span(parent)
        if not outer.is_recording():
            return
        end = time.time_ns()
        start = end - int(seconds * 1e9)
        values = {k: v() if callable(v) else v for k, v in attributes.items()}
        if error:
            values["error.type"] = error
        if self.sampling is None or self.queue is None:
            span = self.tracer.start_span(
                name, context=parent, kind=SpanKind.CLIENT, attributes=values, start_time=start
            )
        else:
            span = LeanSpan(
                name, outer.get_span_context(), self.sampling, self.queue.put, SpanKind.CLIENT
            )
            if not span.is_recording():
                return
            span.start_ns = start
            span.set_attributes(values)
        if error:
            span.set_status(Status(StatusCode.ERROR))
        span.end(end_time=end)

    def end_server_span(
        self,
        span: Any,
        token: object,
        method: str,
        route: str | None,
        status: int,
        error: BaseException | None,
    ) -> None:
        """Name the span after the route, set its outcome, end it and restore the context."""
        try:
            if span.is_recording():
                if route is not None:
                    # Non-standard methods are named "HTTP", as the conventions say.
                    span.update_name(f"{method if method != OTHER_METHOD else 'HTTP'} {route}")
                    span.set_attribute(http_attributes.HTTP_ROUTE, route)
                span.set_attribute(http_attributes.HTTP_RESPONSE_STATUS_CODE, status)
                if error is not None:
                    span.record_exception(error)
                    span.set_attribute(error_attributes.ERROR_TYPE, type(error).__qualname__)
                    span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
                elif status >= 500:
                    # A framework may have named the exception already (Flask's signal).
                    if error_attributes.ERROR_TYPE not in (getattr(span, "attributes", None) or {}):
                        span.set_attribute(error_attributes.ERROR_TYPE, str(status))
                    span.set_status(Status(StatusCode.ERROR))
            span.end()
        finally:
            # With no token the caller detaches (ASGI: in the task that attached).
            if token is not None:
                try:
                    if self._context is not None:
                        self._context.reset(token)  # type: ignore[arg-type]
                    else:
                        context.detach(token)  # type: ignore[arg-type]
                except Exception as exc:
                    _safety.report("tracing.detach", exc)

    def close(self, deadline: float) -> None:
        if self.queue is not None:
            if _current.queue is self.queue:
                _current.queue = None
                _current.sampler = None
            self.queue.close(deadline)
