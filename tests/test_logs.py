"""Logs: one JSON renderer, trace ids on records, a polite stdout handler, Loki shipping."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import textwrap
from typing import Any

import pytest
import sightline
from prometheus_client import CollectorRegistry
from sightline.logs import JsonFormatter

from .helpers import call_wsgi
from .receivers import Backend


def render(**extra: Any) -> dict[str, Any]:
    record = logging.getLogger("shop.orders").makeRecord(
        "shop.orders",
        logging.WARNING,
        __file__,
        1,
        "order %s failed",
        ("A-1",),
        None,
        extra=extra,
    )
    return json.loads(JsonFormatter(service="shop", environment="prod").format(record))


def test_json_document_fields() -> None:
    """A record renders as one JSON object with ts (RFC 3339 UTC), level, logger and message."""
    doc = render(order_id=42)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", doc["ts"])
    assert {k: doc[k] for k in ("level", "logger", "message", "service", "env", "order_id")} == {
        "level": "WARNING",
        "logger": "shop.orders",
        "message": "order A-1 failed",
        "service": "shop",
        "env": "prod",
        "order_id": 42,
    }
    assert "trace_id" not in doc


def test_unserialisable_extras_never_fail() -> None:
    """Objects, sets, NaN, non-string keys and cycles in extras are rendered, never raised."""
    cycle: list[Any] = []
    cycle.append(cycle)

    class Thing:
        def __repr__(self) -> str:
            return "<Thing>"

    doc = render(thing=Thing(), tags={"a"}, ratio=float("nan"), by_pair={(1, 2): "x"}, loop=cycle)
    assert doc["thing"] == "<Thing>"
    assert doc["tags"] == "{'a'}"
    assert doc["ratio"] == "nan"
    assert doc["by_pair"] == "{(1, 2): 'x'}"
    assert doc["loop"] == "[[...]]"


def test_exception_is_structured() -> None:
    """exc_info renders as type, message and the stack."""
    logger = logging.getLogger("shop")
    try:
        raise ValueError("bad input")
    except ValueError:
        record = logger.makeRecord("shop", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    doc = json.loads(JsonFormatter(service="shop").format(record))
    assert doc["exception"]["type"] == "ValueError"
    assert doc["exception"]["message"] == "bad input"
    assert "raise ValueError" in doc["exception"]["stack"]


@pytest.mark.parametrize("context_access", ["direct", "api"])
def test_records_carry_the_request_span_ids(
    backend: Backend,
    registry: CollectorRegistry,
    monkeypatch: pytest.MonkeyPatch,
    context_access: str,
) -> None:
    """A log call inside a request has the request span's ids, one inside an app's own span
    that span's ids; outside a span it has none. The same holds when the context is not the
    default ContextVar runtime (then Sightline goes through the OpenTelemetry API)."""
    flask = pytest.importorskip("flask")
    from opentelemetry import trace
    from sightline import _spans, tracing

    if context_access == "api":
        monkeypatch.setattr(_spans, "context_var", lambda: None)
        monkeypatch.setattr(tracing, "context_var", lambda: None)
    sightline.init(service="shop", registry=registry, metrics_addr="off", otlp_endpoint=backend.url)
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("shop.view")
    keep = Keep()
    logger.addHandler(keep)
    try:
        app = flask.Flask("shop")

        @app.route("/users/<int:uid>")
        def user(uid: int) -> str:
            logger.warning("inside")
            with trace.get_tracer("shop").start_as_current_span("load user"):
                logger.warning("in the app's span")
            return "ok"

        call_wsgi(app, "/users/1")
        logger.warning("outside")
    finally:
        logger.removeHandler(keep)
    sightline.shutdown()
    spans = {s.name: s for _, s in backend.spans()}
    span, child = spans["GET /users/<int:uid>"], spans["load user"]
    inside, in_child, outside = records
    assert inside.otelTraceID == span.trace_id.hex()  # type: ignore[attr-defined]
    assert inside.otelSpanID == span.span_id.hex()  # type: ignore[attr-defined]
    assert child.parent_span_id == span.span_id
    assert in_child.otelTraceID == span.trace_id.hex()  # type: ignore[attr-defined]
    assert in_child.otelSpanID == child.span_id.hex()  # type: ignore[attr-defined]
    assert json.loads(JsonFormatter().format(inside))["trace_id"] == span.trace_id.hex()
    assert outside.otelTraceID == ""  # type: ignore[attr-defined]
    assert "trace_id" not in json.loads(JsonFormatter().format(outside))


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SIGHTLINE_METRICS_ADDR": "off", "SIGHTLINE_TRACES": "false", **env},
    )


def test_stdout_handler_added_only_without_handlers() -> None:
    """With no root handler, init() adds a JSON stdout handler and leaves the root level as
    it was (INFO records stay hidden); shutdown removes the handler."""
    result = run_python("""
        import logging, sightline
        sightline.init(service="shop")
        print("level:", logging.getLevelName(logging.getLogger().level))
        logging.getLogger("shop").info("hidden, as without Sightline")
        logging.getLogger("shop").warning("hello %s", "there", extra={"k": 1})
        sightline.shutdown()
        root = logging.getLogger()
        print("after:", len(root.handlers), logging.getLevelName(root.level))
    """)
    assert result.returncode == 0, result.stderr
    level, first, after = result.stdout.splitlines()
    assert level == "level: WARNING"
    doc = json.loads(first)
    assert (doc["message"], doc["service"], doc["k"], doc["level"]) == (
        "hello there",
        "shop",
        1,
        "WARNING",
    )
    assert after == "after: 0 WARNING"


def test_log_level_is_set_only_when_asked() -> None:
    """SIGHTLINE_LOG_LEVEL=INFO sets the root level with the stdout handler, and shutdown
    puts the previous level back."""
    result = run_python(
        """
        import logging, sightline
        sightline.init(service="shop")
        logging.getLogger("shop").info("shown")
        sightline.shutdown()
        print("after:", logging.getLevelName(logging.getLogger().level))
        """,
        SIGHTLINE_LOG_LEVEL="INFO",
    )
    assert result.returncode == 0, result.stderr
    first, after = result.stdout.splitlines()
    assert json.loads(first)["message"] == "shown"
    assert after == "after: WARNING"


def test_existing_handlers_are_left_alone() -> None:
    """If the app configured logging first, init() adds no handler and changes no level."""
    result = run_python("""
        import logging, sys, sightline
        logging.basicConfig(stream=sys.stdout, level=logging.WARNING, format="APP %(message)s")
        sightline.init(service="shop")
        logging.getLogger("x").warning("one")
        logging.getLogger("x").info("hidden")
        print("handlers:", len(logging.getLogger().handlers))
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["APP one", "handlers: 1"]


def test_basic_config_after_init_works_without_duplicates() -> None:
    """logging.basicConfig() after init() takes effect, and no line is printed twice."""
    result = run_python("""
        import logging, sys, sightline
        sightline.init(service="shop")
        log = logging.getLogger("app")
        log.warning("before")
        logging.basicConfig(stream=sys.stdout, level=logging.DEBUG,
                            format="PLAIN %(levelname)s %(message)s")
        log.debug("after")
        sightline.shutdown()
        log.debug("after shutdown")
    """)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert json.loads(lines[0])["message"] == "before"
    assert lines[1:] == ["PLAIN DEBUG after", "PLAIN DEBUG after shutdown"]


def test_text_format() -> None:
    """SIGHTLINE_LOG_FORMAT=text prints readable lines that still carry trace ids."""
    result = run_python(
        """
        import logging, sightline
        sightline.init(service="shop")
        logging.getLogger("app").warning("plain")
    """,
        SIGHTLINE_LOG_FORMAT="text",
    )
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"\S+ \S+ WARNING app \[trace_id= span_id=\] plain", result.stdout.strip())


def test_shutdown_restores_logging(registry: CollectorRegistry) -> None:
    """shutdown() restores the record factory, basicConfig and the handlers it added."""
    factory = logging.getLogRecordFactory()
    basic_config = logging.basicConfig
    handlers = list(logging.getLogger().handlers)
    sightline.init(
        service="s",
        registry=registry,
        metrics_addr="off",
        traces=False,
        loki_url="http://127.0.0.1:9",
    )
    assert logging.getLogRecordFactory() is not factory
    sightline.shutdown()
    assert logging.getLogRecordFactory() is factory
    assert logging.basicConfig is basic_config
    assert logging.getLogger().handlers == handlers


def test_loki_push_format(backend: Backend, registry: CollectorRegistry) -> None:
    """Loki gets the JSON line, exactly the allowed labels, and trace ids as metadata."""
    sightline.init(
        service="shop",
        environment="prod",
        registry=registry,
        metrics_addr="off",
        traces=False,
        loki_url=backend.url,
        loki_tenant="team-a",
        loki_username="u",
        loki_password="p",
    )
    logger = logging.getLogger("shop.loki")
    logger.warning("first %d", 1, extra={"order": "A-1"})
    logger.error("second")
    sightline.shutdown()
    entries = backend.log_entries()
    lines = {
        json.loads(line)["message"]: (labels, ts, metadata)
        for labels, ts, line, metadata in entries
    }
    assert set(lines) >= {"first 1", "second"}
    labels, ts, metadata = lines["first 1"]
    assert labels == {"service_name": "shop", "deployment_environment": "prod", "level": "warning"}
    assert lines["second"][0]["level"] == "error"
    assert ts.isdigit()
    assert len(ts) == 19
    assert metadata == {}
    [first] = [json.loads(line) for _, _, line, _ in entries if "first" in line]
    assert first["order"] == "A-1"
    headers = backend.headers[0]
    assert headers["x-scope-orgid"] == "team-a"
    assert headers["authorization"] == "Basic dTpw"
    assert headers["content-encoding"] == "gzip"
    assert registry.get_sample_value("sightline_exported_total", {"signal": "logs"}) is None, (
        "the registry was unregistered at shutdown"
    )


def test_loki_streams_with_equal_values_stay_apart(
    backend: Backend, registry: CollectorRegistry
) -> None:
    """Streams whose label values coincide but whose keys differ are not merged."""
    sightline.init(
        service="s",
        registry=registry,
        metrics_addr="off",
        traces=False,
        loki_url=backend.url,
        loki_labels="logger,level",
    )
    logging.getLogger("error").warning("a")  # values {error, warning}
    logging.getLogger("warning").error("b")  # the same values under the other keys
    sightline.shutdown()
    streams = {json.loads(e[2])["message"]: e[0] for e in backend.log_entries()}
    assert streams == {
        "a": {"logger": "error", "level": "warning"},
        "b": {"logger": "warning", "level": "error"},
    }


def test_access_log_line(backend: Backend, registry: CollectorRegistry) -> None:
    """SIGHTLINE_ACCESS_LOG adds one line per request with route, status, duration, trace ids."""
    sightline.init(
        service="shop",
        registry=registry,
        metrics_addr="off",
        traces=True,
        otlp_endpoint=backend.url,
        loki_url=backend.url,
        access_log=True,
    )

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("201 Created", [])
        return [b""]

    call_wsgi(sightline.instrument_app(app, route_of=lambda e: "/orders"), "/orders", method="POST")
    sightline.shutdown()
    [doc] = [
        json.loads(line)
        for labels, _, line, _ in backend.log_entries()
        if json.loads(line)["logger"] == "sightline.access"
    ]
    [(_, span)] = backend.spans()
    assert doc["http_route"] == "/orders"
    assert doc["http_response_status_code"] == 201
    assert doc["http_request_method"] == "POST"
    assert doc["duration_ms"] >= 0
    assert doc["trace_id"] == span.trace_id.hex()


def test_a_lone_surrogate_costs_neither_its_batch_nor_its_line(
    backend: Backend, registry: CollectorRegistry
) -> None:
    """One record holding a file name decoded with surrogateescape among 1,000: all 1,000
    reach Loki, none is dropped, and the bad byte arrives escaped as readable text."""
    sightline.init(
        service="shop",
        registry=registry,
        metrics_addr="off",
        traces=False,
        loki_url=backend.url,
    )
    log = logging.getLogger("shop.files")
    name = b"caf\xe9.txt".decode("utf-8", "surrogateescape")
    for i in range(1000):
        if i == 500:
            log.warning("cannot open %s", name, extra={"path": name})
        else:
            log.warning("line %d", i)
    sightline.shutdown()
    entries = backend.log_entries()
    assert len(entries) == 1000
    [bad] = [json.loads(line) for _, _, line, _ in entries if "cannot open" in line]
    assert bad["message"] == "cannot open caf\\xe9.txt"
    assert bad["path"] == "caf\\xe9.txt"
    assert registry.get_sample_value("sightline_dropped_total", {"signal": "logs"}) is None


def test_a_lone_surrogate_is_printed_on_stdout() -> None:
    """Sightline's stdout handler writes such a record (JSON and text alike) instead of
    losing it to an encoding error."""
    for fmt in ("json", "text"):
        result = run_python(
            """
            import logging, sightline
            sightline.init(service="shop")
            name = b"caf\\xe9".decode("utf-8", "surrogateescape")
            logging.getLogger("files").warning("cannot open %s", name)
            """,
            SIGHTLINE_LOG_FORMAT=fmt,
            PYTHONIOENCODING="utf-8",
        )
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
        assert "cannot open caf\\xe9" in result.stdout.replace("\\\\", "\\")


def test_rendering_survives_values_and_messages_that_raise() -> None:
    """An extra whose repr raises, and a message whose arguments do not fit its format,
    still render as one valid JSON line."""

    class Hostile:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

        def __str__(self) -> str:
            raise RuntimeError("no str")

    doc = render(thing=Hostile())
    assert doc["thing"] == "<unrepresentable Hostile>"
    record = logging.getLogger("x").makeRecord(
        "x", logging.WARNING, __file__, 1, "%d items", ("many",), None
    )
    message = json.loads(JsonFormatter().format(record))["message"]
    assert message == "%d items ('many',)"


def test_colliding_extra_keys_are_kept_under_a_prefix(registry: CollectorRegistry) -> None:
    """Extra keys named like the document's own keys, or like the trace-id attributes,
    neither vanish nor raise: they are kept as extra_<key>, and the JSON stays valid."""
    sightline.init(service="shop", registry=registry, metrics_addr="off", traces=False)
    captured: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            captured.append(JsonFormatter(service="shop").format(record))

    log = logging.getLogger("shop.collide")
    handler = Capture()
    log.addHandler(handler)
    try:
        log.warning(
            "collide",
            extra={
                "service": "theirs",
                "ts": 1,
                "level": "custom",
                "trace_id": "t-1",
                "otelTraceID": 'a"b',
                "otelSpanID": "s",
            },
        )
    finally:
        log.removeHandler(handler)
    [line] = captured
    doc = json.loads(line)
    assert (doc["service"], doc["level"]) == ("shop", "WARNING")
    assert {k: doc[k] for k in doc if k.startswith("extra_")} == {
        "extra_service": "theirs",
        "extra_ts": 1,
        "extra_level": "custom",
        "extra_trace_id": "t-1",
        "extra_otelTraceID": 'a"b',
        "extra_otelSpanID": "s",
    }


def test_a_hostile_trace_id_attribute_still_renders_valid_json() -> None:
    """A record whose trace-id attribute holds a quote (set by another library's factory)
    renders as valid JSON carrying that value."""
    record = logging.getLogger("x").makeRecord("x", logging.WARNING, __file__, 1, "m", (), None)
    record.otelTraceID = 'a"b'
    record.otelSpanID = "c\\d"
    doc = json.loads(JsonFormatter().format(record))
    assert (doc["trace_id"], doc["span_id"]) == ('a"b', "c\\d")
