"""Celery on a real Redis (and RabbitMQ) with a real prefork worker: exact task signals,
waits, queue depth and oldest-message age, and one trace from an HTTP request through the
broker into the worker."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sightline
from prometheus_client import CollectorRegistry

from .helpers import (
    Samples,
    assert_depth_follows,
    call_wsgi,
    free_port,
    scrape,
    total,
    wait_until,
)
from .receivers import Backend
from .servers import celery_worker, rabbitmq, redis

celery = pytest.importorskip("celery")
redis_client = pytest.importorskip("redis")


def producer(url: str) -> Any:
    """A Celery app in the test process that only publishes (by task name)."""
    app = celery.Celery("producer", broker=url)
    app.conf.task_default_queue = "work"
    return app


@pytest.fixture
def worker_env(broker: str, backend: Backend, tmp_path: Path) -> dict[str, str]:
    return {
        "BROKER_URL": broker,
        "SIGHTLINE_METRICS_ADDR": f"127.0.0.1:{free_port()}",
        "SIGHTLINE_QUEUE_SAMPLE_INTERVAL": "0.5",
        "OTEL_EXPORTER_OTLP_ENDPOINT": backend.url,
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "SIGHTLINE_LOKI_URL": backend.url,
        "TMPDIR": str(tmp_path),
    }


def metrics_url(env: dict[str, str]) -> str:
    return f"http://{env['SIGHTLINE_METRICS_ADDR']}/metrics"


def task_count(found: Samples, name: str, outcome: str) -> float:
    return total(found, "worker_task_duration_seconds_count", task_name=name, task_outcome=outcome)


def test_task_outcomes_are_counted_exactly(
    worker_env: dict[str, str], broker: str, tmp_path: Path
) -> None:
    """A prefork worker (2 processes) runs tasks that succeed, fail and retry once; the
    worker's one endpoint counts each (task, outcome) exactly, merged over its pool."""
    app = producer(broker)
    for i in range(10):
        app.send_task("tasks.add", args=(i, i))
    for _ in range(3):
        app.send_task("tasks.fail")
    for _ in range(2):
        app.send_task("tasks.flaky")
    expected = {
        ("tasks.add", "success"): 10,
        ("tasks.fail", "failure"): 3,
        ("tasks.flaky", "retry"): 2,
        ("tasks.flaky", "success"): 2,
    }
    with celery_worker(worker_env, tmp_path / "worker.log"):

        def counts() -> dict[tuple[str, str], float]:
            found = scrape(metrics_url(worker_env))
            return {key: task_count(found, *key) for key in expected}

        assert wait_until(lambda: counts() == expected), counts()
        found = scrape(metrics_url(worker_env))
    capacity = [v for (m, _), v in found.items() if m == "worker_capacity"]
    assert capacity == [2]  # reported once, by the main process, for its pool
    assert found[("server_workers_configured", ())] == 2
    assert found[("server_workers_live", ())] == 2
    active = [v for (m, _), v in found.items() if m == "worker_tasks_active"]
    assert len(active) == 2  # one series per pool process (labelled process_pid)
    assert sum(active) == 0


def test_an_idle_worker_reports_its_busy_task_slots_as_zero_from_the_start(
    worker_env: dict[str, str], tmp_path: Path
) -> None:
    """Before any task runs, each pool process of a prefork worker already reports
    worker_tasks_active 0, so the 5-minute mean of busy task slots (the queue hint's load)
    counts the idle time before the first task instead of starting with it."""
    with celery_worker(worker_env, tmp_path / "worker.log"):

        def active() -> list[float]:
            found = scrape(metrics_url(worker_env))
            return [v for (m, _), v in found.items() if m == "worker_tasks_active"]

        assert wait_until(lambda: len(active()) == 2), active()
        assert active() == [0, 0]


def test_waits_and_queue_depth(
    worker_env: dict[str, str], broker: str, tmp_path: Path, registry: CollectorRegistry
) -> None:
    """Tasks published by an instrumented producer while no worker runs wait at least as
    long as the worker was away; the depth gauge follows the broker's list to 0; while
    the backlog drains both pool processes count as busy at once (together well over the
    one a single process can show)."""
    sightline.init(service="producer", registry=registry, metrics_addr="off", traces=False)
    app = producer(broker)
    for _ in range(40):
        app.send_task("tasks.slow", args=(0.1,))
    published = registry.get_sample_value(
        "worker_tasks_published_total",
        {"task_system": "celery", "task_queue": "work", "task_name": "tasks.slow"},
    )
    assert published == 40
    away = 2.0
    time.sleep(away)
    lengths: list[tuple[float, int]] = []
    readings: list[tuple[float, float]] = []
    busy: list[float] = []
    client = redis_client.Redis.from_url(broker)
    with celery_worker(worker_env, tmp_path / "worker.log"):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            lengths.append((time.monotonic(), int(client.llen("work"))))
            scraped = scrape(metrics_url(worker_env))
            busy.append(scraped.get(("server_workers_busy", ()), 0))
            depths = [
                value
                for (metric, labels), value in scraped.items()
                if metric == "worker_queue_depth" and ("task_queue", "work") in labels
            ]
            depth = depths[0] if depths else None  # one series: only the main process samples
            if depth is not None:
                readings.append((time.monotonic(), depth))
                if depth == 0 and lengths[-1][1] == 0 and len(readings) > 2:
                    break
            time.sleep(0.1)

        def all_done() -> dict[Any, float] | None:
            found = scrape(metrics_url(worker_env))
            busy.append(found.get(("server_workers_busy", ()), 0))
            return found if task_count(found, "tasks.slow", "success") == 40 else None

        found = wait_until(all_done)
    # Both pool processes busy most of their last second or two (each one's share, from
    # its busy counter, is at most 1; the gaps between back-to-back tasks, and a loaded
    # machine, keep it under 1).
    assert max(busy) >= 1.5, busy
    assert_depth_follows(readings, lengths)
    labels = (("task_name", "tasks.slow"), ("task_queue", "work"), ("task_system", "celery"))
    assert found[("worker_task_wait_seconds_count", labels)] == 40
    below = (*labels[:2], ("le", "1.0"), labels[2])
    assert found[("worker_task_wait_seconds_bucket", tuple(sorted(below)))] == 0


@pytest.fixture(scope="module")
def rabbit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """One RabbitMQ node for the module: its AMQP URL and management API URL."""
    with rabbitmq(tmp_path_factory.mktemp("rabbitmq")) as urls:
        yield urls


@pytest.fixture(params=["redis", "rabbitmq"])
def any_broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """Each broker Celery users run: a fresh Redis, or the module's RabbitMQ (with the
    URL of its management API, which is not on the default port here)."""
    if request.param == "redis":
        with redis(tmp_path) as url:
            yield url, "off"
    else:
        yield request.getfixturevalue("rabbit")


def gauge(found: Samples, metric: str) -> float | None:
    """The value of ``metric`` for Celery queue ``work``, None when the series is absent."""
    for (name, labels), value in found.items():
        if name == metric and ("task_queue", "work") in labels:
            return value
    return None


def test_oldest_message_age_on_each_broker(
    any_broker: tuple[str, str],
    worker_env: dict[str, str],
    tmp_path: Path,
    registry: CollectorRegistry,
) -> None:
    """While both pool processes run long tasks, tasks wait behind them and the
    oldest-message age grows with the wall clock from their publish (Redis: the list's
    last entry; RabbitMQ: the management API's head timestamp, which the instrumented
    producer sets); depth and age fall to 0 once the backlog drains, no reading fails,
    and every task still succeeds."""
    sightline.init(service="producer", registry=registry, metrics_addr="off", traces=False)
    broker, api = any_broker
    app = producer(broker)
    app.control.purge()
    first = time.time()
    for _ in range(2):
        app.send_task("tasks.slow", args=(10,))
    for i in range(10):
        app.send_task("tasks.add", args=(i, i))
    env = {**worker_env, "BROKER_URL": broker, "SIGHTLINE_RABBITMQ_API": api}
    ages: list[tuple[float, float]] = []
    with celery_worker(env, tmp_path / "worker.log"):
        deadline = time.monotonic() + 40
        while len(ages) < 8 and time.monotonic() < deadline:
            found = scrape(metrics_url(env))
            at = time.time()
            age = gauge(found, "worker_queue_oldest_age_seconds")
            depth = gauge(found, "worker_queue_depth")
            if depth is not None and 0 < depth <= 12 and age is not None:
                ages.append((at, age))
            time.sleep(0.5)
        assert len(ages) >= 8, ages
        # Read at most 0.5 s (the interval) plus sampling time before the scrape; RabbitMQ
        # keeps whole seconds (and its API shows the head only after its next statistics,
        # up to 5 s: until then the age is left out, never a wrong 0).
        slack = 1.0 if broker.startswith("amqp") else 0.0
        for at, age in ages:
            assert at - first - 1.0 - slack <= age <= at - first + slack, (at - first, age)
        assert ages[-1][1] - ages[0][1] >= 3.0

        def drained() -> Samples | None:
            found = scrape(metrics_url(env))
            depth = gauge(found, "worker_queue_depth")
            age = gauge(found, "worker_queue_oldest_age_seconds")
            # Both slow tasks too: one may end well after the other's process has
            # drained the queue.
            done = (
                task_count(found, "tasks.add", "success") == 10
                and task_count(found, "tasks.slow", "success") == 2
                and depth == 0
                and age == 0
            )
            return found if done else None

        found = wait_until(drained, timeout=40)
    assert found, "the backlog did not drain to depth 0 and age 0, every task a success"
    assert total(found, "sightline_queue_read_failures_total") == 0


def test_rabbitmq_without_its_api_still_shows_the_depth(
    rabbit: tuple[str, str], worker_env: dict[str, str], tmp_path: Path
) -> None:
    """With no management API where SIGHTLINE_RABBITMQ_API points, the depth is still read
    over AMQP, the age is left out, each failed reading is counted, and the worker's log
    says why, naming the setting."""
    app = producer(rabbit[0])
    app.control.purge()
    for _ in range(2):
        app.send_task("tasks.slow", args=(6,))
    for i in range(6):
        app.send_task("tasks.add", args=(i, i))
    nowhere = f"http://127.0.0.1:{free_port()}"
    env = {**worker_env, "BROKER_URL": rabbit[0], "SIGHTLINE_RABBITMQ_API": nowhere}
    log = tmp_path / "worker.log"
    with celery_worker(env, log):

        def reading() -> Samples | None:
            found = scrape(metrics_url(env))
            failed = total(found, "sightline_queue_read_failures_total", reading="age")
            return found if gauge(found, "worker_queue_depth") and failed >= 2 else None

        found = wait_until(reading, timeout=30)
        assert found, scrape(metrics_url(env))
        assert gauge(found, "worker_queue_oldest_age_seconds") is None
        assert total(found, "sightline_queue_read_failures_total", reading="depth") == 0
    text = log.read_text()
    assert f"no RabbitMQ management API at {nowhere}" in text, text
    assert "SIGHTLINE_RABBITMQ_API" in text


def test_rabbitmq_api_credentials_come_from_the_url_first(rabbit: tuple[str, str]) -> None:
    """The management API is asked with the credentials in SIGHTLINE_RABBITMQ_API's URL
    when it has some, else the broker's; refused credentials are an error that names the
    tag the user needs and the setting, without the password."""
    from kombu import Connection
    from sightline.integrations._rabbitmq import AgeUnavailable, ManagementApi

    host = rabbit[1].split("//", 1)[1]
    wrong = Connection(rabbit[0].replace("guest:guest", "guest:wrong"))
    right = ManagementApi.for_broker(f"http://guest:guest@{host}", wrong)
    assert right is not None
    assert right.age("no-such-queue", waiting=1) is None  # asked, and not declared
    refused = ManagementApi.for_broker(rabbit[1], wrong)
    assert refused is not None
    with pytest.raises(AgeUnavailable) as caught:
        refused.age("work", waiting=1)
    message = str(caught.value)
    assert "refused the broker's credentials (401)" in message
    assert "`monitoring` tag" in message
    assert "SIGHTLINE_RABBITMQ_API" in message
    assert "wrong" not in message
    assert ManagementApi.for_broker("off", wrong) is None


def test_one_trace_from_request_to_task(
    worker_env: dict[str, str], broker: str, tmp_path: Path, backend: Backend, registry: Any
) -> None:
    """An HTTP request that enqueues a task: the request span, the producer span and the
    worker's span share one trace id, and the task's log line shipped to Loki carries it."""
    flask = pytest.importorskip("flask")
    sightline.init(service="web", registry=registry, metrics_addr="off", otlp_endpoint=backend.url)
    app = producer(broker)
    web = flask.Flask("web")

    @web.route("/orders")
    def order() -> str:
        app.send_task("tasks.add", args=(20, 22))
        return "queued"

    status, _ = call_wsgi(web, "/orders")
    assert status.startswith("200")
    with celery_worker(worker_env, tmp_path / "worker.log"):
        assert backend.wait_for(
            lambda: any(s.name == "process tasks.add" for _, s in backend.spans()), timeout=60
        )
        assert backend.wait_for(
            lambda: any("adding 20 and 22" in e[2] for e in backend.log_entries()), timeout=30
        )
    sightline.shutdown()
    spans = {s.name: s for _, s in backend.spans()}
    request, publish, run = (
        spans["GET /orders"],
        spans["publish tasks.add"],
        spans["process tasks.add"],
    )
    assert request.trace_id == publish.trace_id == run.trace_id
    assert publish.parent_span_id == request.span_id
    assert run.parent_span_id == publish.span_id
    [entry] = [e for e in backend.log_entries() if "adding 20 and 22" in e[2]]
    assert entry[3]["trace_id"] == run.trace_id.hex()
    assert entry[3]["span_id"] == run.span_id.hex()


def test_retries_and_chains_stay_in_the_trace(
    worker_env: dict[str, str], broker: str, tmp_path: Path, backend: Backend, registry: Any
) -> None:
    """A task's retry and the next task of a chain are published from the worker and
    continue the trace of the span that published the first one."""
    sightline.init(service="web", registry=registry, metrics_addr="off", otlp_endpoint=backend.url)
    from opentelemetry import trace

    app = producer(broker)
    with trace.get_tracer("test").start_as_current_span("checkout") as checkout:
        app.send_task("tasks.flaky")
        steps = celery.chain(
            app.signature("tasks.add", args=(1, 1)), app.signature("tasks.add", args=(2,))
        )
        steps.apply_async()
    trace_id = checkout.get_span_context().trace_id.to_bytes(16, "big")

    def runs() -> list[Any]:
        return [s for _, s in backend.spans() if s.name.startswith("process ")]

    with celery_worker(worker_env, tmp_path / "worker.log"):
        assert backend.wait_for(lambda: len(runs()) == 4, timeout=60), [s.name for s in runs()]
    sightline.shutdown()
    assert sorted(s.name for s in runs()) == [
        "process tasks.add",
        "process tasks.add",
        "process tasks.flaky",
        "process tasks.flaky",
    ]
    assert {s.trace_id for s in runs()} == {trace_id}


def test_eager_tasks_run_in_the_callers_trace(registry: CollectorRegistry, backend: Any) -> None:
    """An eager task (.apply()) is timed with its outcome and its span is a child of the
    caller's span."""
    sightline.init(
        service="eager", registry=registry, metrics_addr="off", otlp_endpoint=backend.url
    )
    from opentelemetry import trace

    app = celery.Celery("eager")

    @app.task(name="eager.double")
    def double(x: int) -> int:
        return 2 * x

    with trace.get_tracer("test").start_as_current_span("caller"):
        assert double.apply(args=(4,)).get() == 8
    count = registry.get_sample_value(
        "worker_task_duration_seconds_count",
        {
            "task_system": "celery",
            "task_queue": "celery",
            "task_name": "eager.double",
            "task_outcome": "success",
        },
    )
    assert count == 1
    sightline.shutdown()
    spans = {s.name: s for _, s in backend.spans()}
    assert spans["process eager.double"].parent_span_id == spans["caller"].span_id
    assert spans["process eager.double"].trace_id == spans["caller"].trace_id


def test_failed_publishes_do_not_pile_up(
    registry: CollectorRegistry, backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Publishes that never complete (the broker refused them, so no after_task_publish)
    leave at most MAX_PENDING_PUBLISHES producer spans waiting; older ones are ended."""
    from sightline.integrations import celery as hooks

    monkeypatch.setattr(hooks, "MAX_PENDING_PUBLISHES", 3)
    sightline.init(service="t", registry=registry, metrics_addr="off", otlp_endpoint=backend.url)
    for n in range(5):  # what Celery sends before a publish that then raises
        hooks._before_publish(sender="tasks.add", headers={"id": f"t{n}", "task": "tasks.add"})
    assert list(hooks._publishing) == ["t2", "t3", "t4"]
    sightline.shutdown()
    ended = [s.name for _, s in backend.spans() if s.name == "publish tasks.add"]
    assert len(ended) == 2  # the two oldest, ended when pushed out
