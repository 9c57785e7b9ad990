"""Sightline's own spans (a request's SERVER span, a task's PRODUCER and CONSUMER
spans), built for the hot path.

Every request and task gets a span, so its cost is paid each time: the SDK's span validates
each attribute under a lock, consults a sampler chain, copies itself into a readable
span when it ends and keeps ~3 KB alive per queued span. :class:`LeanSpan` is a
plain OpenTelemetry API span: ids from ``random.getrandbits``, the sampling decision
inline (the same six samplers, with the SDK's trace-id-ratio rule), attributes in a
dict, and the ended span goes straight onto the export queue, to be written as OTLP
protobuf by the export thread (``_otlp.py``). Spans the app or the client
instrumentations create inside it are SDK spans parented on it as usual (only its
context is needed).
"""

from __future__ import annotations

import random
import time
import traceback
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from typing import Any

from opentelemetry import context, trace
from opentelemetry.context import Context
from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState
from opentelemetry.util import types

_UNSET = Status(StatusCode.UNSET)
_NO_TRACE_STATE = TraceState()
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT)
_flags = {True: _SAMPLED, False: _NOT_SAMPLED}
_TRACE_ID_LIMIT = (1 << 64) - 1
MAX_ATTRIBUTES = 128
MAX_EVENTS = 128
_getrandbits = random.getrandbits
_time_ns = time.time_ns
_new_tuple = tuple.__new__
# The key the API keeps the current span under (opentelemetry.trace.propagation).
SPAN_KEY: str = trace.propagation._SPAN_KEY


def context_var() -> ContextVar[Context] | None:
    """The ContextVar holding OpenTelemetry's current context, or None if the app
    configured another runtime context (``OTEL_PYTHON_CONTEXT``).

    Reading and setting it directly skips four layers of API calls per request; the
    public API reads and writes the very same variable, so both views always agree.
    """
    runtime = getattr(context, "_RUNTIME_CONTEXT", None)
    if type(runtime) is ContextVarsRuntimeContext:
        variable = getattr(runtime, "_current_context", None)
        if isinstance(variable, ContextVar):
            return variable
    return None


def current_span_reader() -> Callable[[], Any]:
    """A function returning what the current context holds as its span (None if nothing).

    Anything but a :class:`LeanSpan` is best checked through the API, which also
    copes with a context holding something that is not a span.
    """
    variable = context_var()
    if variable is None:
        return trace.get_current_span
    get = variable.get
    return lambda: get().get(SPAN_KEY)


class Sampling:
    """OTEL_TRACES_SAMPLER's six samplers as one inline decision.

    ``parentbased_*`` follows a valid parent's sampled flag (remote or local, as the
    SDK's defaults do) and otherwise applies the root rule; ``traceidratio`` samples
    when the trace id's low 64 bits fall under ``ratio * 2**64``, as the SDK does, so
    services sampling the same ratio agree on the same traces.
    """

    def __init__(self, sampler: str, ratio: float) -> None:
        self.parent_based = sampler.startswith("parentbased_")
        root = sampler.removeprefix("parentbased_")
        self.bound = {
            "always_on": _TRACE_ID_LIMIT + 1,
            "always_off": 0,
            "traceidratio": round(ratio * (_TRACE_ID_LIMIT + 1)),
        }[root]

    def sampled(self, parent: SpanContext | None, trace_id: int) -> bool:
        if self.parent_based and parent is not None:
            return parent.trace_flags.sampled
        return (trace_id & _TRACE_ID_LIMIT) < self.bound


class LeanSpan(trace.Span):
    """A span of ``kind`` (SERVER by default); see the module docstring. Unsampled, every
    setter is a no-op."""

    def __init__(
        self,
        name: str,
        parent: SpanContext | None,
        sampling: Sampling,
        on_end: Callable[[LeanSpan], None] | None,
        kind: SpanKind = SpanKind.SERVER,
    ) -> None:
        if parent is not None:
            trace_id = parent.trace_id
            trace_state = parent.trace_state
            self.parent_span_id = parent.span_id
            self.remote_parent = parent.is_remote
        else:
            trace_id = _getrandbits(128) or 1
            trace_state = _NO_TRACE_STATE
            self.parent_span_id = 0
            self.remote_parent = False
        sampled = sampling.sampled(parent, trace_id)
        # SpanContext's own __new__ only adds the is_valid test, true by construction.
        self._context = _new_tuple(
            SpanContext,
            (trace_id, _getrandbits(64) or 1, False, _flags[sampled], trace_state, True),
        )
        self._recording = sampled
        self._hex: tuple[str, str] | None = None
        self.end_ns = 0
        if sampled:  # an unsampled span is only a context: skip everything else
            self._on_end = on_end
            self.kind = kind
            self.name = name
            self.start_ns = _time_ns()
            self.status = _UNSET
            self.attributes: dict[str, Any] = {}
            self.events: list[tuple[str, int, Mapping[str, Any]]] = []

    @property
    def hex_ids(self) -> tuple[str, str]:
        """(trace_id, span_id) as 32 and 16 hex digits, formatted once per span."""
        if self._hex is None:
            ctx = self._context
            self._hex = (
                ctx.trace_id.to_bytes(16, "big").hex(),
                ctx.span_id.to_bytes(8, "big").hex(),
            )
        return self._hex

    def get_span_context(self) -> SpanContext:
        return self._context

    def is_recording(self) -> bool:
        return self._recording

    def set_attributes(self, attributes: Mapping[str, types.AnyValue]) -> None:
        if self._recording:
            if not self.attributes and len(attributes) <= MAX_ATTRIBUTES:
                self.attributes = dict(attributes)
                return
            for key, value in attributes.items():
                self.set_attribute(key, value)

    def set_attribute(self, key: str, value: types.AnyValue) -> None:
        if self._recording and (key in self.attributes or len(self.attributes) < MAX_ATTRIBUTES):
            self.attributes[key] = value

    def add_event(
        self, name: str, attributes: types.Attributes = None, timestamp: int | None = None
    ) -> None:
        if self._recording and len(self.events) < MAX_EVENTS:
            self.events.append((name, timestamp or _time_ns(), dict(attributes or {})))

    def update_name(self, name: str) -> None:
        if self._recording:
            self.name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        if not self._recording or self.status.status_code is StatusCode.OK:
            return  # OK is final, as the specification says
        if isinstance(status, Status):
            self.status = status
        else:
            self.status = Status(status, description)

    def record_exception(
        self,
        exception: BaseException,
        attributes: types.Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        if not self._recording:
            return
        event: dict[str, Any] = {
            "exception.type": type(exception).__qualname__,
            "exception.message": str(exception),
            "exception.stacktrace": "".join(
                traceback.format_exception(type(exception), exception, exception.__traceback__)
            ),
        }
        event.update(attributes or {})
        self.add_event("exception", event, timestamp)

    def end(self, end_time: int | None = None) -> None:
        if self._recording:
            self._recording = False  # ended spans take no more changes
            self.end_ns = end_time or _time_ns()
            if self._on_end is not None:
                self._on_end(self)


def wire_size(span: Any) -> int:
    """Roughly the bytes ``span`` (Sightline's or the SDK's) takes until it is sent: a
    fixed part, its name, and its attribute and event values, which only the app and the
    request bound. What the export queue's byte bound counts."""
    size = 256 + len(span.name)
    attributes = span.attributes
    if attributes:
        size += 48 * len(attributes)
        for value in attributes.values():
            size += len(value) if type(value) is str else _value_size(value)
    for event in span.events:
        size += 64
        # Sightline's events are (name, time, attributes); the SDK's are Event objects.
        for value in (event[2] if type(event) is tuple else event.attributes or {}).values():
            size += len(value) if type(value) is str else _value_size(value)
    return size


def _value_size(value: Any) -> int:
    if isinstance(value, (list, tuple)):
        return sum(len(item) if type(item) is str else 8 for item in value)
    return len(value) if isinstance(value, (str, bytes)) else 8
