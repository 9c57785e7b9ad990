"""RQ on a real Redis with a real forking `rq worker`: exact job signals, waits, queue
depth and one trace from an HTTP request through Redis into the work horse."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import sightline
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from prometheus_client import CollectorRegistry

from .helpers import assert_depth_follows, call_wsgi, free_port, scrape, total, wait_until
from .receivers import Backend
from .servers import rq_worker

rq = pytest.importorskip("rq")
redis_client = pytest.importorskip("redis")


def queue(url: str) -> Any:
    return rq.Queue("work", connection=redis_client.Redis.from_url(url))


@pytest.fixture
def worker_env(broker: str, backend: Backend, tmp_path: Path) -> dict[str, str]:
    return {
        "SIGHTLINE_SERVICE": "jobs",
        "SIGHTLINE_METRICS_ADDR": f"127.0.0.1:{free_port()}",
        "SIGHTLINE_QUEUE_SAMPLE_INTERVAL": "0.5",
        "OTEL_EXPORTER_OTLP_ENDPOINT": backend.url,
        "SIGHTLINE_LOKI_URL": backend.url,
        "TMPDIR": str(tmp_path),
    }


def metrics_url(env: dict[str, str]) -> str:
    return f"http://{env['SIGHTLINE_METRICS_ADDR']}/metrics"


def test_job_outcomes_are_counted_exactly(
    worker_env: dict[str, str], broker: str, tmp_path: Path
) -> None:
    """Jobs that succeed, fail, and fail once then succeed on RQ's retry are counted per
    (job, outcome) exactly on the worker's endpoint, merged over its work horses."""
    work = queue(broker)
    for i in range(10):
        work.enqueue("tests.apps.rq_jobs.add", i, i)
    for _ in range(3):
        work.enqueue("tests.apps.rq_jobs.fail")
    for n in range(2):
        work.enqueue(
            "tests.apps.rq_jobs.flaky", str(tmp_path / f"flaky-{n}"), retry=rq.Retry(max=1)
        )
    expected = {
        ("tests.apps.rq_jobs.add", "success"): 10,
        ("tests.apps.rq_jobs.fail", "failure"): 3,
        ("tests.apps.rq_jobs.flaky", "retry"): 2,
        ("tests.apps.rq_jobs.flaky", "success"): 2,
    }
    metric = "worker_task_duration_seconds_count"
    with rq_worker(worker_env, broker, tmp_path / "worker.log"):

        def counts() -> dict[tuple[str, str], float]:
            found = scrape(metrics_url(worker_env))
            return {
                key: total(found, metric, task_name=key[0], task_outcome=key[1]) for key in expected
            }

        assert wait_until(lambda: counts() == expected), counts()
        held = "worker_queue_registry_jobs"

        def registries() -> tuple[float, float]:  # sampled every 0.5 s: one period behind
            found = scrape(metrics_url(worker_env))
            started = total(found, held, task_queue="work", registry="started")
            return started, total(found, held, task_queue="work", registry="failed")

        assert wait_until(lambda: registries() == (0, 3)), registries()
        found = scrape(metrics_url(worker_env))
    assert total(found, "worker_capacity", task_system="rq") == 1


def test_waits_and_queue_depth(
    worker_env: dict[str, str], broker: str, tmp_path: Path, registry: CollectorRegistry
) -> None:
    """Jobs enqueued while no worker runs wait at least as long as it was away; the depth
    gauge follows Redis's list to 0."""
    sightline.init(service="producer", registry=registry, metrics_addr="off", traces=False)
    work = queue(broker)
    for _ in range(30):
        work.enqueue("tests.apps.rq_jobs.slow", 0.05)
    published = registry.get_sample_value(
        "worker_tasks_published_total",
        {"task_system": "rq", "task_queue": "work", "task_name": "tests.apps.rq_jobs.slow"},
    )
    assert published == 30
    away = 2.0
    time.sleep(away)
    client = redis_client.Redis.from_url(broker)
    lengths: list[tuple[float, int]] = []
    readings: list[tuple[float, float]] = []
    with rq_worker(worker_env, broker, tmp_path / "worker.log"):
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            lengths.append((time.monotonic(), int(client.llen("rq:queue:work"))))
            found = scrape(metrics_url(worker_env))
            depths = [v for (m, labels), v in found.items() if m == "worker_queue_depth"]
            if depths:
                readings.append((time.monotonic(), depths[0]))
            done = total(found, "worker_task_duration_seconds_count", task_outcome="success")
            if done == 30 and depths == [0.0]:
                break
            time.sleep(0.1)
    assert_depth_follows(readings, lengths)
    assert total(found, "worker_task_wait_seconds_count") == 30
    assert total(found, "worker_task_wait_seconds_bucket", le="1.0") == 0


def test_one_trace_from_request_to_job(
    worker_env: dict[str, str],
    broker: str,
    tmp_path: Path,
    backend: Backend,
    registry: CollectorRegistry,
) -> None:
    """An HTTP request that enqueues a job: the request span, the producer span and the
    work horse's span share one trace id, and the job's log line in Loki carries it."""
    flask = pytest.importorskip("flask")
    sightline.init(service="web", registry=registry, metrics_addr="off", otlp_endpoint=backend.url)
    web = flask.Flask("web")
    work = queue(broker)

    @web.route("/orders")
    def order() -> str:
        work.enqueue("tests.apps.rq_jobs.add", 20, 22)
        return "queued"

    status, _ = call_wsgi(web, "/orders")
    assert status.startswith("200")
    with rq_worker(worker_env, broker, tmp_path / "worker.log"):
        assert backend.wait_for(
            lambda: any("adding 20 and 22" in e[2] for e in backend.log_entries()), timeout=60
        )
        assert backend.wait_for(
            lambda: any(s.name.startswith("process ") for _, s in backend.spans()), timeout=30
        )
    sightline.shutdown()
    spans = {s.name: s for _, s in backend.spans()}
    request = spans["GET /orders"]
    publish = spans["publish tests.apps.rq_jobs.add"]
    run = spans["process tests.apps.rq_jobs.add"]
    assert request.trace_id == publish.trace_id == run.trace_id
    assert publish.parent_span_id == request.span_id
    assert run.parent_span_id == publish.span_id
    [entry] = [e for e in backend.log_entries() if "adding 20 and 22" in e[2]]
    assert entry[3]["trace_id"] == run.trace_id.hex()


def test_simple_worker_in_process(broker: str, registry: CollectorRegistry) -> None:
    """RQ's SimpleWorker (no fork, and in RQ 2+ not a Worker subclass) records its jobs."""
    sightline.init(service="t", registry=registry, metrics_addr="off", traces=False)
    work = queue(broker)
    for i in range(3):
        work.enqueue("tests.apps.rq_jobs.add", i, i)
    work.enqueue("tests.apps.rq_jobs.fail")
    rq.SimpleWorker([work], connection=work.connection).work(burst=True)
    labels = {"task_system": "rq", "task_queue": "work"}
    count = "worker_task_duration_seconds_count"
    add, fail = "tests.apps.rq_jobs.add", "tests.apps.rq_jobs.fail"
    assert (
        registry.get_sample_value(count, {**labels, "task_name": add, "task_outcome": "success"})
        == 3
    )
    assert (
        registry.get_sample_value(count, {**labels, "task_name": fail, "task_outcome": "failure"})
        == 1
    )
    assert registry.get_sample_value("worker_capacity", {"task_system": "rq"}) == 1


def test_an_idle_worker_reports_its_busy_task_slots_as_zero_from_the_start(
    broker: str, registry: CollectorRegistry
) -> None:
    """A worker that has run no job yet reports worker_tasks_active 0, not nothing, so the
    5-minute mean of busy task slots (the queue hint's load) counts its idle start."""
    sightline.init(service="t", registry=registry, metrics_addr="off", traces=False)
    work = queue(broker)
    assert registry.get_sample_value("worker_tasks_active", {"task_system": "rq"}) is None
    rq.SimpleWorker([work], connection=work.connection).work(burst=True)  # nothing queued
    assert registry.get_sample_value("worker_tasks_active", {"task_system": "rq"}) == 0


def test_a_jobs_trace_shows_its_own_redis_calls_and_not_rqs(
    broker: str, backend: Backend, registry: CollectorRegistry
) -> None:
    """With traces on, a job that reads Redis has one CLIENT span, its GET, under its
    CONSUMER span. The commands RQ sends itself, enqueueing the job and keeping its state
    around it, make no span (the PRODUCER and CONSUMER spans stand for them), yet every
    one of them is measured."""
    sightline.init(service="t", registry=registry, metrics_addr="off", otlp_endpoint=backend.url)
    work = queue(broker)
    work.connection.set("sku:1", "lamp")
    job = work.enqueue("tests.apps.rq_jobs.lookup", "sku:1")
    rq.SimpleWorker([work], connection=work.connection).work(burst=True)
    assert job.return_value() == "lamp"
    commands = sum(
        sample.value
        for metric in registry.collect()
        for sample in metric.samples
        if sample.name == "db_client_operation_duration_seconds_count"
        and sample.labels["db_system_name"] == "redis"
    )
    sightline.shutdown()
    spans = [s for _, s in backend.spans()]
    [publish] = [s for s in spans if s.kind == Span.SPAN_KIND_PRODUCER]
    [run] = [s for s in spans if s.kind == Span.SPAN_KIND_CONSUMER]
    assert run.parent_span_id == publish.span_id
    clients = [(s.name, s.parent_span_id) for s in spans if s.kind == Span.SPAN_KIND_CLIENT]
    assert clients == [("GET", run.span_id)]
    # The SET, the job's GET, and RQ's own: enqueueing and running a job take several.
    assert commands > 5, commands
