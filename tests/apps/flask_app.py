"""A small Flask shop, instrumented with one line, served by gunicorn in the tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import sightline

sightline.init(service="shop")

from flask import Flask, abort  # noqa: E402 (created after init on purpose)
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402

app = Flask(__name__)
tracer = TracerProvider().get_tracer("shop-tests")


@app.route("/health")
def health() -> str:
    return "ok"


@app.route("/users/<int:uid>")
def user(uid: int) -> dict[str, int]:
    return {"uid": uid}


@app.route("/orders", methods=["POST"])
def create_order() -> tuple[str, int]:
    return "created", 201


@app.route("/boom")
def boom() -> str:
    raise RuntimeError("the view failed")


@app.route("/teapot/<kind>")
def teapot(kind: str) -> str:
    abort(418)


def application(environ: dict[str, Any], start_response: Any) -> Any:
    """The app; with ``X-Start-Span: 1`` it runs inside a recording SDK span (like a tracer)."""
    if environ.get("HTTP_X_START_SPAN") != "1":
        return app(environ, start_response)
    return _traced(environ, start_response)


def _traced(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
    # A generator keeps the span current until the server has sent and closed the body,
    # which is when the agent observes the request.
    with tracer.start_as_current_span("outer") as span:
        trace_id = f"{span.get_span_context().trace_id:032x}"

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            return start_response(status, [*headers, ("X-Trace-Id", trace_id)], exc_info)

        body = app(environ, start)
        try:
            yield from body
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()
