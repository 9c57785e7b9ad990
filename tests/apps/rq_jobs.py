"""RQ jobs for the tests. This module never mentions Sightline: the worker is started
with `sightline run -- rq worker`."""

from __future__ import annotations

import logging
import os
import time

log = logging.getLogger("jobs")


def add(x: int, y: int) -> int:
    log.warning("adding %s and %s", x, y)
    return x + y


def fail() -> None:
    raise ValueError("the job failed")


def flaky(marker: str) -> str:
    """Fails the first time it runs for ``marker`` (a file path), succeeds after."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        raise RuntimeError("first attempt fails")
    return "ok"


def slow(seconds: float) -> None:
    time.sleep(seconds)


def lookup(key: str) -> str | None:
    """Reads ``key`` from the job's own Redis connection: the job's one command."""
    from rq import get_current_job

    job = get_current_job()
    assert job is not None
    value = job.connection.get(key)
    return None if value is None else value.decode()
