"""The safety net: agent errors are logged (rate-limited) and counted, never raised into the app.

The hottest paths call :func:`report` from a plain ``except``; hooks and setup code
use ``with internal_errors("where"):``.
Tests point :data:`sink` at a list so a swallowed error fails the test that caused it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from types import TracebackType

logger = logging.getLogger("sightline")

#: When a list, every swallowed exception is appended to it (tests use this).
sink: list[BaseException] | None = None

#: Called with ``where`` for every swallowed error: the running agent counts them
#: (set by :func:`count_with`).
counter: Callable[[str], None] | None = None

_LOG_EVERY_SECONDS = 60.0
_last_logged: dict[tuple[str, type[BaseException]], float] = {}


def count_with(count: Callable[[str], None]) -> None:
    """Have ``count(where)`` called for every error swallowed from now on."""
    global counter
    counter = count


def stop_counting(count: Callable[[str], None]) -> None:
    """Undo :func:`count_with`, if ``count`` is still the one called."""
    global counter
    if counter == count:
        counter = None


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


class internal_errors:  # named as the function it replaced: ``with internal_errors("where"):``
    """Run agent work; an ``Exception`` inside is reported and suppressed.

    A class rather than a ``@contextmanager`` generator: a quarter of the cost, which
    matters in the hooks that run once per task or statement.
    """

    __slots__ = ("where",)

    def __init__(self, where: str) -> None:
        self.where = where

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        if kind is None or not issubclass(kind, Exception):
            return False
        report(self.where, exc if exc is not None else kind())
        return True
