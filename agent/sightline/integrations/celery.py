"""Celery: golden signals of every task, queue saturation, and traces across the broker.

Everything goes through Celery's own signals, connected once and disconnected by
``uninstall`` (nine hooks, producer and worker side):

- ``before_task_publish``: a PRODUCER span, its ``traceparent`` written into the
  message headers, and the publish time stamped there too
  (``sightline_published_at``); ``after_task_publish`` ends the span and counts
  ``worker_tasks_published_total``.
- ``task_prerun`` / ``task_postrun``: a CONSUMER span continuing the producer's trace
  and made current (so the task's log lines carry its ids), ``worker_task_wait_seconds``
  (start time minus the stamp; left out for messages from uninstrumented producers),
  ``worker_tasks_active`` and ``worker_task_duration_seconds`` by outcome (``success``,
  ``failure``, ``retry``, ``revoked``, ``rejected``). ``task_failure`` puts the exception
  on the span; ``task_revoked`` counts a task revoked before it ran.
- ``worker_init`` (in the worker's main process): ``worker_capacity`` is the worker's
  concurrency (``worker_process_init`` keeps pool processes from repeating it). With the
  prefork pool the worker becomes a multi-process server, so the pool processes' numbers
  are merged on the main process's metrics endpoint. The depth of every queue the worker
  consumes is sampled off the task path, and the age of its oldest message: on Redis
  from the list, on RabbitMQ from the management API (``SIGHTLINE_RABBITMQ_API``; the
  publish hook sets the AMQP ``timestamp`` property it reports).

Eager tasks (``task_always_eager`` or ``.apply()``) run the same hooks, in the caller's
trace. The worker replaces the root logger's handlers with its own unless
``worker_hijack_root_logger`` is off; ``after_setup_logger`` puts the Loki handler back
(Celery's handler then prints the lines; the JSON stdout handler is Sightline's only
when the root logger has no other).
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter

from .. import _safety, _state
from .._multiprocess import Server
from .._tasks import Run, publish_span
from ._base import DidNotEnable, Integration
from ._rabbitmq import ManagementApi

try:
    from celery import signals
except ImportError:
    raise DidNotEnable("celery is not installed") from None

if TYPE_CHECKING:
    from .._agent import Agent

logger = logging.getLogger("sightline")

SYSTEM = "celery"
#: Producer spans waiting for after_task_publish, at most.
MAX_PENDING_PUBLISHES = 1000
#: The message header carrying the publish time (seconds since the epoch).
PUBLISHED = "sightline_published_at"
_OUTCOMES = {
    "SUCCESS": "success",
    "FAILURE": "failure",
    "RETRY": "retry",
    "REVOKED": "revoked",
    "REJECTED": "rejected",
    "IGNORED": "success",
}


class _RequestGetter(Getter[Any]):
    """Reads propagation headers from a task's request (Celery makes headers attributes)."""

    def get(self, carrier: Any, key: str) -> list[str] | None:
        value = getattr(carrier, key, None)
        if value is None and isinstance(getattr(carrier, "headers", None), dict):
            value = carrier.headers.get(key)
        return [value] if isinstance(value, str) else None

    def keys(self, carrier: Any) -> list[str]:
        return []


_getter = _RequestGetter()
# Spans being published (by task id) and tasks running in this process (by task id).
_publishing: dict[str, Any] = {}
_running: dict[str, Run] = {}


def _queue_of(request: Any, task: Any) -> str:
    info = getattr(request, "delivery_info", None) or {}
    queue = info.get("routing_key") or getattr(task, "queue", None)
    if not queue:
        app = getattr(task, "app", None)
        queue = getattr(getattr(app, "conf", None), "task_default_queue", None) or "celery"
    return str(queue)


def _before_publish(
    sender: Any = None,
    body: Any = None,
    headers: dict[str, Any] | None = None,
    routing_key: str | None = None,
    properties: dict[str, Any] | None = None,
    **extra: Any,
) -> None:
    agent = _state.current
    if agent is None or headers is None:
        return
    with _safety.internal_errors("celery.publish"):
        now = time.time()
        headers[PUBLISHED] = now
        if properties is not None and "timestamp" not in properties:
            # AMQP's own timestamp: RabbitMQ reports the head message's to its API.
            properties["timestamp"] = int(now)  # whole seconds since the epoch
        if agent.tracing is None:
            return
        name = str(headers.get("task") or sender)
        span = publish_span(agent, (SYSTEM, routing_key or "", name), str(headers.get("id", "")))
        agent.tracing.inject(headers, span)
        task_id = headers.get("id")
        if task_id is None:
            span.end()
            return
        if len(_publishing) >= MAX_PENDING_PUBLISHES:
            # Publishes that raised never reach after_task_publish: end the oldest span
            # rather than keep it (and its task id) forever while a broker is down.
            _publishing.pop(next(iter(_publishing))).end()
        _publishing[str(task_id)] = span


def _after_publish(
    sender: Any = None,
    headers: dict[str, Any] | None = None,
    routing_key: str | None = None,
    **extra: Any,
) -> None:
    agent = _state.current
    if agent is None:
        return
    with _safety.internal_errors("celery.published"):
        headers = headers or {}
        name = str(headers.get("task") or sender)
        agent.metrics.published(SYSTEM, routing_key or "", name)
        span = _publishing.pop(str(headers.get("id")), None)
        if span is not None:
            span.end()


def _prerun(sender: Any = None, task_id: str | None = None, task: Any = None, **extra: Any) -> None:
    agent = _state.current
    if agent is None or task is None or task_id is None:
        return
    with _safety.internal_errors("celery.prerun"):
        request = task.request
        queue, name = _queue_of(request, task), str(task.name)
        published = getattr(request, PUBLISHED, None)
        waited = time.time() - published if isinstance(published, (int, float)) else None
        parent: Context | None = None
        if agent.tracing is not None:
            parent = propagate.extract(request, getter=_getter)
            if not trace.get_current_span(parent).get_span_context().is_valid:
                parent = None  # eager, or an uninstrumented producer: the current context
        replaced = _running.get(task_id)
        if replaced is not None:  # delivered again: the run before it never ended here
            replaced.abandon()
        _running[task_id] = Run(agent, (SYSTEM, queue, name), parent, task_id, waited)


def _finish(task_id: str, outcome: str) -> None:
    run = _running.pop(task_id, None)
    if run is not None:
        run.finish(outcome)


def _postrun(
    sender: Any = None, task_id: str | None = None, state: str | None = None, **extra: Any
) -> None:
    agent = _state.current
    if agent is None or task_id is None:
        return
    with _safety.internal_errors("celery.postrun"):
        _finish(task_id, _OUTCOMES.get(str(state), "failure"))


def _failure(
    sender: Any = None,
    task_id: str | None = None,
    exception: BaseException | None = None,
    **extra: Any,
) -> None:
    with _safety.internal_errors("celery.failure"):
        run = _running.get(task_id or "")
        if run is not None and exception is not None:
            run.fail(exception)


def _revoked(sender: Any = None, request: Any = None, **extra: Any) -> None:
    agent = _state.current
    if agent is None or request is None:
        return
    with _safety.internal_errors("celery.revoked"):
        task_id = str(getattr(request, "id", ""))
        if task_id in _running:
            _finish(task_id, "revoked")
            return
        # Revoked before it ran: counted, with no running time.
        name = str(getattr(request, "name", None) or getattr(request, "task_name", ""))
        queue = str((getattr(request, "delivery_info", None) or {}).get("routing_key") or "")
        agent.metrics.task_duration.child((SYSTEM, queue, name, "revoked")).observe(0.0)


def _worker_init(sender: Any = None, **extra: Any) -> None:
    agent = _state.current
    if agent is None or sender is None:
        return
    with _safety.internal_errors("celery.worker_init"):
        concurrency = int(getattr(sender, "concurrency", 0) or 0)
        if concurrency:
            agent.metrics.worker_capacity.labels(SYSTEM).set(concurrency)
        pool = getattr(sender, "pool_cls", "")
        pool_name = pool if isinstance(pool, str) else f"{pool.__module__}.{pool.__name__}"
        if "prefork" in pool_name or pool_name.endswith("processes"):
            # The pool's processes are forked from this one after this point.
            agent.join_server(Server(SYSTEM, os.getpid(), workers=concurrency, worker=False))
        else:
            # This process runs the tasks: their gauge is 0 from the start, not absent until
            # the first task, so its mean over a window counts the idle time before it.
            agent.metrics.active_tasks(SYSTEM)
        app = getattr(sender, "app", None)
        if app is not None:
            _track_queues(agent, app)


def _worker_process_init(sender: Any = None, **extra: Any) -> None:
    agent = _state.current
    if agent is None:
        return
    with _safety.internal_errors("celery.worker_process_init"):
        # A pool process inherited the main process's capacity: it is not a worker's
        # capacity of its own (the main process reports the pool's).
        agent.metrics.worker_capacity.clear()
        agent.metrics.active_tasks(SYSTEM)  # 0 from the start, as above


def _after_setup_logger(sender: Any = None, **extra: Any) -> None:
    agent = _state.current
    if agent is not None and agent.logs is not None:
        with _safety.internal_errors("celery.logging"):
            agent.logs.reattach()


def _track_queues(agent: Agent, app: Any) -> None:
    queues = list(app.amqp.queues.consume_from or app.amqp.queues)
    for queue in queues:
        readers = _readers(app, str(queue), agent.settings.rabbitmq_api)
        agent.queue_depths.track(SYSTEM, str(queue), *readers)


def _readers(app: Any, queue: str, rabbitmq_api: str) -> tuple[Any, Any]:
    """Depth of ``queue`` through kombu (any broker), and the oldest message's age on
    Redis (the list's last entry) and RabbitMQ (its management API)."""
    connection: Any = None
    management: list[ManagementApi | None] = []  # made at the first reading
    waiting = 0.0  # the last depth read

    def channel() -> Any:
        nonlocal connection
        if connection is None:
            options = {**(app.conf.broker_transport_options or {}), "socket_timeout": 5.0}
            connection = app.connection_for_read(connect_timeout=5, transport_options=options)
            connection.ensure_connection(max_retries=1)
        return connection.default_channel

    def depth() -> float:
        nonlocal connection, waiting
        waiting = 0.0
        try:
            declared = channel().queue_declare(queue=queue, passive=True)
            waiting = float(declared.message_count)
            return waiting
        except Exception as exc:
            if str(getattr(exc, "reply_code", "")) == "404":
                return 0.0  # Redis deletes an empty list; RabbitMQ: not declared yet
            if connection is not None:
                connection.release()
            connection = None  # reconnect at the next reading
            raise

    def age() -> float | None:
        client = getattr(channel(), "client", None)  # kombu's Redis transport only
        if client is None or not hasattr(client, "lindex"):
            if getattr(connection.transport, "driver_type", "") != "amqp":
                return None
            if not management:
                management.append(ManagementApi.for_broker(rabbitmq_api, connection))
            api = management[0]
            return api.age(queue, waiting) if api is not None else None
        raw = client.lindex(queue, -1)  # kombu pushes left and pops right: the oldest
        if raw is None:
            return 0.0
        headers = json.loads(raw).get("headers") or {}
        published = headers.get(PUBLISHED)
        return max(0.0, time.time() - published) if isinstance(published, (int, float)) else None

    return depth, age


_HOOKS = (
    (signals.before_task_publish, _before_publish),
    (signals.after_task_publish, _after_publish),
    (signals.task_prerun, _prerun),
    (signals.task_postrun, _postrun),
    (signals.task_failure, _failure),
    (signals.task_revoked, _revoked),
    (signals.worker_init, _worker_init),
    (signals.worker_process_init, _worker_process_init),
    (signals.after_setup_logger, _after_setup_logger),
)


class CeleryIntegration(Integration):
    name = "celery"
    library = "celery"
    minimum_version = "5.3"

    def install(self, agent: Agent) -> None:
        super().install(agent)  # no patches: Celery's signals are its seams
        for signal, receiver in _HOOKS:
            # weak=False: the receivers are module functions; dispatch_uid makes it idempotent.
            signal.connect(receiver, weak=False, dispatch_uid=f"sightline.{receiver.__name__}")

    def uninstall(self) -> None:
        for signal, receiver in _HOOKS:
            signal.disconnect(receiver, dispatch_uid=f"sightline.{receiver.__name__}")
        _publishing.clear()
        _running.clear()
        super().uninstall()


INTEGRATION = CeleryIntegration
