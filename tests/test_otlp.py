"""Sightline's hand-written OTLP encoding against the messages opentelemetry-proto builds."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    InstrumentationScope,
    KeyValue,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState
from sightline import _otlp
from sightline._spans import LeanSpan, Sampling
from sightline._version import __version__

ALWAYS = Sampling("always_on", 1.0)


def reference_value(value: Any) -> AnyValue:
    """What an attribute value becomes, built with the protobuf library."""
    if isinstance(value, str):
        return AnyValue(string_value=value)
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        if -(1 << 63) <= value < (1 << 63):
            return AnyValue(int_value=value)
        return AnyValue(string_value=str(value))
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, bytes):
        return AnyValue(bytes_value=value)
    if isinstance(value, (list, tuple)):
        return AnyValue(array_value=ArrayValue(values=[reference_value(v) for v in value]))
    return AnyValue(string_value=repr(value))


def reference_pairs(attributes: Mapping[str, Any]) -> list[KeyValue]:
    return [KeyValue(key=k, value=reference_value(v)) for k, v in attributes.items()]


def reference(resource: Mapping[str, Any], spans: Sequence[LeanSpan]) -> ExportTraceServiceRequest:
    encoded = []
    for span in spans:
        ctx = span.get_span_context()
        flags = int(ctx.trace_flags) | 0x100 | (0x200 if span.remote_parent else 0)
        encoded.append(
            trace_pb2.Span(
                trace_id=ctx.trace_id.to_bytes(16, "big"),
                span_id=ctx.span_id.to_bytes(8, "big"),
                parent_span_id=span.parent_span_id.to_bytes(8, "big")
                if span.parent_span_id
                else b"",
                trace_state=ctx.trace_state.to_header(),
                name=span.name,
                kind=span.kind.value + 1,  # OTLP numbers kinds one above the API
                start_time_unix_nano=span.start_ns,
                end_time_unix_nano=span.end_ns,
                attributes=reference_pairs(span.attributes),
                events=[
                    trace_pb2.Span.Event(
                        name=name, time_unix_nano=ts, attributes=reference_pairs(attrs)
                    )
                    for name, ts, attrs in span.events
                ],
                status=trace_pb2.Status(
                    code=span.status.status_code.value, message=span.status.description or ""
                ),
                flags=flags,
            )
        )
    return ExportTraceServiceRequest(
        resource_spans=[
            trace_pb2.ResourceSpans(
                resource=Resource(attributes=reference_pairs(resource)),
                scope_spans=[
                    trace_pb2.ScopeSpans(
                        scope=InstrumentationScope(name="sightline", version=__version__),
                        spans=encoded,
                    )
                ],
            )
        ]
    )


def decode(body: bytes) -> ExportTraceServiceRequest:
    message = ExportTraceServiceRequest()
    message.ParseFromString(body)
    return message


def ended(span: LeanSpan, **attributes: Any) -> LeanSpan:
    span.set_attributes(attributes)
    span.end()
    return span


class Opaque:
    def __repr__(self) -> str:
        return "<opaque>"


RESOURCE = {"service.name": "checkout", "process.pid": 4242, "host.name": "h\u00e9"}


def test_spans_decode_to_what_the_protobuf_library_builds() -> None:
    """Roots, children of remote parents, trace state, events, errors, every value type and
    every span kind decode to exactly the message opentelemetry-proto builds."""
    parent = SpanContext(
        0x0AF7651916CD43DD8448EB211C80319C,
        0xB7AD6B7169203331,
        True,
        TraceFlags(TraceFlags.SAMPLED),
        TraceState([("vendor", "v1"), ("other", "x")]),
    )
    root = ended(
        LeanSpan("GET /users/<int:uid>", None, ALWAYS, None),
        **{"http.request.method": "GET", "url.path": "/users/42", "server.port": 8080},
    )
    child = LeanSpan("POST", parent, ALWAYS, None)
    child.set_attributes(
        {
            "flag": True,
            "off": False,
            "zero": 0,
            "negative": -5,
            "huge": 1 << 70,
            "ratio": 0.25,
            "raw": b"\x00\xff",
            "list": ["a", 1, True],
            "tuple": (1.5, "b"),
            "object": Opaque(),
            "unicode": "\u65e5\u672c",
            "empty": "",
        }
    )
    child.add_event("retry", {"attempt": 2}, timestamp=123)
    child.record_exception(ValueError("bad uid"))
    child.set_status(Status(StatusCode.ERROR, "ValueError: bad uid"))
    child.update_name("POST /orders")
    child.end()
    unnamed = ended(LeanSpan("", None, ALWAYS, None))
    consumer = ended(LeanSpan("process tasks.add", parent, ALWAYS, None, SpanKind.CONSUMER))
    producer = ended(LeanSpan("publish tasks.add", None, ALWAYS, None, SpanKind.PRODUCER))
    spans = [root, child, unnamed, consumer, producer]
    assert decode(_otlp.resource_spans(RESOURCE, spans)) == reference(RESOURCE, spans)


def test_random_spans_match_the_protobuf_library() -> None:
    """Many spans with random ids, times, values and statuses all encode like the library's."""
    rng = random.Random(7)
    values: list[Any] = ["", "x" * 300, 0, 1, -1, 1 << 63, -(1 << 63), 2.5, True, b"", [1, 2]]
    spans = []
    for i in range(200):
        span = LeanSpan(f"GET /r/{i % 7}", None, ALWAYS, None)
        span.set_attributes({f"k{j}": rng.choice(values) for j in range(rng.randrange(12))})
        if rng.random() < 0.3:
            span.set_status(StatusCode.ERROR)
        span.end(end_time=rng.randrange(1 << 64))
        spans.append(span)
    assert decode(_otlp.resource_spans(RESOURCE, spans)) == reference(RESOURCE, spans)


def test_equal_values_of_different_types_are_not_confused() -> None:
    """The attribute cache keeps True, 1 and "1" apart (True == 1 in Python)."""
    spans = [ended(LeanSpan("a", None, ALWAYS, None), v=value) for value in (1, True, "1", 1)]
    decoded = decode(_otlp.resource_spans({}, spans))
    kinds = [
        s.attributes[0].value.WhichOneof("value")
        for s in decoded.resource_spans[0].scope_spans[0].spans
    ]
    assert kinds == ["int_value", "bool_value", "string_value", "int_value"]


def test_the_attribute_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Values that never repeat (query strings, paths) cannot grow the cache past its size."""
    monkeypatch.setattr(_otlp, "CACHE_SIZE", 50)
    monkeypatch.setattr(_otlp, "_cache", {})
    for i in range(500):
        _otlp.resource_spans({}, [ended(LeanSpan("a", None, ALWAYS, None), q=f"id={i}")])
        assert len(_otlp._cache) <= 50


def test_text_that_is_not_utf8_is_replaced_not_fatal() -> None:
    """A lone surrogate in an attribute (from a hostile header) is replaced; the batch survives."""
    span = ended(LeanSpan("GET", None, ALWAYS, None), agent="bad \udcff end")
    decoded = decode(_otlp.resource_spans({}, [span]))
    value = decoded.resource_spans[0].scope_spans[0].spans[0].attributes[0].value.string_value
    assert value == "bad ? end"


def test_concatenated_requests_hold_both_resource_spans() -> None:
    """An SDK-encoded request followed by Sightline's bytes decodes as one request with both."""
    sdk = ExportTraceServiceRequest(
        resource_spans=[
            trace_pb2.ResourceSpans(resource=Resource(attributes=reference_pairs({"a": 1})))
        ]
    ).SerializeToString()
    span = ended(LeanSpan("GET", None, ALWAYS, None))
    decoded = decode(sdk + _otlp.resource_spans(RESOURCE, [span]))
    assert len(decoded.resource_spans) == 2
    assert decoded.resource_spans[1].scope_spans[0].spans[0].name == "GET"
