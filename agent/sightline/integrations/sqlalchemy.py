"""SQLAlchemy (sync and asyncio engines): every statement measured, and each connection
pool's saturation.

- ``db_client_operation_duration_seconds``: one observation per statement the engine
  sends (an ``executemany`` is one), by system (``postgresql``, ``sqlite``, ``mysql``,
  ...), operation (the statement's first keyword: ``SELECT``, ``INSERT``, ...; never the
  SQL text) and error (the driver's exception class, empty on success). Over a driver
  measured by its own integration (psycopg 3), statements are left to it.
- ``db_client_connection_count{db_client_connection_state="used"|"idle"}`` and
  ``db_client_connection_max`` (pool size plus overflow): read from every queue pool at
  scrape time.
- ``db_client_connection_wait_time_seconds``: how long ``Pool.connect`` took to hand out a
  connection, waiting for a free one or opening one; ``db_client_connection_timeouts_total``:
  requests that gave up (QueuePool's ``pool_timeout``).

Statements are timed with class-level ``Engine`` events (``before_cursor_execute``,
``after_cursor_execute``, ``handle_error``), so every engine is measured whenever it was
made; ``Pool.connect`` is wrapped on its class. A pool is named after its engine's URL
without user or password (``postgresql+psycopg://db.internal:5432/shop``).
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .. import _db, _safety, _state
from ..metrics import DB_SYSTEM, POOL_NAME, Described
from ._base import DidNotEnable, Integration, Patch

try:
    import sqlalchemy.pool
    from sqlalchemy import event
    from sqlalchemy import exc as sa_exc
    from sqlalchemy.engine import Engine
    from sqlalchemy.pool import Pool, QueuePool
except ImportError:
    raise DidNotEnable("sqlalchemy is not installed") from None

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from .._agent import Agent

# Every pool seen, and its name (the engine's URL, or its dialect until an engine says).
_pools: weakref.WeakKeyDictionary[Any, tuple[str, str]] = weakref.WeakKeyDictionary()
_pools_lock = threading.Lock()


def system(dialect: Any) -> str:
    return _db.system(str(getattr(dialect, "name", "") or ""))


def pool_name(url: Any) -> str:
    host = f"{url.host}:{url.port}" if url.port else (url.host or "")
    return f"{url.drivername}://{host}/{url.database or ''}"


def _remember(engine: Any) -> None:
    pool = getattr(engine, "pool", None)
    if pool is None:
        return
    with _pools_lock:
        _pools[pool] = (system(engine.dialect), pool_name(engine.url))


def _unnamed(engine: Any) -> bool:
    """Whether the engine's pool is unknown, or known only by its system's name."""
    known = _pools.get(getattr(engine, "pool", None))
    return known is None or known[0] == known[1]


def _identity(pool: Any) -> tuple[str, str]:
    found = _pools.get(pool)
    if found is None:
        dialect = system(getattr(pool, "_dialect", None))
        found = (dialect, dialect)  # named once an engine using it is seen
        with _pools_lock:
            _pools.setdefault(pool, found)
    return found


# -- statements


# The listeners run inside the app's own execute: nothing of theirs may reach it.


def _before(conn: Any, cursor: Any, statement: Any, params: Any, context: Any, many: Any) -> None:
    if _state.current is not None and context is not None:
        with _safety.internal_errors("sqlalchemy.measure"):
            context._sightline_started = time.perf_counter()


def _after(conn: Any, cursor: Any, statement: Any, params: Any, context: Any, many: Any) -> None:
    _statement_done(conn, context, statement, "")


def _error(exception_context: Any) -> None:
    with _safety.internal_errors("sqlalchemy.measure"):
        _statement_done(
            exception_context.connection,
            exception_context.execution_context,
            exception_context.statement,
            type(exception_context.original_exception).__name__,
        )


def _statement_done(conn: Any, context: Any, statement: Any, error: str) -> None:
    agent = _state.current
    started = getattr(context, "_sightline_started", None)
    if agent is None or started is None:
        return
    seconds = time.perf_counter() - started
    with _safety.internal_errors("sqlalchemy.measure"):
        context._sightline_started = None
        engine = getattr(conn, "engine", None)
        if engine is not None and _unnamed(engine):
            _remember(engine)
        if conn.dialect.driver in _db.DRIVER_NAMES:
            return  # the driver's own integration counted it
        _db.record(agent, system(conn.dialect), _db.operation(statement), error, seconds, statement)


# -- pools


def _connect(original: Any) -> Any:
    def connect(self: Any) -> Any:
        agent = _state.current
        if agent is None:
            return original(self)
        start = time.perf_counter()
        try:
            connection = original(self)
        except sa_exc.TimeoutError:
            _waited(agent, self, start, timed_out=True)
            raise
        _waited(agent, self, start, timed_out=False)
        return connection

    connect.__wrapped__ = original  # type: ignore[attr-defined]
    return connect


def _recreate(original: Any) -> Any:
    def recreate(self: Any) -> Any:
        new = original(self)
        with _safety.internal_errors("sqlalchemy.pool"), _pools_lock:
            if self in _pools:
                _pools[new] = _pools[self]  # engine.dispose(): the new pool keeps the name
        return new

    recreate.__wrapped__ = original  # type: ignore[attr-defined]
    return recreate


def _waited(agent: Agent, pool: Any, start: float, timed_out: bool) -> None:
    seconds = time.perf_counter() - start
    with _safety.internal_errors("sqlalchemy.pool"):
        key = _identity(pool)
        agent.metrics.pool_wait.child(key).observe(seconds)
        if timed_out:
            agent.metrics.pool_timeout(key)


def _engine_init(original: Any) -> Any:
    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        with _safety.internal_errors("sqlalchemy.engine"):
            _remember(self)

    init.__wrapped__ = original  # type: ignore[attr-defined]
    return init


class PoolCollector(Described):
    """Connections used and idle, the most a pool keeps idle (its size) and the most it
    hands out (size plus overflow), of every queue pool."""

    def collect(self) -> Iterable[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        labels = [DB_SYSTEM, POOL_NAME, "db_client_connection_state"]
        count = GaugeMetricFamily(
            "db_client_connection_count",
            "Connections in a pool, by state: used (checked out) or idle.",
            labels=labels,
        )
        most = GaugeMetricFamily(
            "db_client_connection_max",
            "The most connections a pool hands out at once (its size plus overflow).",
            labels=[DB_SYSTEM, POOL_NAME],
        )
        size = GaugeMetricFamily(
            "db_client_connection_idle_max",
            "The most idle connections a pool keeps (its size; overflow ones are closed).",
            labels=[DB_SYSTEM, POOL_NAME],
        )
        with _pools_lock:
            pools = list(_pools.items())
        totals: dict[tuple[str, str], list[float]] = {}
        for pool, key in pools:
            if not isinstance(pool, QueuePool):
                continue
            used, idle = float(pool.checkedout()), float(pool.checkedin())
            overflow = getattr(pool, "_max_overflow", -1)
            limit = float(pool.size() + overflow) if overflow >= 0 else -1.0
            # Pools of one name (an engine made twice) add up.
            found = totals.setdefault(key, [0.0, 0.0, 0.0, 0.0])
            found[0] += used
            found[1] += idle
            found[2] = -1.0 if limit < 0 or found[2] < 0 else found[2] + limit
            found[3] += float(pool.size())
        for key, (used, idle, limit, kept) in totals.items():
            count.add_metric([*key, "used"], used)
            count.add_metric([*key, "idle"], idle)
            size.add_metric(list(key), kept)
            if limit >= 0:
                most.add_metric(list(key), limit)
        yield count
        yield most
        yield size


def _pool_classes() -> list[type]:
    """Pool and every pool class SQLAlchemy ships (each may define connect or recreate)."""
    found: list[type] = [Pool]
    for value in vars(sqlalchemy.pool).values():
        if isinstance(value, type) and issubclass(value, Pool) and value not in found:
            found.append(value)
    return found


def _patches() -> tuple[Patch, ...]:
    """``connect`` and ``recreate`` where a pool class defines them (Pool, and
    SingletonThreadPool's own), and ``Engine.__init__``."""
    found = []
    for cls in _pool_classes():
        found += [Patch(cls, name, wrap) for name, wrap in _POOL if name in vars(cls)]
    return (*found, Patch(Engine, "__init__", _engine_init))


_POOL = (("connect", _connect), ("recreate", _recreate))
_LISTENERS = (
    ("before_cursor_execute", _before),
    ("after_cursor_execute", _after),
    ("handle_error", _error),
)


class SQLAlchemyIntegration(Integration):
    name = "sqlalchemy"
    library = "SQLAlchemy"
    minimum_version = "2.0"
    patches = _patches()

    def __init__(self) -> None:
        super().__init__()
        self._collector: PoolCollector | None = None

    def install(self, agent: Agent) -> None:
        if self._collector is None:
            collector = PoolCollector()
            agent.metrics.register(collector)  # first: it may refuse a name the app took
            self._collector = collector
        super().install(agent)
        for name, listener in _LISTENERS:
            if not event.contains(Engine, name, listener):  # class-level: once for all
                event.listen(Engine, name, listener)

    def uninstall(self) -> None:
        for name, listener in _LISTENERS:
            if event.contains(Engine, name, listener):
                event.remove(Engine, name, listener)
        super().uninstall()
        self._collector = None  # the agent's metrics unregister it


INTEGRATION = SQLAlchemyIntegration
