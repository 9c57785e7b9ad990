"""Celery tasks for the tests, instrumented with one line; the broker comes from BROKER_URL."""

from __future__ import annotations

import logging
import os
import time

import sightline

sightline.init(service="tasks")

from celery import Celery, Task  # noqa: E402

app = Celery("tasks", broker=os.environ.get("BROKER_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(
    task_default_queue="work",
    broker_connection_retry_on_startup=True,
    worker_prefetch_multiplier=1,
)
log = logging.getLogger("tasks")


@app.task(name="tasks.add")
def add(x: int, y: int) -> int:
    log.warning("adding %s and %s", x, y)
    return x + y


@app.task(name="tasks.fail")
def fail() -> None:
    raise ValueError("the task failed")


@app.task(bind=True, name="tasks.flaky", max_retries=1)
def flaky(self: Task) -> str:
    if self.request.retries == 0:
        raise self.retry(countdown=0)
    return "ok"


@app.task(name="tasks.slow")
def slow(seconds: float) -> None:
    time.sleep(seconds)
