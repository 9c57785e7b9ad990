"""psycopg 3 (sync and asyncio): every statement measured at the driver.

``db_client_operation_duration_seconds{db_system_name="postgresql"}``: one observation per
``execute``, ``executemany``, ``stream`` or ``copy`` of a cursor (``Connection.execute``
and named, server-side cursors included; ``stream()`` is timed until its first row, as
the rest comes at the caller's pace; ``copy()`` from entering its block to leaving it),
by operation (the statement's first keyword; a ``psycopg.sql`` composition is
``_OTHER``) and error (psycopg's exception class: ``UniqueViolation``, ``OperationalError``,
...). SQLAlchemy and Django over psycopg 3 leave their statements to this integration, so
each is counted once. ``Cursor.execute``/``executemany`` and their asyncio counterparts are
wrapped on their classes and put back by ``uninstall``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import _db, _state
from ._base import DidNotEnable, Integration, Patch
from ._patches import (
    timed,
    timed_async,
    timed_async_block,
    timed_async_stream,
    timed_block,
    timed_stream,
)

try:
    import psycopg
except ImportError:
    raise DidNotEnable("psycopg is not installed") from None

if TYPE_CHECKING:
    from .._agent import Agent

SYSTEM = "postgresql"
_SQLALCHEMY_DRIVERS = ("psycopg", "psycopg_async")


def _begin(args: tuple[Any, ...]) -> Any:
    agent = _state.current
    return None if agent is None or len(args) < 2 else (agent, args[1])


def _end(context: Any, result: Any, error: str, seconds: float) -> None:
    agent, query = context
    _db.record(agent, SYSTEM, _db.operation(query), error, seconds, query)


def _sync(original: Any) -> Any:
    return timed(original, _begin, _end, "psycopg.measure")


def _async(original: Any) -> Any:
    return timed_async(original, _begin, _end, "psycopg.measure")


def _wrapping(timer: Any) -> Any:
    return lambda original: timer(original, _begin, _end, "psycopg.measure")


_TARGETS = (
    (psycopg.Cursor, "execute", _sync),
    (psycopg.Cursor, "executemany", _sync),
    (psycopg.Cursor, "stream", _wrapping(timed_stream)),
    (psycopg.Cursor, "copy", _wrapping(timed_block)),
    (psycopg.AsyncCursor, "execute", _async),
    (psycopg.AsyncCursor, "executemany", _async),
    (psycopg.AsyncCursor, "stream", _wrapping(timed_async_stream)),
    (psycopg.AsyncCursor, "copy", _wrapping(timed_async_block)),
    # Named (server-side) cursors run their own execute: Django's iterator(), SQLAlchemy's
    # stream_results.
    (psycopg.ServerCursor, "execute", _sync),
    (psycopg.AsyncServerCursor, "execute", _async),
)


class PsycopgIntegration(Integration):
    name = "psycopg"
    library = "psycopg"
    minimum_version = "3.1"
    # Where the class defines the method itself: one it inherits is measured once, there.
    patches = tuple(
        Patch(cls, method, wrap) for cls, method, wrap in _TARGETS if method in vars(cls)
    )

    def install(self, agent: Agent) -> None:
        super().install(agent)
        for cursor in (psycopg.Cursor, psycopg.AsyncCursor):
            if cursor not in _db.DRIVER_CURSORS:
                _db.DRIVER_CURSORS.append(cursor)
        _db.DRIVER_NAMES.update(_SQLALCHEMY_DRIVERS)

    def uninstall(self) -> None:
        super().uninstall()
        for cursor in (psycopg.Cursor, psycopg.AsyncCursor):
            if cursor in _db.DRIVER_CURSORS:
                _db.DRIVER_CURSORS.remove(cursor)
        _db.DRIVER_NAMES.difference_update(_SQLALCHEMY_DRIVERS)


INTEGRATION = PsycopgIntegration
