"""RQ: golden signals of every job, queue saturation, and traces across Redis.

RQ has no signals, so four methods are patched on their classes (and put back by
``uninstall``):

- ``Queue.enqueue_job``: a PRODUCER span, its ``traceparent`` kept in ``job.meta``
  (saved with the job), and ``worker_tasks_published_total``.
- ``Worker.work`` (the worker's main process): ``worker_capacity`` (an RQ worker runs
  one job at a time); with a forking worker the process becomes a multi-process server,
  so what each work horse counted is merged on its metrics endpoint; every queue's depth,
  the age of its oldest job and its started and failed registries are sampled off the
  job path.
- ``Worker.perform_job`` (in the work horse): a CONSUMER span continuing the producer's
  trace and made current, ``worker_task_wait_seconds`` from the job's ``enqueued_at``,
  ``worker_tasks_active`` and ``worker_task_duration_seconds`` by outcome (``success``,
  ``failure``, ``retry`` when RQ schedules it again). A work horse ends with
  ``os._exit``, which runs no ``atexit`` handler, so the horse flushes its spans, logs
  and last metrics snapshot itself, within :data:`HORSE_FLUSH_SECONDS`.
- ``Job.perform``: an exception the job raises is put on the span (RQ catches it).

The Redis commands RQ sends itself, enqueueing a job and keeping its state around it,
are measured (``db_client_operation_duration_seconds``) but make no CLIENT spans: the
PRODUCER and CONSUMER spans stand for them, and a job's trace shows the job's own calls.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from opentelemetry import propagate, trace

from .. import _db, _safety, _state
from .._multiprocess import Server
from .._tasks import Run, publish_span
from ._base import DidNotEnable, Integration, Patch

try:
    from rq.job import Job, JobStatus
    from rq.queue import Queue
    from rq.worker import SimpleWorker, Worker
except ImportError:
    raise DidNotEnable("rq is not installed") from None

# rq 2.x and later define the worker loop on BaseWorker, which Worker and SimpleWorker
# both extend (SimpleWorker no longer extends Worker): patch where it is defined.
import rq.worker

_WorkerBase: Any = getattr(rq.worker, "BaseWorker", Worker)

if TYPE_CHECKING:
    from .._agent import Agent

SYSTEM = "rq"
#: The key in ``job.meta`` holding the producer's trace context.
META = "sightline"
#: The most a work horse spends, after its job, handing over spans, logs and metrics.
HORSE_FLUSH_SECONDS = 1.0


def _enqueue_job(original: Any) -> Any:
    def enqueue_job(self: Queue, job: Job, *args: Any, **kwargs: Any) -> Job:
        agent = _state.current
        span: Any = None
        if agent is not None:
            with _safety.internal_errors("rq.enqueue"):
                span = publish_span(agent, (SYSTEM, self.name, str(job.func_name)), job.id)
                if span is not None and agent.tracing is not None:
                    carrier: dict[str, str] = {}
                    agent.tracing.inject(carrier, span)
                    job.meta[META] = carrier
        quiet = _db.untraced.set(True)  # the producer span stands for RQ's commands
        try:
            return original(self, job, *args, **kwargs)  # type: ignore[no-any-return]
        finally:
            _db.untraced.reset(quiet)
            if agent is not None:
                with _safety.internal_errors("rq.enqueued"):
                    name = str(job.func_name)
                    agent.metrics.published(SYSTEM, self.name, name)
                    if span is not None:
                        span.end()

    return enqueue_job


def _perform_job(original: Any) -> Any:
    def perform_job(self: Any, job: Job, queue: Queue, *args: Any, **kwargs: Any) -> bool:
        agent = _state.current
        if agent is None:
            return original(self, job, queue, *args, **kwargs)  # type: ignore[no-any-return]
        run: Run | None = None
        with _safety.internal_errors("rq.start"):
            waited: float | None = None
            enqueued = job.enqueued_at
            if isinstance(enqueued, datetime):
                if enqueued.tzinfo is None:
                    enqueued = enqueued.replace(tzinfo=timezone.utc)
                waited = (datetime.now(timezone.utc) - enqueued).total_seconds()
            carrier = job.meta.get(META) if isinstance(job.meta, dict) else None
            parent = propagate.extract(carrier) if isinstance(carrier, dict) else None
            run = Run(agent, (SYSTEM, queue.name, str(job.func_name)), parent, job.id, waited)
        succeeded = False
        quiet = _db.untraced.set(True)  # RQ's own commands around the job; the job's are traced
        try:
            succeeded = bool(original(self, job, queue, *args, **kwargs))
            return succeeded
        finally:
            _db.untraced.reset(quiet)
            if run is not None:
                with _safety.internal_errors("rq.finish"):
                    run.finish("success" if succeeded else _failed_outcome(job))
            if getattr(self, "_is_horse", False):
                # The horse leaves through os._exit: hand everything over now.
                with _safety.internal_errors("rq.exit"):
                    _state.stop(HORSE_FLUSH_SECONDS)

    return perform_job


def _failed_outcome(job: Job) -> str:
    status = job.get_status(refresh=False)
    if status in (JobStatus.SCHEDULED, JobStatus.QUEUED):
        return "retry"  # RQ's Retry put it back
    return "failure"


def _job_perform(original: Any) -> Any:
    def perform(self: Job) -> Any:
        traced = _db.untraced.set(False)  # the job's own calls
        try:
            return original(self)
        except BaseException as error:
            with _safety.internal_errors("rq.exception"):
                span = trace.get_current_span()
                if span.is_recording():
                    span.record_exception(error)
                    span.set_attribute("error.type", type(error).__qualname__)
            raise
        finally:
            _db.untraced.reset(traced)

    return perform


def _work(original: Any) -> Any:
    def work(self: Any, *args: Any, **kwargs: Any) -> bool:
        agent = _state.current
        if agent is not None:
            with _safety.internal_errors("rq.work"):
                _start_worker(agent, self)
        return original(self, *args, **kwargs)  # type: ignore[no-any-return]

    return work


def _start_worker(agent: Agent, worker: Any) -> None:
    agent.metrics.worker_capacity.labels(SYSTEM).set(1)
    # 0 from the start, not absent until the first job, so its mean over a window counts
    # the idle time before it. (Work horses count the jobs they run in their own series.)
    agent.metrics.active_tasks(SYSTEM)
    if not isinstance(worker, SimpleWorker):  # jobs run in forked work horses
        agent.join_server(Server(SYSTEM, os.getpid(), workers=1, worker=False))
    for queue in worker.queues:
        _track(agent, queue)


def _track(agent: Agent, queue: Queue) -> None:
    def depth() -> float:
        return float(queue.count)

    def started() -> float:
        return float(queue.started_job_registry.count)

    def failed() -> float:
        return float(queue.failed_job_registry.count)

    agent.queue_depths.track(
        SYSTEM,
        queue.name,
        depth,
        lambda: _oldest_age(queue),
        {"started": started, "failed": failed},
    )


def _oldest_age(queue: Queue) -> float | None:
    """Seconds since the job at the head of the queue was enqueued (RQ pops from the left)."""
    connection = queue.connection
    job_id = connection.lindex(queue.key, 0)
    if job_id is None:
        return 0.0
    if isinstance(job_id, bytes):
        job_id = job_id.decode()
    raw = connection.hget(Job.redis_job_namespace_prefix + job_id, "enqueued_at")
    if raw is None:
        return None
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    enqueued = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if enqueued.tzinfo is None:
        enqueued = enqueued.replace(tzinfo=timezone.utc)
    return max(0.0, (datetime.now(timezone.utc) - enqueued).total_seconds())


class RQIntegration(Integration):
    name = "rq"
    library = "rq"
    minimum_version = "1.15"
    patches = (
        Patch(Queue, "enqueue_job", _enqueue_job),
        Patch(_WorkerBase, "perform_job", _perform_job),
        Patch(_WorkerBase, "work", _work),
        Patch(Job, "perform", _job_perform),
    )


INTEGRATION = RQIntegration
