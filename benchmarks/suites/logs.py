"""One log call with trace ids rendered to JSON: the ``log`` suite."""

from __future__ import annotations

import gc
import io
import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from suites.common import Suite, jsonlogger_handler


def log_sightline() -> logging.StreamHandler[Any]:
    from sightline.logs import JsonFormatter, TraceIdFactory

    logging.setLogRecordFactory(TraceIdFactory(logging.getLogRecordFactory()))
    handler = logging.StreamHandler(open(os.devnull, "w"))  # noqa: SIM115
    handler.setFormatter(JsonFormatter(service="bench"))
    return handler


VARIANTS: dict[str, Callable[[], logging.StreamHandler[Any]]] = {
    "log_sightline": log_sightline,
    "log_jsonlogger": jsonlogger_handler,
}


def worker(name: str, calls: int, warmup: int) -> dict[str, Any]:
    """µs per ``logger.info("msg %s", 1, extra={"k": 1})`` inside a recording span."""
    from opentelemetry.sdk.trace import TracerProvider

    handler = VARIANTS[name]()
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


SUITES: dict[str, Suite] = {
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
}
