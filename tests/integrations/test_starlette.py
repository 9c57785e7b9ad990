"""Starlette/FastAPI through the ASGI core: in process, and under uvicorn with Prometheus."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import sightline
from prometheus_client import CollectorRegistry

from ..helpers import count, free_port
from ..servers import counts_by_route, prometheus, status_of, uvicorn

pytest.importorskip("fastapi")


def asgi_calls(app: Any, *paths: str) -> list[tuple[int, bytes]]:
    """Drive an ASGI app as a server does, one event loop for all the requests."""
    return asyncio.run(_calls(app, paths))


async def _calls(app: Any, paths: tuple[str, ...]) -> list[tuple[int, bytes]]:
    return [await _call(app, path) for path in paths]


async def _call(
    app: Any,
    path: str,
    query: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
    client: tuple[str, int] = ("127.0.0.1", 5000),
) -> tuple[int, bytes]:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": headers or [(b"host", b"test")],
        "client": client,
        "server": ("127.0.0.1", 80),
    }
    sent: list[dict[str, Any]] = []

    requested = False

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()  # the client stays connected
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    try:
        await app(scope, receive, send)
    except RuntimeError:
        pass  # Starlette re-raises a view's error after sending its 500, as servers expect
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, body


@pytest.fixture
def fastapi_app(registry: CollectorRegistry) -> Any:
    sightline.init(service="t", registry=registry, metrics_addr="off", traces=False, logs=False)
    from ..apps.fastapi_routes import build

    return build()


def test_route_templates_with_prefixes_and_mounts(
    fastapi_app: Any, registry: CollectorRegistry
) -> None:
    """Router prefixes and mounted sub-apps give full templates; 404s are unmatched."""
    results = asgi_calls(
        fastapi_app,
        "/users/7",
        "/api/v1/items/abc",
        "/sub/things/3",
        "/nowhere",
        "/boom",
        "/stream",
    )
    assert [status for status, _ in results] == [200, 200, 200, 404, 500, 200]
    assert results[-1][1] == b"abc"
    assert count(registry, "/users/{uid}", "200") == 1
    assert count(registry, "/api/v1/items/{item_id}", "200") == 1
    assert count(registry, "/sub/things/{tid}", "200") == 1
    assert count(registry, "_unmatched", "404") == 1
    assert count(registry, "/boom", "500") == 1
    assert count(registry, "/stream", "200") == 1
    assert registry.get_sample_value("http_server_active_requests") == 0


def test_plain_asgi_app_and_websocket_scopes(registry: CollectorRegistry) -> None:
    """instrument_app wraps a plain ASGI app; websocket scopes pass through uncounted."""
    sightline.init(service="t", registry=registry, metrics_addr="off", traces=False, logs=False)
    seen: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope["type"])
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})

    wrapped = sightline.instrument_app(app)
    assert asgi_calls(wrapped, "/x")[0][0] == 204
    scope = {"type": "websocket", "path": "/ws", "headers": []}
    asyncio.run(wrapped(scope, None, None))
    assert seen == ["http", "websocket"]
    assert "sightline.recorded" not in scope
    assert count(registry, "_unmatched", "204") == 1


def test_shutdown_restores_starlette(registry: CollectorRegistry) -> None:
    """shutdown() puts Starlette.__call__ back."""
    from starlette.applications import Starlette

    original = Starlette.__call__
    sightline.init(service="t", registry=registry, metrics_addr="off", traces=False, logs=False)
    assert Starlette.__call__ is not original
    sightline.shutdown()
    assert Starlette.__call__ is original


def test_fastapi_under_uvicorn_counted_exactly(tmp_path: Path) -> None:
    """FastAPI under a real uvicorn, scraped by Prometheus: exact counts per template."""
    pytest.importorskip("uvicorn")
    metrics_port = free_port()
    env = {"SIGHTLINE_METRICS_ADDR": f"127.0.0.1:{metrics_port}", "SIGHTLINE_TRACES": "false"}
    with (
        uvicorn("tests.apps.fastapi_app:app", env, [], tmp_path) as base,
        prometheus(tmp_path, {"app": f"127.0.0.1:{metrics_port}"}) as prom,
    ):
        for uid in (1, 2):
            assert status_of(f"{base}/users/{uid}") == 200
        assert status_of(f"{base}/api/v1/items/x") == 200
        assert status_of(f"{base}/sub/things/9") == 200
        assert status_of(f"{base}/missing") == 404
        assert status_of(f"{base}/boom") == 500
        expected = {
            ("/users/{uid}", "200"): 2.0,
            ("/api/v1/items/{item_id}", "200"): 1.0,
            ("/sub/things/{tid}", "200"): 1.0,
            ("_unmatched", "404"): 1.0,
            ("/boom", "500"): 1.0,
            ("/health", "200"): 1.0,  # the fixture's readiness probe
        }
        got = counts_by_route(prom, expected)
        assert got == expected


def test_asgi_server_span(registry: CollectorRegistry, backend: Any) -> None:
    """An ASGI request is a SERVER span named by its template, continuing traceparent."""
    from opentelemetry.proto.trace.v1.trace_pb2 import Span

    from ..apps.fastapi_routes import build
    from ..receivers import attributes

    sightline.init(
        service="t", registry=registry, metrics_addr="off", logs=False, otlp_endpoint=backend.url
    )
    app = build()
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    scope_headers = [
        (b"host", b"shop:8000"),
        (b"user-agent", b"probe"),
        (b"traceparent", f"00-{trace_id}-{parent}-01".encode()),
    ]

    status, _ = asyncio.run(
        _call(app, "/users/5", b"token=abc&x=1", scope_headers, ("10.1.2.3", 5000))
    )
    assert status == 200
    sightline.shutdown()
    # One SERVER span: FastAPI's own telemetry stands aside for Sightline's.
    [(_, span)] = [(r, s) for r, s in backend.spans() if s.kind == Span.SPAN_KIND_SERVER]
    assert span.name == "GET /users/{uid}"
    assert span.trace_id.hex() == trace_id
    assert span.parent_span_id.hex() == parent
    attrs = attributes(span.attributes)
    assert attrs["http.route"] == "/users/{uid}"
    assert attrs["http.response.status_code"] == 200
    assert attrs["url.query"] == "token=REDACTED&x=1"
    assert attrs["server.address"] == "shop"
    assert attrs["client.address"] == "10.1.2.3"
    assert attrs["user_agent.original"] == "probe"


def test_event_loop_lag_is_measured(fastapi_app: Any, registry: CollectorRegistry) -> None:
    """A loop blocked for 0.3 s shows up in asyncio_event_loop_lag_seconds."""
    import time as time_module

    async def scenario() -> None:
        await _call(fastapi_app, "/users/1")  # the first request starts the timer
        await asyncio.sleep(0.1)
        time_module.sleep(0.8)  # block the loop past the timer's due time
        await asyncio.sleep(0.1)

    asyncio.run(scenario())
    lag_sum = registry.get_sample_value("asyncio_event_loop_lag_seconds_sum") or 0.0
    slow = registry.get_sample_value("asyncio_event_loop_lag_seconds_bucket", {"le": "0.25"})
    total = registry.get_sample_value("asyncio_event_loop_lag_seconds_count")
    assert total is not None
    assert total >= 1
    assert lag_sum >= 0.3
    assert slow is not None
    assert slow < total, "the late firing falls above 0.25 s"


def test_mount_templates_never_values(registry: CollectorRegistry) -> None:
    """A mount with a path parameter contributes its template, not the matched value."""
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route

    sightline.init(service="t", registry=registry, metrics_addr="off", traces=False, logs=False)

    async def item(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    async def raw(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"raw"})

    app = Starlette(
        routes=[
            Mount("/tenant/{tenant}", routes=[Route("/items/{id}", item)]),
            Mount("/files/{owner}", app=raw),
        ]
    )
    results = asgi_calls(
        app,
        "/tenant/acme/items/1",
        "/tenant/globex/items/2",
        "/files/ann/a.txt",
        "/files/bob/b.txt",
    )
    assert [status for status, _ in results] == [200, 200, 200, 200]
    assert count(registry, "/tenant/{tenant}/items/{id}", "200") == 2
    assert count(registry, "/files/{owner}/{path:path}", "200") == 2


def test_metrics_path_served_by_an_asgi_app(registry: CollectorRegistry) -> None:
    """With SIGHTLINE_METRICS_PATH an ASGI app answers the scrape itself, unrecorded."""
    from ..apps.fastapi_routes import build

    sightline.init(
        service="t", registry=registry, metrics_path="/metrics", traces=False, logs=False
    )
    status, body = asgi_calls(build(), "/users/1", "/metrics")[1]
    assert status == 200
    assert b'http_route="/users/{uid}"' in body
    assert b'http_route="/metrics"' not in body


def test_log_records_carry_the_span_in_async_views_and_thread_pools(
    registry: CollectorRegistry, backend: Any
) -> None:
    """Log lines from an async view, a sync view (run in FastAPI's thread pool) and a
    function the async view hands to a thread all carry their request's span ids."""
    import logging

    from fastapi import FastAPI

    sightline.init(service="t", registry=registry, metrics_addr="off", otlp_endpoint=backend.url)
    app = FastAPI()
    log = logging.getLogger("views")
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    @app.get("/async")
    async def in_async() -> str:
        log.warning("async view")
        await asyncio.to_thread(log.warning, "handed to a thread")
        return "ok"

    @app.get("/sync")
    def in_pool() -> str:
        log.warning("sync view")
        return "ok"

    keep = Keep()
    log.addHandler(keep)
    try:
        assert asyncio.run(_calls(app, ("/async", "/sync")))[0][0] == 200
    finally:
        log.removeHandler(keep)
    sightline.shutdown()
    spans = {span.name: span for _, span in backend.spans()}
    by_message = {record.getMessage(): record for record in records}
    for message, name in (
        ("async view", "GET /async"),
        ("handed to a thread", "GET /async"),
        ("sync view", "GET /sync"),
    ):
        record = by_message[message]
        assert record.otelTraceID == spans[name].trace_id.hex(), message  # type: ignore[attr-defined]
        assert record.otelSpanID == spans[name].span_id.hex(), message  # type: ignore[attr-defined]
