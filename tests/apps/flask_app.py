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


@app.route("/spin/<int:ms>")
def spin(ms: int) -> str:
    """Work on the CPU for ``ms`` milliseconds without blocking (no system call)."""
    import time

    end = time.perf_counter() + ms / 1000
    while time.perf_counter() < end:
        pass
    return "spun"


@app.route("/orders", methods=["POST"])
def create_order() -> tuple[str, int]:
    return "created", 201


@app.route("/boom")
def boom() -> str:
    raise RuntimeError("the view failed")


@app.route("/teapot/<kind>")
def teapot(kind: str) -> str:
    abort(418)


@app.route("/deps")
def deps() -> str:
    """A request that waits on what a service depends on: a Redis cache (a hit and a miss),
    a SQLite database through a SQLAlchemy pool, and an HTTP call (to DEPS_HTTP_URL)."""
    import os

    import redis
    import urllib3

    cache = redis.Redis.from_url(os.environ["BROKER_URL"])
    cache.set("deps:known", "1")
    cache.mget("deps:known", "deps:unknown")
    with _engine().connect() as conn:
        conn.exec_driver_sql("SELECT 1").all()
    urllib3.request("GET", os.environ["DEPS_HTTP_URL"], timeout=5, retries=False)
    return "waited"


_engines: list[Any] = []


def _engine() -> Any:
    if not _engines:
        import os
        import tempfile

        import sqlalchemy

        path = os.path.join(tempfile.gettempdir(), f"deps-{os.getpid()}.db")
        _engines.append(sqlalchemy.create_engine(f"sqlite:///{path}", pool_size=2))
    return _engines[0]


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
