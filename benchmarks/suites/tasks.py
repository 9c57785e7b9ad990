"""Per task published and run: the ``celery`` and ``rq`` suites."""

from __future__ import annotations

import gc
import io
import logging
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from prometheus_client import CollectorRegistry

from suites.common import (
    LOG_MESSAGE,
    LOG_UID,
    Suite,
    check_exported,
    check_log_line,
    jsonlogger_handler,
    on_root,
    otel_sdk,
    plain_log_handler,
    samples,
    sightline_full,
    versus,
)


class TaskVariant(NamedTuple):
    """What a task setup built: a task system driven in batches, and how the worker checks it."""

    #: Publishes ``n`` tasks: Celery's ``apply_async`` to the broker, RQ's ``enqueue``.
    publish: Callable[[int], None]
    #: Messages waiting after a publish; empties the queue where ``execute`` does not.
    drain: Callable[[], int]
    #: Runs ``n`` tasks as a worker does; returns a function that reads the last one's result
    #: (called after timing: RQ reads it back from Redis).
    execute: Callable[[int], Callable[[], Any]]
    #: The handler the task's log line goes through; one line is captured and checked.
    log: logging.StreamHandler[Any]
    #: Tasks the variant's metrics counted as (published, run), read after the timed tasks.
    recorded: Callable[[], tuple[float, float]] | None = None
    #: Flushes the spans after the timed tasks; returns how many the sink received.
    exported: Callable[[], int] | None = None
    #: Spans a task exports: publishing it (PRODUCER) and running it (CONSUMER).
    spans_per_task: int = 2


TaskSetup = Callable[[], TaskVariant]


#: Tasks published before they are run, at most, so the broker never holds many.
TASK_CHUNK = 250


def task_counts(registry: CollectorRegistry) -> Callable[[], tuple[float, float]]:
    published = samples(registry, "worker_tasks_published_total")
    run = samples(registry, "worker_task_duration_seconds_count")
    return lambda: (published(), run())


def quiet_worker_logs(*names: str) -> None:
    """Keep the library's own INFO lines per task out, so each task logs exactly its line."""
    for name in names:
        logging.getLogger(name).setLevel(logging.WARNING)


def hello_celery(
    handler: logging.StreamHandler[Any],
    recorded: Callable[[], tuple[float, float]] | None = None,
    exported: Callable[[], int] | None = None,
) -> TaskVariant:
    """A Celery app on the in-memory broker with one task, ``bench.user``, that logs its line.

    Publishing sends the message to the broker (``apply_async``); ``drain`` purges the
    queue between chunks. Running a task is ``task.apply()``: Celery's tracer, as a worker
    runs it, with the task's signals, in this process (the published messages are not run).
    """
    from celery import Celery

    quiet_worker_logs("celery")  # the tracer logs "Task ... succeeded" at INFO
    # A host in the URL: without one, kombu warns that it falls back to localhost.
    app = Celery("bench", broker="memory://localhost/", set_as_current=True)
    log = logging.getLogger("bench")

    @app.task(name="bench.user")
    def user(uid: int) -> str:
        log.info(LOG_MESSAGE, extra={"uid": uid})
        return f"hello {uid}"

    channel = app.connection_for_write().default_channel
    queue = app.conf.task_default_queue

    def publish(n: int) -> None:
        for _ in range(n):
            user.apply_async((LOG_UID,))

    def drain() -> int:
        waiting: int = channel.queue_purge(queue) or 0
        return waiting

    def execute(n: int) -> Callable[[], Any]:
        result: Any = None
        for _ in range(n):
            result = user.apply((LOG_UID,))
        return lambda: result.get() if result.state == "SUCCESS" else result.state

    return TaskVariant(publish, drain, execute, handler, recorded, exported)


def setup_celery_bare() -> TaskVariant:
    return hello_celery(plain_log_handler())


#: The signals OpenTelemetry's Celery instrumentation connects to (Sightline connects to
#: the same four a task that succeeds sends, and to more that it does not send).
INCUMBENT_SIGNALS = (
    "before_task_publish",
    "after_task_publish",
    "task_prerun",
    "task_postrun",
    "task_failure",
    "task_retry",
)


def setup_celery_signals() -> TaskVariant:
    """``celery_bare`` with a receiver on each signal the incumbent hooks, doing no more
    than count the tasks published and run (the variant's ``recorded``, so the worker
    checks that they ran): the floor of any instrumentation built on Celery's signals.

    Celery calls ``send`` for the publish signals on every publish, but with no receiver
    connected it returns at once; the worker's tracer skips ``task_prerun`` and
    ``task_postrun`` altogether then. The baseline pays for neither.
    """
    from celery import signals

    counted = {"before_task_publish": 0, "task_postrun": 0}

    def receiver(signal: Any = None, sender: Any = None, **extra: Any) -> None:
        name = signal.name if signal is not None else ""
        if name in counted:
            counted[name] += 1

    for name in INCUMBENT_SIGNALS:
        getattr(signals, name).connect(receiver, weak=False)

    def recorded() -> tuple[float, float]:
        return counted["before_task_publish"], counted["task_postrun"]

    return hello_celery(plain_log_handler(), recorded)


def setup_celery_incumbent() -> TaskVariant:
    from opentelemetry.instrumentation.celery import CeleryInstrumentor

    provider, exported = otel_sdk()
    # Celery's six task signals; its task-runtime histogram goes to the API's no-op meter
    # (no meter provider is configured, as in the other incumbent setups).
    CeleryInstrumentor().instrument(tracer_provider=provider)  # type: ignore[no-untyped-call]
    return hello_celery(on_root(jsonlogger_handler()), exported=exported)


def setup_celery_sightline() -> TaskVariant:
    registry = CollectorRegistry()
    _, handler, exported = sightline_full(registry=registry)
    # Celery is imported after init(): Sightline connects its signals on that import.
    return hello_celery(handler, task_counts(registry), exported)


def rq_user(uid: int) -> str:
    """The RQ job; RQ imports it by name, as a worker imports job code."""
    logging.getLogger("bench").info(LOG_MESSAGE, extra={"uid": uid})
    return f"hello {uid}"


#: The most ``rq_sightline`` may add per job, in µs (docs/performance.md, "RQ").
RQ_BOUND_US = 600.0


#: The job's import path: this module's, which a worker process imports as RQ would
#: (``overhead.py``'s directory is on ``sys.path``).
RQ_JOB = f"{__name__}.{rq_user.__name__}"


def hello_rq(
    handler: logging.StreamHandler[Any],
    recorded: Callable[[], tuple[float, float]] | None = None,
    exported: Callable[[], int] | None = None,
) -> TaskVariant:
    """An RQ queue and worker on an in-process Redis (fakeredis): no server, no sockets.

    Publishing is ``queue.enqueue()``. Running jobs is the work loop of RQ's ``SimpleWorker``,
    one job after another in this process, on RQ's default ``Worker`` class: dequeue,
    ``prepare_execution`` (what the worker's main process does before it forks), then
    ``perform_job`` (what the work horse runs after the fork) and the heartbeat. Not a
    ``SimpleWorker`` itself: Sightline patches ``Worker``, and in RQ 3.0 ``SimpleWorker``
    derives from ``BaseWorker``, not from ``Worker``.
    """
    import fakeredis
    from rq import Queue, Worker
    from rq.worker import WorkerStatus

    # RQ's worker logs four INFO lines per job, on a logger whose level it sets itself.
    quiet_worker_logs("rq", "rq.worker")
    connection = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    queue = Queue("bench", connection=connection)
    worker = Worker([queue], connection=connection)

    def publish(n: int) -> None:
        for _ in range(n):
            queue.enqueue(RQ_JOB, LOG_UID)

    def execute(n: int) -> Callable[[], Any]:
        job: Any = None
        for _ in range(n):
            dequeued = worker.dequeue_job_and_maintain_ttl(None)  # burst mode: no blocking
            if dequeued is None:
                raise SystemExit("rq: the queue is empty")
            job, from_queue = dequeued
            worker.perform_job(job, from_queue, worker.prepare_execution(job))
            worker.set_state(WorkerStatus.IDLE)
            worker.heartbeat()
        return lambda: job.return_value() if job.get_status() == "finished" else job.get_status()

    return TaskVariant(publish, lambda: queue.count, execute, handler, recorded, exported)


def setup_rq_bare() -> TaskVariant:
    return hello_rq(plain_log_handler())


def setup_rq_sightline() -> TaskVariant:
    registry = CollectorRegistry()
    _, handler, exported = sightline_full(registry=registry)
    return hello_rq(handler, task_counts(registry), exported)


VARIANTS: dict[str, TaskSetup] = {
    "celery_bare": setup_celery_bare,
    "celery_signals": setup_celery_signals,
    "celery_incumbent": setup_celery_incumbent,
    "celery_sightline": setup_celery_sightline,
    "rq_bare": setup_rq_bare,
    "rq_sightline": setup_rq_sightline,
}


def worker(name: str, tasks: int, warmup: int) -> dict[str, Any]:
    """µs per task published and run, and for each of the two, in chunks of :data:`TASK_CHUNK`.

    The per-task total is reported under the key the other suites use, ``us_per_request``.
    """
    variant = VARIANTS[name]()

    def batch(n: int) -> tuple[int, int, Any]:
        """Publish and run ``n`` tasks; ns publishing, ns running, the last result."""
        publishing = running = 0
        result: Callable[[], Any] | None = None
        for done in range(0, n, TASK_CHUNK):
            size = min(TASK_CHUNK, n - done)
            start = time.perf_counter_ns()
            variant.publish(size)
            published = time.perf_counter_ns()
            waiting = variant.drain()
            if waiting != size:
                raise SystemExit(f"{name}: {waiting} messages waiting after publishing {size}")
            started = time.perf_counter_ns()
            result = variant.execute(size)
            running += time.perf_counter_ns() - started
            publishing += published - start
        return publishing, running, None if result is None else result()

    stream = variant.log.setStream(io.StringIO())
    _, _, result = batch(1)
    captured = variant.log.setStream(stream)
    assert isinstance(captured, io.StringIO)
    check_log_line(name, variant.log, captured.getvalue())
    batch(warmup)
    gc.collect()
    publishing, running, last = batch(tasks)
    total = 1 + warmup + tasks
    counted = variant.recorded() if variant.recorded is not None else (total, total)
    if result != last or last != f"hello {LOG_UID}" or counted != (total, total):
        raise SystemExit(f"{name}: got {result!r} then {last!r}, {counted} counted for {total}")
    out: dict[str, Any] = {
        "us_per_request": (publishing + running) / tasks / 1000,
        "phases": {"publish": publishing / tasks / 1000, "execute": running / tasks / 1000},
    }
    if variant.exported is not None:
        per_task = variant.spans_per_task
        out["spans"] = spans = variant.exported()
        out["spans_share"] = spans / (total * per_task)
        check_exported(name, spans, total, 1.0, per_task)
    return out


SUITES: dict[str, Suite] = {
    "celery": versus(
        "celery",
        "Celery: a task published to the in-memory broker and run, with a JSON log line",
        floor="signals",
        rounds=8,
        requests=3000,
        warmup=1000,
        libraries=(
            "celery",
            "kombu",
            "opentelemetry-sdk",
            "opentelemetry-instrumentation-celery",
            "opentelemetry-exporter-otlp-proto-http",
            "python-json-logger",
        ),
        unit="task",
        request="each published, then run with apply()",
    ),
    "rq": Suite(
        title="RQ: a job enqueued on an in-process Redis (fakeredis) and run, with a JSON log line",
        variants=("rq_bare", "rq_sightline"),
        baseline="rq_bare",
        references={"rq_sightline": "rq_bare"},
        targets={},
        rounds=8,
        requests=1000,
        warmup=300,
        libraries=("rq", "redis", "fakeredis"),
        unit="job",
        request="each enqueued, then run by the worker's loop",
        bounds_us={"rq_sightline": RQ_BOUND_US},
    ),
}
