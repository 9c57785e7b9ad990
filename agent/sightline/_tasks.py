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
from typing import TYPE_CHECKING, Any, TypeVar

from opentelemetry import context, propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode

from . import _safety, _state

if TYPE_CHECKING:
    from ._agent import Agent

F = TypeVar("F", bound=Callable[..., Any])


class Run:
    """One run of a background task, whatever runs it (Celery, RQ, ``sightline.task``):
    the wait, the task counted as running, and a CONSUMER span made current; ``finish``
    records the duration by outcome and restores the context, once."""

    __slots__ = ("active", "agent", "key", "span", "started", "token")

    def __init__(
        self,
        agent: Agent,
        key: tuple[str, str, str],
        parent: Context | None = None,
        message_id: str | None = None,
        waited: float | None = None,
    ) -> None:
        system, queue, name = key
        self.agent: Agent | None = agent
        self.key = key
        self.span: Any = None
        self.token: object = None
        if waited is not None and waited >= 0:
            agent.metrics.task_wait.child(key).observe(waited)
        self.active = agent.metrics.active_tasks(system)
        if agent.tracing is not None:
            attributes = {
                "messaging.system": system,
                "messaging.operation.type": "process",
                "messaging.destination.name": queue,
            }
            if message_id:
                attributes["messaging.message.id"] = message_id
            self.span = agent.tracing.start_span(
                f"process {name}", SpanKind.CONSUMER, parent, attributes
            )
            self.token = context.attach(trace.set_span_in_context(self.span, parent))
        self.started = time.perf_counter()
        self.active[id(self)] = self.started  # running from now: in the gauge and busy time

    def abandon(self) -> None:
        """Stop counting this run as running, recording nothing: another run took its
        place (a task delivered again while this run's end was never seen)."""
        agent, self.agent = self.agent, None
        if agent is not None:
            agent.metrics.tasks_active.finish(self.key[0], id(self), None)

    def fail(self, error: BaseException) -> None:
        """Put the exception that ended the run on its span."""
        if self.span is not None:
            self.span.record_exception(error)
            self.span.set_attribute("error.type", type(error).__qualname__)

    def finish(self, outcome: str) -> None:
        agent, self.agent = self.agent, None
        if agent is None:
            return
        now = time.perf_counter()
        elapsed = now - self.started
        snapshots = agent.metrics.snapshots
        if snapshots is not None and now >= snapshots.late_at:
            snapshots.park()  # while the task still counts as in flight
        agent.metrics.tasks_active.finish(self.key[0], id(self), elapsed)
        agent.metrics.task_duration.child((*self.key, outcome)).observe(elapsed)
        if self.span is not None:
            self.span.set_attribute("task.outcome", outcome)
            if outcome == "failure":
                self.span.set_status(Status(StatusCode.ERROR))
            self.span.end()
        if self.token is not None:
            context.detach(self.token)  # type: ignore[arg-type]


def publish_span(agent: Agent, key: tuple[str, str, str], message_id: str) -> Any:
    """The PRODUCER span of publishing a task (None without tracing); the caller injects
    its context into the message and ends it once the message is sent."""
    if agent.tracing is None:
        return None
    system, queue, name = key
    attributes = {
        "messaging.system": system,
        "messaging.operation.type": "send",
        "messaging.destination.name": queue,
        "messaging.message.id": message_id,
    }
    return agent.tracing.start_span(f"publish {name}", SpanKind.PRODUCER, None, attributes)


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
        runs: list[Run | None] = self._local.__dict__.setdefault("runs", [])
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

    def _start(self) -> Run | None:
        agent = _state.current
        if agent is None:
            return None
        with _safety.internal_errors("task.start"):
            parent = propagate.extract(dict(self.headers)) if self.headers else None
            waited = time.time() - self.enqueued_at if self.enqueued_at is not None else None
            return Run(agent, (self.system, self.queue, self.name), parent, waited=waited)
        return None

    def _finish(self, run: Run | None, error: BaseException | None) -> None:
        if run is None:
            return
        with _safety.internal_errors("task.finish"):
            if error is not None:
                run.fail(error)
            run.finish("failure" if error is not None else "success")
