"""The safety net: agent errors are logged (rate-limited) and counted, never raised into the app.

Hot paths call :func:`report` from a plain ``except`` (a context manager costs a
microsecond per request); setup code uses ``with internal_errors("where"):``.
Tests point :data:`sink` at a list so a swallowed error fails the test that caused it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

logger = logging.getLogger("sightline")

#: When a list, every swallowed exception is appended to it (tests use this).
sink: list[BaseException] | None = None

#: Called with ``where`` for every swallowed error; the metrics module counts them.
counter: Callable[[str], None] | None = None

_LOG_EVERY_SECONDS = 60.0
_last_logged: dict[tuple[str, type[BaseException]], float] = {}


def report(where: str, exc: BaseException) -> None:
    """Record an internal error raised in ``where``; log it at most once a minute per cause."""
    try:
        if sink is not None:
            sink.append(exc)
        if counter is not None:
            counter(where)
        key = (where, type(exc))
        now = time.monotonic()
        last = _last_logged.get(key)
        if last is None or now - last >= _LOG_EVERY_SECONDS:
            _last_logged[key] = now
            logger.warning("sightline internal error in %s (suppressed)", where, exc_info=exc)
    except Exception:  # the safety net itself must never raise
        pass


@contextmanager
def internal_errors(where: str) -> Iterator[None]:
    """Run agent work; an ``Exception`` inside is reported and suppressed."""
    try:
        yield
    except Exception as exc:
        report(where, exc)
