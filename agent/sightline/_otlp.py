"""OTLP protobuf for Sightline's own spans, written straight to bytes.

Building ``opentelemetry-proto`` message objects costs ~20 µs per request span, paid
by the export thread while it holds the GIL, that is, by the app. The wire format is
simple and fixed, and most of a request span repeats from one request to the next
(method, scheme, host, route, status, user agent, name), so spans are written here
field by field, and each attribute's encoded bytes are kept in a small bounded cache.
The result decodes to exactly the message ``opentelemetry-proto`` would build (a test
compares the two). Spans made by the SDK (client instrumentations) still go through
the SDK's encoder; protobuf lets the two byte strings simply be concatenated.

Field numbers are those of ``opentelemetry/proto/trace/v1/trace.proto`` and
``common/v1/common.proto`` (OTLP 1.x).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry.trace import SpanKind, StatusCode

from ._version import __version__

if TYPE_CHECKING:
    from ._spans import LeanSpan

_INT64 = (1 << 64) - 1
_pack_fixed64 = struct.Struct("<Q").pack
_pack_fixed32 = struct.Struct("<I").pack
_pack_double = struct.Struct("<d").pack
_STATUS_CODE = {StatusCode.UNSET: 0, StatusCode.OK: 1, StatusCode.ERROR: 2}
# Span.kind (field 6, varint): OTLP numbers the kinds one above the API's enum.
_KIND = {kind: b"\x30" + bytes((kind.value + 1,)) for kind in SpanKind}
# OTLP span flags: the low byte is the W3C trace flags; bit 8 says whether the parent's
# remoteness is known, bit 9 that it is remote.
_HAS_IS_REMOTE = 0x100
_IS_REMOTE = 0x200
#: Encoded attributes kept for reuse; past this the cache starts afresh (values that
#: never repeat, such as a query string, must not grow it without bound).
CACHE_SIZE = 4096
_cache: dict[tuple[bytes, str, type, Any], bytes] = {}


def varint(value: int) -> bytes:
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: its tag byte(s), the length, the payload."""
    return tag + varint(len(payload)) + payload


def _text(value: str) -> bytes:
    return value.encode("utf-8", "replace")  # a lone surrogate must not fail the batch


def any_value(value: Any) -> bytes:
    """An ``AnyValue`` message's payload."""
    if isinstance(value, str):
        return _field(b"\x0a", _text(value))  # string_value = 1
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"  # bool_value = 2
    if isinstance(value, int):
        if -(1 << 63) <= value < (1 << 63):
            return b"\x18" + varint(value & _INT64)  # int_value = 3
        return _field(b"\x0a", str(value).encode())
    if isinstance(value, float):
        return b"\x21" + _pack_double(value)  # double_value = 4
    if isinstance(value, bytes):
        return _field(b"\x3a", value)  # bytes_value = 7
    if isinstance(value, (list, tuple)):
        array = b"".join(_field(b"\x0a", any_value(item)) for item in value)
        return _field(b"\x2a", array)  # array_value = 5 (ArrayValue.values = 1)
    return _field(b"\x0a", _text(repr(value)))


def key_value(tag: bytes, key: str, value: Any) -> bytes:
    """A ``KeyValue`` (key = 1, value = 2) as the field ``tag`` of its parent, cached."""
    kind = type(value)
    if kind is not str and kind is not int and kind is not bool:  # floats: NaN != NaN
        return _field(tag, _field(b"\x0a", _text(key)) + _field(b"\x12", any_value(value)))
    cache_key = (tag, key, kind, value)  # the type too: True == 1
    encoded = _cache.get(cache_key)
    if encoded is None:
        encoded = _field(tag, _field(b"\x0a", _text(key)) + _field(b"\x12", any_value(value)))
        if len(_cache) >= CACHE_SIZE:
            _cache.clear()
        _cache[cache_key] = encoded
    return encoded


def _key_values(tag: bytes, attributes: Mapping[str, Any]) -> bytes:
    return b"".join([key_value(tag, str(k), v) for k, v in attributes.items()])


def span(span: LeanSpan) -> bytes:
    """One ``Span`` message's payload."""
    ctx = span.get_span_context()
    parts = [
        b"\x0a\x10",  # trace_id = 1
        ctx.trace_id.to_bytes(16, "big"),
        b"\x12\x08",  # span_id = 2
        ctx.span_id.to_bytes(8, "big"),
    ]
    trace_state = ctx.trace_state.to_header()
    if trace_state:
        parts.append(_field(b"\x1a", _text(trace_state)))  # trace_state = 3
    if span.parent_span_id:
        parts += (b"\x22\x08", span.parent_span_id.to_bytes(8, "big"))  # parent_span_id = 4
    parts += (
        _field(b"\x2a", _text(span.name)),  # name = 5
        _KIND[span.kind],
        b"\x39",  # start_time_unix_nano = 7 (fixed64)
        _pack_fixed64(span.start_ns),
        b"\x41",  # end_time_unix_nano = 8 (fixed64)
        _pack_fixed64(span.end_ns),
        _key_values(b"\x4a", span.attributes),  # attributes = 9
    )
    for name, timestamp, attributes in span.events:  # events = 11
        event = b"\x09" + _pack_fixed64(timestamp) + _field(b"\x12", _text(name))
        parts.append(_field(b"\x5a", event + _key_values(b"\x1a", attributes)))
    status = b""  # status = 15: message = 2, code = 3
    if span.status.description:
        status = _field(b"\x12", _text(span.status.description))
    code = _STATUS_CODE[span.status.status_code]
    if code:
        status += b"\x18" + varint(code)
    parts.append(_field(b"\x7a", status))
    flags = int(ctx.trace_flags) | _HAS_IS_REMOTE | (_IS_REMOTE if span.remote_parent else 0)
    parts += (b"\x85\x01", _pack_fixed32(flags))  # flags = 16 (fixed32)
    return b"".join(parts)


_SCOPE = _field(  # ScopeSpans.scope = 1: InstrumentationScope(name = 1, version = 2)
    b"\x0a", _field(b"\x0a", b"sightline") + _field(b"\x12", __version__.encode())
)


def resource_spans(
    resource: Mapping[str, Any],
    spans: Sequence[LeanSpan],
    skipped: Callable[[BaseException], None] | None = None,
) -> bytes:
    """An ``ExportTraceServiceRequest`` holding one ``ResourceSpans`` with these spans.

    Concatenated with another serialised request, it adds its ``ResourceSpans`` to it.
    With ``skipped``, a span that cannot be encoded (an attribute whose ``repr`` raises)
    is left out and passed to it, instead of failing the batch.
    """
    if skipped is None:
        encoded = [_field(b"\x12", span(s)) for s in spans]
    else:
        encoded = []
        for one in spans:
            try:
                encoded.append(_field(b"\x12", span(one)))
            except Exception as exc:
                skipped(exc)
    scope_spans = _SCOPE + b"".join(encoded)
    message = _field(b"\x0a", _key_values(b"\x0a", resource))  # resource = 1
    message += _field(b"\x12", scope_spans)  # scope_spans = 2
    return _field(b"\x0a", message)  # ExportTraceServiceRequest.resource_spans = 1
