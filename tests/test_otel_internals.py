"""The OpenTelemetry internals the agent relies on still exist and behave as it assumes.

Each test fences one private name (or undocumented behaviour) used under
``agent/sightline/``, so a new API/SDK/instrumentation release that changes it fails
here, naming the assumption, instead of failing in a user's process:

- ``opentelemetry.context._RUNTIME_CONTEXT`` and ``ContextVarsRuntimeContext._current_context``
  (``_spans.context_var``; the request fast path in ``tracing.py``, ``asgi.py``)
- ``opentelemetry.trace.propagation._SPAN_KEY`` (``_spans.SPAN_KEY``; ``tracing.py``, ``logs.py``)
- ``SpanContext``'s tuple layout, built with ``tuple.__new__`` (``_spans.LeanSpan``)
- ``TracerProvider._handle_fork`` and ``_tracers_lock`` (``_sdk._Provider``)
- ``BaseInstrumentor``'s one instance per class (``integrations/_clients.py``)
- the API's entry-point group names (``_settings.py``)
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from contextvars import ContextVar
from typing import Any

import pytest
import sightline
from opentelemetry import context, propagate, trace
from opentelemetry.context import Context, create_key
from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext, TraceFlags, TraceState
from prometheus_client import CollectorRegistry
from sightline import _sdk, _settings, _spans

from .receivers import Backend


def test_runtime_context_variable_is_the_apis_current_context() -> None:
    """``_RUNTIME_CONTEXT._current_context`` is the ContextVar behind the context API.

    What is set on either side the other reads, and the tokens of one are undone by the
    other (asgi.py detaches a fast-path token through the API; tracing.py resets an API
    token on the variable)."""
    runtime = context._RUNTIME_CONTEXT
    assert type(runtime) is ContextVarsRuntimeContext
    assert isinstance(runtime._current_context, ContextVar)
    variable = _spans.context_var()
    assert variable is runtime._current_context
    before = context.get_current()
    key = create_key("fence")

    fast = Context({**before, key: "set on the variable"})
    token = variable.set(fast)
    assert context.get_current() is fast
    assert context.get_value(key) == "set on the variable"
    context.detach(token)
    assert context.get_current() is before, "the API did not undo the variable's token"

    slow = context.set_value(key, "attached through the API")
    api_token = context.attach(slow)
    assert variable.get() is slow
    variable.reset(api_token)
    assert context.get_current() is before, "the variable did not undo the API's token"


def test_span_key_is_where_the_api_keeps_the_current_span() -> None:
    """``trace.propagation._SPAN_KEY`` is the key the API keeps the current span under.

    The API writes the span there, and a plain Context built with that key (as the request
    fast path builds it) is read back by ``trace.get_current_span``."""
    assert _spans.SPAN_KEY == trace.propagation._SPAN_KEY
    span = trace.NonRecordingSpan(SpanContext(0xAB, 0xCD, is_remote=False))
    written = trace.set_span_in_context(span)
    assert written.get(_spans.SPAN_KEY) is span  # what _spans.current_span_reader reads
    built = Context({**context.get_current(), _spans.SPAN_KEY: span})
    assert trace.get_current_span(built) is span
    token = context.attach(built)
    try:
        assert trace.get_current_span() is span
        assert _spans.current_span_reader()() is span
    finally:
        context.detach(token)


@pytest.mark.parametrize("sampled", [True, False])
def test_span_context_built_by_tuple_new_equals_the_constructed_one(sampled: bool) -> None:
    """A SpanContext built with ``tuple.__new__`` equals the one ``SpanContext(...)`` builds.

    LeanSpan skips ``SpanContext.__new__`` and writes the six fields itself: they must be
    the same fields in the same places, is_valid included."""
    flags = TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT)
    state = TraceState([("vendor", "value")])
    fields = (0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, False, flags, state, True)
    fast = tuple.__new__(SpanContext, fields)
    slow = SpanContext(fields[0], fields[1], is_remote=False, trace_flags=flags, trace_state=state)
    assert fast == slow
    assert tuple(slow) == fields
    assert (
        fast.trace_id,
        fast.span_id,
        fast.is_remote,
        fast.trace_flags,
        fast.trace_state,
        fast.is_valid,
    ) == fields


def test_lean_span_context_is_valid_to_the_api_sdk_and_propagator() -> None:
    """LeanSpan's hand-built context is valid and read right by the API, SDK and propagator.

    A child of a remote parent gets what ``SpanContext(...)`` would build, and the
    propagator and an SDK child span read its trace id, span id, flags and trace state."""
    parent = SpanContext(
        0x0AF7651916CD43DD8448EB211C80319C,
        0xB7AD6B7169203331,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
        trace_state=TraceState([("vendor", "value")]),
    )
    span = _spans.LeanSpan("GET /", parent, _spans.Sampling("parentbased_always_on", 1.0), None)
    ctx = span.get_span_context()
    assert ctx == SpanContext(
        ctx.trace_id,
        ctx.span_id,
        is_remote=False,
        trace_flags=ctx.trace_flags,
        trace_state=ctx.trace_state,
    )
    assert ctx.is_valid
    assert (ctx.trace_id, ctx.trace_flags.sampled, ctx.trace_state) == (
        parent.trace_id,
        True,
        parent.trace_state,
    )

    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    assert carrier["traceparent"] == f"00-{span.hex_ids[0]}-{span.hex_ids[1]}-01"

    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.get_empty(), shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    child = provider.get_tracer("fence").start_span("child", trace.set_span_in_context(span))
    child.end()
    [finished] = exporter.get_finished_spans()
    assert finished.parent == ctx
    assert finished.context is not None
    assert finished.context.trace_id == ctx.trace_id
    assert finished.context.trace_state == ctx.trace_state


def _in_fork(check: Any, timeout: float = 30) -> dict[str, Any]:
    """Run ``check()`` in a forked child and return the JSON-able dict it returns; the child
    ends with ``os._exit`` (0 when ``check`` returned), and is killed if it hangs."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (child)
        code = 1
        try:
            os.close(read)
            os.write(write, json.dumps(check()).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(read)
            pytest.fail(f"the forked child hung for {timeout} s")
        time.sleep(0.02)
    with os.fdopen(read, "rb") as pipe:
        output = pipe.read()
    assert os.waitstatus_to_exitcode(status) == 0, "the forked child failed"
    result: dict[str, Any] = json.loads(output)
    return result


@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")
def test_forked_child_runs_the_agents_fork_handler_instead_of_the_sdks() -> None:
    """In a forked child the SDK runs ``_Provider._handle_fork`` instead of its own handler.

    The SDK's after-fork hook calls ``TracerProvider._handle_fork``, so the override gives
    a fresh ``_tracers_lock`` (the lock the SDK takes in ``get_tracer``, held at fork time
    here) and leaves the resource as built, where the SDK's own handler re-detects it; the
    child exits cleanly."""
    assert callable(vars(TracerProvider).get("_handle_fork")), "SDK fork hook renamed"
    # The reason for the override: the SDK's own handler re-detects the resource (on a
    # thread pool, run here in the parent, where that is safe).
    plain = TracerProvider(resource=Resource.get_empty(), shutdown_on_exit=False)
    TracerProvider._handle_fork(plain)
    assert dict(plain.resource.attributes) != {}, "the SDK's fork handler no longer re-detects"
    del plain  # its after-fork hook holds it weakly: gone, it does nothing in the child

    provider = _sdk._Provider(resource=Resource.get_empty(), shutdown_on_exit=False)
    held = provider._tracers_lock
    assert held.acquire(blocking=False)
    try:
        blocked = threading.Thread(target=provider.get_tracer, args=("blocked",), daemon=True)
        blocked.start()
        blocked.join(0.2)
        assert blocked.is_alive(), "the SDK's get_tracer no longer takes _tracers_lock"

        def check() -> dict[str, Any]:
            lock = provider._tracers_lock
            free = lock.acquire(timeout=1)
            if free:
                lock.release()
                provider.get_tracer("child")  # takes the lock: hangs on the inherited one
            return {
                "replaced": lock is not held,
                "free": free,
                "resource": dict(provider.resource.attributes),
            }

        # The lock is held by this thread at the moment of fork, as another thread could.
        child = _in_fork(check)
    finally:
        held.release()
    blocked.join(5)
    assert child["replaced"], "_Provider._handle_fork did not run in the child"
    assert child["free"]
    assert child["resource"] == {}, "the SDK's fork handler ran instead of _Provider's"


@pytest.mark.parametrize(
    ("client", "name"),
    [
        ("requests", "RequestsInstrumentor"),
        ("urllib3", "URLLib3Instrumentor"),
        ("httpx", "HTTPXClientInstrumentor"),
    ],
)
def test_client_instrumentor_is_one_instance_whose_state_the_agent_reads(
    client: str, name: str, backend: Backend, registry: CollectorRegistry
) -> None:
    """An instrumentor class has one instance, so the agent sees and keeps the app's own.

    The agent's fresh ``Instrumentor()`` reports the app's instrumentation
    (``is_instrumented_by_opentelemetry``) and leaves it in place; otherwise the agent
    instruments and uninstruments it itself."""
    pytest.importorskip(client)
    module = pytest.importorskip(f"opentelemetry.instrumentation.{client}")
    instrumentor = getattr(module, name)

    def run_agent() -> None:
        sightline.init(
            service="fence",
            registry=registry,
            metrics_addr="off",
            otlp_endpoint=backend.url,
            logs=False,
            integrations=[client],
        )

    apps = instrumentor()
    assert instrumentor() is apps
    assert not apps.is_instrumented_by_opentelemetry
    apps.instrument()
    try:
        run_agent()
        sightline.shutdown()
        assert instrumentor().is_instrumented_by_opentelemetry, "the agent undid the app's"
    finally:
        apps.uninstrument()
    run_agent()
    assert instrumentor().is_instrumented_by_opentelemetry, "the agent did not instrument"
    sightline.shutdown()
    assert not instrumentor().is_instrumented_by_opentelemetry


def test_entry_point_groups_the_settings_check_are_the_apis() -> None:
    """The entry-point groups ``_settings`` checks plug-in names against are the API's.

    The groups OTEL_PYTHON_CONTEXT, OTEL_PYTHON_TRACER_PROVIDER and OTEL_PROPAGATORS are
    validated against hold the API's and SDK's own implementations under their documented
    names."""
    names = _settings._entry_point_names
    assert "contextvars_context" in names("opentelemetry_context")
    assert "sdk_tracer_provider" in names("opentelemetry_tracer_provider")
    assert {"tracecontext", "baggage"} <= set(names("opentelemetry_propagator"))
