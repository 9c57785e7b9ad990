"""Background work Sightline has no integration for: ``sightline.task`` and ``track_queue``.

A custom job loop (a Kafka consumer, a cron runner, a thread pool draining a list) gets
the same signals as Celery and RQ tasks, with ``task_system="custom"`` unless told
otherwise: duration by outcome, wait time when the loop knows when the job was
published, jobs running, a CONSUMER span continuing a trace carried in the job's
headers, and the depth of any queue through a function the app provides.
"""

from __future__ import annotations

import functools
import inspect
import threading
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, TypeVar

from opentelemetry import context, propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from . import _agent, _safety

F = TypeVar("F", bound=Callable[..., Any])

#: Queues the app asked to track (system, name) -> (depth, age): kept across init().
tracked: dict[tuple[str, str], tuple[Callable[[], float], Callable[[], float | None] | None]] = {}


class TaskTimer:
    """``sightline.task(...)``: a decorator, or a context manager for one run."""

    def __init__(
        self,
        name: str,
        queue: str,
        system: str,
        enqueued_at: float | None,
        headers: Mapping[str, str] | None,
    ) -> None:
        self.name = name
        self.queue = queue
        self.system = system
        self.enqueued_at = enqueued_at
        self.headers = headers
        self._local = threading.local()  # runs in progress, per thread

    def __call__(self, func: F) -> F:
        def fresh() -> TaskTimer:
            return TaskTimer(self.name, self.queue, self.system, None, None)

        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                with fresh():
                    return await func(*args, **kwargs)

            return run_async  # type: ignore[return-value]

        @functools.wraps(func)
        def run(*args: Any, **kwargs: Any) -> Any:
            with fresh():
                return func(*args, **kwargs)

        return run  # type: ignore[return-value]

    def __enter__(self) -> TaskTimer:
        runs = self._local.__dict__.setdefault("runs", [])
        runs.append(self._start())
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        runs = self._local.__dict__.get("runs")
        if runs:
            self._finish(runs.pop(), error)

    def _start(self) -> tuple[Any, float, Any, object]:
        agent = _agent.current
        if agent is None:
            return None, 0.0, None, None
        span: Any = None
        token: object = None
        with _safety.internal_errors("task.start"):
            key = (self.system, self.queue, self.name)
            if self.enqueued_at is not None:
                waited = time.time() - self.enqueued_at
                if waited >= 0:
                    agent.metrics.task_wait.child(key).observe(waited)
            agent.metrics.tasks_active.labels(self.system).inc()
            if agent.tracing is not None:
                parent = propagate.extract(dict(self.headers)) if self.headers else None
                span = agent.tracing.tracer.start_span(
                    f"process {self.name}",
                    context=parent,
                    kind=SpanKind.CONSUMER,
                    attributes={
                        "messaging.system": self.system,
                        "messaging.operation.type": "process",
                        "messaging.destination.name": self.queue,
                    },
                )
                token = context.attach(trace.set_span_in_context(span, parent))
        return agent, time.perf_counter(), span, token

    def _finish(self, run: tuple[Any, float, Any, object], error: BaseException | None) -> None:
        agent, started, span, token = run
        if agent is None:
            return
        with _safety.internal_errors("task.finish"):
            outcome = "failure" if error is not None else "success"
            elapsed = time.perf_counter() - started
            key = (self.system, self.queue, self.name, outcome)
            agent.metrics.task_duration.child(key).observe(elapsed)
            agent.metrics.tasks_active.labels(self.system).dec()
            if span is not None:
                if error is not None:
                    span.record_exception(error)
                    span.set_attribute("error.type", type(error).__qualname__)
                    span.set_status(Status(StatusCode.ERROR))
                span.end()
            if token is not None:
                context.detach(token)  # type: ignore[arg-type]


def track(agent: _agent.Agent | None, system: str, name: str) -> None:
    depth, age = tracked[(system, name)]
    if agent is not None:
        agent.queue_depths.track(system, name, depth, age)


def install_tracked(agent: _agent.Agent) -> None:
    for system, name in list(tracked):
        track(agent, system, name)
