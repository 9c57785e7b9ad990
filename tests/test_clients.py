"""Outgoing HTTP requests measured: `http_client_request_duration_seconds` by method,
host, status and error, for requests, urllib3, httpx (sync and async) and aiohttp's
client, against a real HTTP server on loopback, with tracing off."""

from __future__ import annotations

import asyncio
import importlib
import logging
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import sightline
from prometheus_client import CollectorRegistry

from .helpers import free_port

METRIC = "http_client_request_duration_seconds"


class _Handler(BaseHTTPRequestHandler):
    """``/status/N`` answers N; ``/redirect`` answers 302 to ``/status/200``."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/status/200")
        else:
            self.send_response(int(self.path.rsplit("/", 1)[-1]))
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = do_PURGE = _answer


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def counts(registry: CollectorRegistry) -> dict[tuple[str, str, str, str], float]:
    found = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == METRIC + "_count":
                labels = sample.labels
                key = (
                    labels["http_request_method"],
                    labels["server_address"],
                    labels["http_response_status_code"],
                    labels["error_type"],
                )
                found[key] = sample.value
    return found


def _requests(method: str, url: str) -> None:
    import requests

    requests.request(method, url, timeout=5)


def _urllib3(method: str, url: str) -> None:
    import urllib3

    retries = urllib3.Retry(connect=0, read=0, redirect=1)
    urllib3.PoolManager().request(method, url, timeout=5, retries=retries)


def _httpx(method: str, url: str) -> None:
    import httpx

    httpx.request(method, url, timeout=5, follow_redirects=True)


def _httpx_async(method: str, url: str) -> None:
    import httpx

    async def call() -> None:
        async with httpx.AsyncClient(timeout=5, follow_redirects=True) as client:
            await client.request(method, url)

    asyncio.run(call())


def _aiohttp(method: str, url: str) -> None:
    import aiohttp

    async def call() -> None:
        timeout = aiohttp.ClientTimeout(total=5)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.request(method, url) as response,
        ):
            await response.read()

    asyncio.run(call())


CLIENTS: dict[str, Callable[[str, str], None]] = {
    "requests": _requests,
    "urllib3": _urllib3,
    "httpx": _httpx,
    "httpx-async": _httpx_async,
    "aiohttp": _aiohttp,
}
# (what the caller gets, what error_type says: urllib3's exception under requests' own)
CONNECT_ERRORS = {
    "requests": ("requests.exceptions.ConnectionError", "NewConnectionError"),
    "urllib3": ("urllib3.exceptions.MaxRetryError", "NewConnectionError"),
    "httpx": ("httpx.ConnectError", "ConnectError"),
    "httpx-async": ("httpx.ConnectError", "ConnectError"),
    "aiohttp": ("aiohttp.ClientConnectorError", "ClientConnectorError"),
}


@pytest.mark.parametrize("client", list(CLIENTS))
def test_each_outgoing_request_is_counted_by_method_host_status_and_error(
    agent: CollectorRegistry, server: str, client: str
) -> None:
    """Every request sent is one observation: by method (unknown methods as _OTHER),
    host without port, status; a redirect followed is a request of its own; a request
    that got no response has no status and its exception's class as error_type; what the
    library raises reaches the caller unchanged."""
    pytest.importorskip(client.split("-")[0])
    send = CLIENTS[client]
    for _ in range(3):
        send("GET", server + "/status/200")
    for _ in range(2):
        send("POST", server + "/status/500")
    send("GET", server + "/status/404")
    send("GET", server + "/redirect")
    send("PURGE", server + "/status/204")
    raised, error = CONNECT_ERRORS[client]
    module, _, name = raised.rpartition(".")
    with pytest.raises(getattr(importlib.import_module(module), name)):
        send("GET", f"http://127.0.0.1:{free_port()}/status/200")
    assert counts(agent) == {
        ("GET", "127.0.0.1", "200", ""): 4.0,  # three, and the redirect's target
        ("POST", "127.0.0.1", "500", ""): 2.0,
        ("GET", "127.0.0.1", "404", ""): 1.0,
        ("GET", "127.0.0.1", "302", ""): 1.0,
        ("_OTHER", "127.0.0.1", "204", ""): 1.0,
        ("GET", "127.0.0.1", "", error): 1.0,
    }


def test_shutdown_puts_the_send_methods_back(registry: CollectorRegistry) -> None:
    """After shutdown the libraries' send methods are their own again, and requests are
    no longer measured."""
    import aiohttp
    import httpx
    from urllib3.connectionpool import HTTPConnectionPool

    def current() -> tuple[Any, ...]:
        return (
            HTTPConnectionPool._make_request,
            httpx.HTTPTransport.handle_request,
            httpx.AsyncHTTPTransport.handle_async_request,
            aiohttp.ClientSession.__init__,
        )

    originals = current()
    sightline.init(service="test", registry=registry, metrics_addr="off", traces=False, logs=False)
    assert all(now is not before for now, before in zip(current(), originals, strict=True))
    sightline.shutdown()
    assert current() == originals


def test_shutdown_with_tracing_puts_every_send_method_back(
    registry: CollectorRegistry, backend: Any
) -> None:
    """With tracing on, OpenTelemetry's client instrumentations wrap some of the methods
    Sightline wrapped; after shutdown every one is the library's own again."""
    import aiohttp
    import httpx
    from urllib3.connectionpool import HTTPConnectionPool

    def current() -> tuple[Any, ...]:
        return (
            HTTPConnectionPool._make_request,
            HTTPConnectionPool.urlopen,
            httpx.HTTPTransport.handle_request,
            httpx.AsyncHTTPTransport.handle_async_request,
            aiohttp.ClientSession.__init__,
        )

    originals = current()
    sightline.init(
        service="test", registry=registry, metrics_addr="off", logs=False,
        otlp_endpoint=backend.url,
    )  # fmt: skip
    assert current() != originals
    sightline.shutdown()
    assert current() == originals


def test_shutdown_leaves_a_patch_made_after_init(registry: CollectorRegistry) -> None:
    """Something that wraps urllib3's send after init (another instrumentation) keeps its
    wrapper after shutdown; only Sightline's own is taken out of the way."""
    from urllib3.connectionpool import HTTPConnectionPool

    original = HTTPConnectionPool._make_request
    sightline.init(service="test", registry=registry, metrics_addr="off", traces=False, logs=False)
    ours = HTTPConnectionPool._make_request

    def theirs(*args: Any, **kwargs: Any) -> Any:
        return ours(*args, **kwargs)

    HTTPConnectionPool._make_request = theirs  # type: ignore[method-assign]
    try:
        sightline.shutdown()
        assert HTTPConnectionPool._make_request is theirs
    finally:
        HTTPConnectionPool._make_request = original  # type: ignore[method-assign]


def test_without_the_instrumentation_requests_are_measured_and_one_warning_says_why(
    registry: CollectorRegistry,
    backend: Any,
    server: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With tracing on but OpenTelemetry's urllib3 instrumentation not installed, urllib3
    requests are still measured, and one warning names what is missing and how to get it."""
    import urllib3
    from sightline.integrations.urllib3 import URLLib3Integration

    monkeypatch.setattr(URLLib3Integration, "instrumentor", None)
    with caplog.at_level(logging.WARNING, logger="sightline"):
        sightline.init(
            service="test", registry=registry, metrics_addr="off", logs=False,
            otlp_endpoint=backend.url,
        )  # fmt: skip
        urllib3.PoolManager().request("GET", server + "/status/200", timeout=5)
    assert counts(registry) == {("GET", "127.0.0.1", "200", ""): 1.0}
    [warning] = [r.getMessage() for r in caplog.records if "urllib3 calls" in r.getMessage()]
    assert "carry no trace context" in warning
    assert "pip install 'sightline[clients]' (opentelemetry-instrumentation-urllib3)" in warning


def test_aiohttp_sessions_keep_their_own_trace_configs(
    agent: CollectorRegistry, server: str
) -> None:
    """An aiohttp session made with trace configs of its own keeps them (their hooks still
    run) and is measured too."""
    aiohttp = pytest.importorskip("aiohttp")
    seen: list[str] = []

    async def on_end(session: Any, context: Any, params: Any) -> None:
        seen.append(str(params.response.status))

    theirs = aiohttp.TraceConfig()
    theirs.on_request_end.append(on_end)

    async def call() -> None:
        async with aiohttp.ClientSession(trace_configs=[theirs]) as session:
            for _ in range(2):
                async with session.get(server + "/status/201") as response:
                    await response.read()

    asyncio.run(call())
    assert seen == ["201", "201"]
    assert counts(agent) == {("GET", "127.0.0.1", "201", ""): 2.0}
