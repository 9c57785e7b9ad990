"""A custom job loop on a real Redis list, measured with sightline.task and track_queue."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sightline
from opentelemetry import propagate, trace
from prometheus_client import CollectorRegistry
from sightline._tasks import Run

from .receivers import Backend
from .servers import redis

redis_client = pytest.importorskip("redis")


@pytest.fixture
def client(tmp_path: Path) -> Iterator[Any]:
    with redis(tmp_path) as url:
        yield redis_client.Redis.from_url(url)


@pytest.fixture(autouse=True)
def _forget_tracked_queues() -> Iterator[None]:
    yield
    from sightline import _state

    _state.tracked.clear()


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def test_custom_loop_is_measured_like_a_worker(
    client: Any, registry: CollectorRegistry, backend: Backend
) -> None:
    """Jobs a hand-written loop pops from a Redis list: exact counts by outcome, waits at
    least as long as the loop was away, the list's depth sampled to 0, and each job's span
    continuing the trace its producer put in the message."""
    sightline.init(
        service="loop",
        registry=registry,
        metrics_addr="off",
        otlp_endpoint=backend.url,
        queue_sample_interval=0.2,
    )
    sightline.track_queue("emails", lambda: client.llen("emails"))
    tracer = trace.get_tracer("producer")
    with tracer.start_as_current_span("enqueue emails") as producer:
        for n in range(12):
            headers: dict[str, str] = {}
            propagate.inject(headers)
            message = {"n": n, "at": time.time(), "headers": headers}
            client.rpush("emails", json.dumps(message))
    away = 1.2
    time.sleep(away)
    depths: list[float] = []

    def handle(message: dict[str, Any]) -> None:
        if message["n"] % 4 == 0:
            raise ValueError("bounced")
        time.sleep(0.05)

    def loop() -> None:
        while raw := client.lpop("emails"):
            message = json.loads(raw)
            try:
                with sightline.task(
                    "send_email",
                    queue="emails",
                    enqueued_at=message["at"],
                    headers=message["headers"],
                ):
                    handle(message)
            except ValueError:
                pass  # the app's own handling; the failure is recorded already

    worker = threading.Thread(target=loop)
    worker.start()
    while worker.is_alive():
        depths.append(
            value(registry, "worker_queue_depth", task_system="custom", task_queue="emails")
        )
        time.sleep(0.05)
    worker.join()
    time.sleep(0.5)  # one more sample after the list emptied
    labels = {"task_system": "custom", "task_queue": "emails", "task_name": "send_email"}
    duration = "worker_task_duration_seconds_count"
    assert value(registry, duration, **labels, task_outcome="success") == 9
    assert value(registry, duration, **labels, task_outcome="failure") == 3
    assert value(registry, "worker_task_wait_seconds_count", **labels) == 12
    assert value(registry, "worker_task_wait_seconds_bucket", **labels, le="1.0") == 0
    assert value(registry, "worker_queue_depth", task_system="custom", task_queue="emails") == 0
    assert max(depths) > 0
    assert value(registry, "worker_tasks_active", task_system="custom") == 0
    producer_trace = producer.get_span_context().trace_id
    sightline.shutdown()
    runs = [s for _, s in backend.spans() if s.name == "process send_email"]
    assert len(runs) == 12
    assert {int.from_bytes(s.trace_id, "big") for s in runs} == {producer_trace}
    assert sum(1 for s in runs if s.status.code == s.status.STATUS_CODE_ERROR) == 3


def test_task_decorator_on_sync_and_async_functions(registry: CollectorRegistry) -> None:
    """As a decorator each call is one run, for plain and async functions; an exception
    is re-raised untouched and counted as a failure."""
    sightline.init(service="t", registry=registry, metrics_addr="off", traces=False)

    @sightline.task("thumb", queue="images")
    def thumb(fail: bool) -> str:
        if fail:
            raise KeyError("missing")
        return "done"

    @sightline.task("crop", queue="images")
    async def crop() -> str:
        await asyncio.sleep(0)
        return "cropped"

    assert thumb(False) == "done"
    with pytest.raises(KeyError, match="missing"):
        thumb(True)
    assert asyncio.run(crop()) == "cropped"
    count = "worker_task_duration_seconds_count"
    base = {"task_system": "custom", "task_queue": "images"}
    assert value(registry, count, **base, task_name="thumb", task_outcome="success") == 1
    assert value(registry, count, **base, task_name="thumb", task_outcome="failure") == 1
    assert value(registry, count, **base, task_name="crop", task_outcome="success") == 1


def test_tasks_and_queues_before_init_are_harmless(registry: CollectorRegistry) -> None:
    """Before init() a task runs unmeasured and a tracked queue waits for init()."""
    sightline.track_queue("later", lambda: 7.0)
    with sightline.task("early"):
        pass
    sightline.init(
        service="t", registry=registry, metrics_addr="off", traces=False, queue_sample_interval=0.1
    )
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not value(
        registry, "worker_queue_depth", task_system="custom", task_queue="later"
    ):
        time.sleep(0.05)
    assert value(registry, "worker_queue_depth", task_system="custom", task_queue="later") == 7


def test_busy_task_seconds_are_exact_whatever_the_duration_series_fold(
    registry: CollectorRegistry,
) -> None:
    """worker_busy_seconds_total adds up every task's time, also for tasks whose duration
    series the cardinality guard folded into the overflow series, and a run given up on
    (a task delivered again in its place) leaves the running tasks, adding no time."""
    sightline.init(
        service="t",
        registry=registry,
        metrics_addr="off",
        traces=False,
        logs=False,
        max_series=1,
    )
    try:
        agent = sightline._state.current
        assert agent is not None
        for name in ("first", "second", "third"):  # the 2nd and 3rd are folded
            run = Run(agent, ("custom", "q", name))
            run.started -= 2.0  # as if it had run for 2 s
            run.finish("success")
        busy = registry.get_sample_value("worker_busy_seconds_total", {"task_system": "custom"})
        assert busy is not None
        assert 6.0 <= busy < 6.5
        given_up = Run(agent, ("custom", "q", "first"))
        given_up.started -= 5.0  # had its end been recorded, 5 s more
        assert registry.get_sample_value("worker_tasks_active", {"task_system": "custom"}) == 1
        given_up.abandon()
        given_up.finish("success")  # its end, seen late, counts nothing more
        assert registry.get_sample_value("worker_tasks_active", {"task_system": "custom"}) == 0
        again = registry.get_sample_value("worker_busy_seconds_total", {"task_system": "custom"})
        assert again is not None
        assert again - busy < 0.5
    finally:
        sightline.shutdown()


def test_busy_task_seconds_never_go_back_when_read_while_a_task_waits_to_end(
    registry: CollectorRegistry,
) -> None:
    """A read while a task waits for a late snapshot (its duration already measured)
    counts its time so far past that duration; the counter then stays at that reading
    instead of going back (Prometheus would take a fall for a reset)."""
    sightline.init(service="t", registry=registry, metrics_addr="off", traces=False, logs=False)
    try:
        agent = sightline._state.current
        assert agent is not None
        run = Run(agent, ("custom", "q", "slow"))
        run.started -= 3.0  # as if it had run for 3 s
        run.active[id(run)] = run.started
        waiting = registry.get_sample_value("worker_busy_seconds_total", {"task_system": "custom"})
        assert waiting is not None
        assert waiting >= 3.0
        agent.metrics.tasks_active.finish("custom", id(run), 2.0)  # measured before the wait
        after = registry.get_sample_value("worker_busy_seconds_total", {"task_system": "custom"})
        assert after == waiting
    finally:
        sightline.shutdown()
