"""The WSGI core: timing, status, streaming, exceptions, nesting and queue time."""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from typing import Any

import pytest
import sightline
from prometheus_client import CollectorRegistry
from sightline import _http
from sightline.metrics import InFlight

from .helpers import call_wsgi, count, series


def hello(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


def test_plain_wsgi_app_is_recorded(agent: CollectorRegistry) -> None:
    """A wrapped plain WSGI app records each request under the unmatched route."""
    app = sightline.instrument_app(hello)
    assert call_wsgi(app) == ("200 OK", b"hello")
    call_wsgi(app, method="POST")
    assert count(agent, "_unmatched", "200") == 1
    assert count(agent, "_unmatched", "200", method="POST") == 1


def test_route_of_gives_the_template(agent: CollectorRegistry) -> None:
    """instrument_app(route_of=...) labels requests with the template it returns."""
    app = sightline.instrument_app(hello, route_of=lambda environ: "/items/{id}")
    call_wsgi(app, "/items/7")
    assert count(agent, "/items/{id}", "200") == 1


def test_unknown_method_is_folded(agent: CollectorRegistry) -> None:
    """Methods outside the standard set share the _OTHER label."""
    app = sightline.instrument_app(hello)
    call_wsgi(app, method="BREW")
    call_wsgi(app, method="X" * 500)
    assert count(agent, "_unmatched", "200", method="_OTHER") == 2


def test_app_exception_passes_through_and_counts_as_500(agent: CollectorRegistry) -> None:
    """The app's exception reaches the server unchanged and the request is recorded as 500."""
    error = RuntimeError("boom")

    def broken(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        raise error

    with pytest.raises(RuntimeError) as info:
        call_wsgi(sightline.instrument_app(broken))
    assert info.value is error
    assert count(agent, "_unmatched", "500") == 1
    assert agent.get_sample_value("http_server_active_requests") == 0


def test_a_body_whose_close_raises_is_still_recorded_once(agent: CollectorRegistry) -> None:
    """When the app's body raises from ``close()``, the error reaches the server as it is,
    the request is recorded once with its status, and the in-flight gauge comes back to 0."""
    error = RuntimeError("close failed")

    class Body:
        def __iter__(self) -> Iterator[bytes]:
            yield b"ok"

        def close(self) -> None:
            raise error

    def app(environ: dict[str, Any], start_response: Any) -> Body:
        start_response("200 OK", [])
        return Body()

    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/"}
    body = sightline.instrument_app(app)(environ, lambda *a: None)
    assert b"".join(body) == b"ok"
    with pytest.raises(RuntimeError) as info:
        body.close()  # type: ignore[attr-defined]
    assert info.value is error
    body.close()  # type: ignore[attr-defined]
    assert count(agent, "_unmatched", "200") == 1
    assert agent.get_sample_value("http_server_active_requests") == 0


def test_streaming_body_is_timed_until_closed(agent: CollectorRegistry) -> None:
    """A streamed response counts from the call until the server closes the body."""
    closed: list[bool] = []

    class Body:
        def __iter__(self) -> Iterator[bytes]:
            for _ in range(3):
                time.sleep(0.02)
                yield b"chunk"

        def close(self) -> None:
            closed.append(True)

    def streaming(environ: dict[str, Any], start_response: Any) -> Body:
        start_response("200 OK", [])
        return Body()

    app = sightline.instrument_app(streaming)
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/"}
    body = app(environ, lambda *a: None)
    assert agent.get_sample_value("http_server_active_requests") == 1
    assert count(agent, "_unmatched", "200") == 0, "recorded before the body was sent"
    assert b"".join(body) == b"chunkchunkchunk"
    body.close()  # type: ignore[attr-defined]
    assert closed == [True]
    assert count(agent, "_unmatched", "200") == 1
    total = agent.get_sample_value(
        "http_server_request_duration_seconds_sum",
        {
            "http_request_method": "GET",
            "http_route": "_unmatched",
            "http_response_status_code": "200",
        },
    )
    assert total is not None
    assert total >= 0.06
    body.close()  # type: ignore[attr-defined]
    assert count(agent, "_unmatched", "200") == 1, "a second close() records nothing more"


def test_request_seen_by_two_layers_is_recorded_once(agent: CollectorRegistry) -> None:
    """Wrapping twice (or auto-patch plus manual wrap) records one request once."""
    app = sightline.instrument_app(sightline.instrument_app(hello))
    call_wsgi(app)
    assert count(agent, "_unmatched", "200") == 1


def test_active_requests_rises_during_a_request(agent: CollectorRegistry) -> None:
    """http_server_active_requests counts the request while the app runs."""
    seen: list[float | None] = []

    def probe(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(agent.get_sample_value("http_server_active_requests"))
        return hello(environ, start_response)

    call_wsgi(sightline.instrument_app(probe))
    assert seen == [1.0]
    assert agent.get_sample_value("http_server_active_requests") == 0


def test_busy_seconds_count_a_request_in_flight_and_every_one_finished(
    agent: CollectorRegistry,
) -> None:
    """http_server_busy_seconds_total holds the time so far of a request still in flight
    (read from inside it), then exactly the sum of the finished requests' durations, and
    never goes back."""
    seen: list[float] = []

    def slow(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        time.sleep(0.05)
        seen.append(agent.get_sample_value("http_server_busy_seconds_total") or 0.0)
        time.sleep(0.05)
        return hello(environ, start_response)

    app = sightline.instrument_app(slow)
    call_wsgi(app)
    assert 0.05 <= seen[0] < 0.1
    after_one = agent.get_sample_value("http_server_busy_seconds_total")
    durations = agent.get_sample_value(
        "http_server_request_duration_seconds_sum",
        {
            "http_request_method": "GET",
            "http_route": "_unmatched",
            "http_response_status_code": "200",
        },
    )
    assert after_one == durations
    assert after_one is not None
    assert after_one >= 0.1
    call_wsgi(app)
    assert agent.get_sample_value("http_server_busy_seconds_total") >= after_one + 0.1


def test_busy_seconds_never_go_back_when_read_between_a_request_and_its_sum(
    agent: CollectorRegistry,
) -> None:
    """A read that finds a request neither in flight nor yet in the duration sum (it has
    just ended) keeps the busy counter where it was instead of lowering it."""
    metrics = sightline._state.current.metrics  # type: ignore[union-attr]
    started = time.perf_counter() - 2.0
    metrics.requests_in_flight[1] = started
    in_flight = metrics.active_requests.busy_seconds()
    assert in_flight >= 2.0
    metrics.requests_in_flight.pop(1)  # ended, its duration not yet observed
    assert metrics.active_requests.busy_seconds() == in_flight
    metrics.observe_request("GET", "/x", "200", 2.5)
    assert metrics.active_requests.busy_seconds() == 2.5


def test_busy_seconds_never_count_twice_a_request_that_ends_during_a_read() -> None:
    """A request that ends while the busy counter is being read (taken out of the in-flight
    dict and its duration added to the finished seconds as the read looks at them) is
    counted once: the read takes the finished seconds before the requests in flight."""
    finished = [0.0]
    in_flight: InFlight

    def completed() -> float:
        if 1 in in_flight._active:  # the 10 s request ends now
            in_flight._active.pop(1)
            finished[0] += 10.0
        return finished[0]

    in_flight = InFlight("active", "", "busy", "", completed)
    in_flight._active[1] = time.perf_counter() - 10.0
    assert 10.0 <= in_flight.busy_seconds() < 10.5
    assert in_flight._active == {}


@pytest.mark.parametrize("unit", [1.0, 1e3, 1e6, 1e9])
def test_queue_start_header_in_any_unit(agent: CollectorRegistry, unit: float) -> None:
    """X-Request-Start in seconds, ms, µs or ns since the epoch gives the queue wait."""
    stamp = time.time() - 0.2
    value = f"{stamp:.3f}" if unit == 1.0 else str(int(stamp * unit))
    call_wsgi(sightline.instrument_app(hello), headers={"X-Request-Start": f"t={value}"})
    assert agent.get_sample_value("http_server_request_queue_duration_seconds_count") == 1
    waited = agent.get_sample_value("http_server_request_queue_duration_seconds_sum")
    assert waited is not None
    assert 0.19 <= waited < 5


@pytest.mark.parametrize(
    "header",
    [
        "",
        "t=",
        "garbage",
        "t=-5",
        "t=nan",
        "t=inf",
        "t=1e400",
        "t=99999999999999999999",
        "t=" + "9" * 200,
        "t=0",
        "\x00\xff",
    ],
)
def test_garbage_queue_header_is_ignored(agent: CollectorRegistry, header: str) -> None:
    """Unparseable, negative, future or absurd X-Queue-Start values are ignored silently."""
    status, _ = call_wsgi(sightline.instrument_app(hello), headers={"X-Queue-Start": header})
    assert status == "200 OK"
    assert agent.get_sample_value("http_server_request_queue_duration_seconds_count") == 0
    assert count(agent, "_unmatched", "200") == 1


def test_queue_header_from_the_future_is_ignored() -> None:
    """A proxy clock ahead of ours gives a negative wait, which is dropped."""
    assert _http.queue_seconds(f"t={time.time() + 10:.3f}", time.time()) is None
    assert _http.queue_seconds("t=1700000000000", 1700000000.5) == pytest.approx(0.5)


def test_metrics_served_from_the_app_path(registry: CollectorRegistry) -> None:
    """With SIGHTLINE_METRICS_PATH the app itself answers that path with the exposition."""
    sightline.init(service="t", registry=registry, metrics_path="/metrics")
    app = sightline.instrument_app(hello)
    call_wsgi(app, "/users")
    status, body = call_wsgi(app, "/metrics")
    assert status.startswith("200")
    assert b'http_server_request_duration_seconds_count{http_request_method="GET"' in body
    assert series(registry, "http_server_request_duration_seconds") == [
        {
            "http_request_method": "GET",
            "http_route": "_unmatched",
            "http_response_status_code": "200",
        }
    ], "the scrape itself is not recorded as a request"


def test_after_shutdown_wrapped_app_passes_through(registry: CollectorRegistry) -> None:
    """After shutdown() a wrapped app runs untouched and nothing is recorded."""
    sightline.init(service="t", registry=registry, metrics_addr="off")
    app = sightline.instrument_app(hello)
    sightline.shutdown()
    environ: dict[str, Any] = {"REQUEST_METHOD": "GET", "PATH_INFO": "/"}
    body = app(environ, lambda *a: None)
    assert body == [b"hello"], "the app's own body object comes back unwrapped"
    assert environ == {"REQUEST_METHOD": "GET", "PATH_INFO": "/"}
    assert registry.get_sample_value("http_server_active_requests") is None


@pytest.mark.internal_errors_expected
def test_agent_failure_never_reaches_the_app(
    agent: CollectorRegistry, internal_errors: list[BaseException], monkeypatch: pytest.MonkeyPatch
) -> None:
    """If recording fails inside the agent, the request still succeeds and the error is counted."""
    from sightline import _state

    def explode(*args: object) -> None:
        raise ValueError("agent bug")

    assert _state.current is not None
    monkeypatch.setattr(_state.current.metrics, "observe_request", explode)
    assert call_wsgi(sightline.instrument_app(hello)) == ("200 OK", b"hello")
    assert [str(e) for e in internal_errors] == ["agent bug"]
    assert (
        agent.get_sample_value("sightline_internal_errors_total", {"component": "wsgi.finish"}) == 1
    )
    assert agent.get_sample_value("http_server_active_requests") == 0


@pytest.mark.internal_errors_expected
def test_broken_route_of_still_counts_the_request(
    agent: CollectorRegistry, internal_errors: list[BaseException]
) -> None:
    """A route_of that raises or returns a non-string leaves the request counted, unmatched."""
    from prometheus_client import generate_latest

    def raising(environ: dict[str, Any]) -> str:
        raise LookupError("no router")

    call_wsgi(sightline.instrument_app(hello, route_of=raising))
    call_wsgi(sightline.instrument_app(hello, route_of=lambda environ: 42))  # type: ignore[arg-type,return-value]
    assert count(agent, "_unmatched", "200") == 2
    assert b"http_server_request_duration_seconds_count" in generate_latest(agent)
    assert [type(e) for e in internal_errors] == [LookupError]


def test_a_body_raising_mid_stream_is_an_error(backend: Any, registry: CollectorRegistry) -> None:
    """A response generator that raises after its first chunk passes the exception to the
    server unchanged, and the request is recorded as a 500 whose span carries the error,
    as an ASGI app's would be."""
    from opentelemetry.proto.trace.v1.trace_pb2 import Status

    from .receivers import attributes

    sightline.init(
        service="s",
        registry=registry,
        metrics_addr="off",
        otlp_endpoint=backend.url,
        logs=False,
    )
    error = OSError("disk went away")

    def streaming(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"first part"
        raise error

    with pytest.raises(OSError, match="disk went away") as info:
        call_wsgi(sightline.instrument_app(streaming, route_of=lambda e: "/export"))
    assert info.value is error
    assert count(registry, "/export", "500") == 1
    assert count(registry, "/export", "200") == 0
    sightline.shutdown()
    [(_, span)] = backend.spans()
    assert span.status.code == Status.STATUS_CODE_ERROR
    assert attributes(span.attributes)["error.type"] == "OSError"


def test_a_body_given_up_on_is_closed_once(agent: CollectorRegistry) -> None:
    """A client gone mid-stream: the server stops iterating and closes the response. The
    app's body is closed exactly once (its close callbacks run once), and the request is
    still recorded."""
    closed: list[int] = []

    class Body:
        """An iterator of its own with a close(), as Werkzeug's ClosingIterator is."""

        def __init__(self) -> None:
            self.chunks = [b"first", b"second"]

        def __iter__(self) -> Body:
            return self

        def __next__(self) -> bytes:
            if not self.chunks:
                raise StopIteration
            return self.chunks.pop(0)

        def close(self) -> None:
            closed.append(1)

    def streaming(environ: dict[str, Any], start_response: Any) -> Body:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Body()

    app = sightline.instrument_app(streaming, route_of=lambda e: "/stream")
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/stream", "wsgi.url_scheme": "http"}
    response = app(environ, lambda status, headers, exc_info=None: None)
    chunks = iter(response)
    assert next(chunks) == b"first"
    del chunks  # the server drops its iterator: the client hung up
    gc.collect()
    response.close()
    assert closed == [1]
    assert count(agent, "/stream", "200") == 1
