"""SQLAlchemy (sync and asyncio engines) and psycopg 3 measured: statements by system,
operation and error, on SQLite and a real PostgreSQL, and the saturation of a connection
pool driven to exhaustion."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

sqlalchemy = pytest.importorskip("sqlalchemy")
from sqlalchemy import text  # noqa: E402

from .servers import postgres  # noqa: E402


def operations(registry: CollectorRegistry, system: str) -> dict[tuple[str, str], float]:
    found = {}
    for family in registry.collect():
        for sample in family.samples:
            labels = sample.labels
            if (
                sample.name == "db_client_operation_duration_seconds_count"
                and labels["db_system_name"] == system
            ):
                found[(labels["db_operation_name"], labels["error_type"])] = sample.value
    return found


def delta(before: dict[Any, float], after: dict[Any, float]) -> dict[Any, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}


def workload(conn: Any) -> None:
    """The same statements for every engine: 1 CREATE, 2 INSERT (one executemany), 2
    SELECT, 1 UPDATE, 1 DELETE, and an INSERT refused by the primary key."""
    conn.execute(text("CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT)"))
    conn.execute(text("INSERT INTO item (id, name) VALUES (1, 'lamp')"))
    conn.execute(
        text("INSERT INTO item (id, name) VALUES (:i, :n)"),
        [{"i": 2, "n": "mug"}, {"i": 3, "n": "cup"}],
    )
    assert conn.execute(text("SELECT count(*) FROM item")).scalar() == 3
    conn.execute(text("  select name from item where id = 2")).all()
    conn.execute(text("UPDATE item SET name = 'big mug' WHERE id = 2"))
    conn.execute(text("DELETE FROM item WHERE id = 3"))


EXPECTED = {
    ("CREATE", ""): 1.0,
    ("INSERT", ""): 2.0,
    ("SELECT", ""): 2.0,
    ("UPDATE", ""): 1.0,
    ("DELETE", ""): 1.0,
    ("INSERT", "IntegrityError"): 1.0,
}


def test_statements_are_counted_by_operation_and_error(
    agent: CollectorRegistry, tmp_path: Path
) -> None:
    """Each statement is one observation by its first keyword (case and leading space
    aside; an executemany is one) and the driver's error class; never its text."""
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'shop.db'}")
    with engine.connect() as conn:
        before = operations(agent, "sqlite")
        workload(conn)
        with pytest.raises(sqlalchemy.exc.IntegrityError):
            conn.execute(text("INSERT INTO item (id, name) VALUES (1, 'again')"))
        assert delta(before, operations(agent, "sqlite")) == EXPECTED
    engine.dispose()
    labels = {v for (op, err) in EXPECTED for v in (op, err)}
    assert "lamp" not in str(labels)


def test_asyncio_engine_is_counted_the_same(agent: CollectorRegistry, tmp_path: Path) -> None:
    """An asyncio engine (aiosqlite) gives the same counts as a sync one."""
    pytest.importorskip("aiosqlite")
    from sqlalchemy.ext.asyncio import create_async_engine

    async def run() -> dict[Any, float]:
        engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'shop.db'}")
        async with engine.connect() as conn:
            before = operations(agent, "sqlite")
            await conn.run_sync(workload)
            with pytest.raises(sqlalchemy.exc.IntegrityError):
                await conn.execute(text("INSERT INTO item (id, name) VALUES (1, 'again')"))
            after = operations(agent, "sqlite")
        await engine.dispose()
        return delta(before, after)

    assert asyncio.run(run()) == EXPECTED


def test_an_exhausted_pool_shows_used_connections_wait_time_and_timeouts(
    agent: CollectorRegistry, tmp_path: Path
) -> None:
    """With its one connection held, the pool reads 1 used of 1, a second checkout waits
    the pool timeout and gives up (counted, its wait observed); released, it reads idle."""
    url = f"sqlite:///{tmp_path / 'pool.db'}"
    engine = sqlalchemy.create_engine(
        url, poolclass=sqlalchemy.pool.QueuePool, pool_size=1, max_overflow=0, pool_timeout=0.3
    )
    name = f"sqlite:///{tmp_path / 'pool.db'}"
    labels = {"db_system_name": "sqlite", "db_client_connection_pool_name": name}

    def gauge(metric: str, **extra: str) -> float | None:
        return agent.get_sample_value(metric, {**labels, **extra})

    held = engine.connect()
    assert gauge("db_client_connection_count", db_client_connection_state="used") == 1
    assert gauge("db_client_connection_count", db_client_connection_state="idle") == 0
    assert gauge("db_client_connection_max") == 1
    failed: list[BaseException] = []

    def second() -> None:
        try:
            engine.connect()
        except sqlalchemy.exc.TimeoutError as exc:
            failed.append(exc)

    started = time.monotonic()
    waiter = threading.Thread(target=second)
    waiter.start()
    waiter.join(10)
    assert time.monotonic() - started >= 0.3
    assert len(failed) == 1
    assert gauge("db_client_connection_timeouts_total") == 1
    waits = gauge("db_client_connection_wait_time_seconds_count")
    assert waits == 2  # the first checkout, and the one that gave up
    assert (gauge("db_client_connection_wait_time_seconds_sum") or 0) >= 0.3
    assert gauge("db_client_connection_wait_time_seconds_bucket", le="0.1") == 1
    held.close()
    assert gauge("db_client_connection_count", db_client_connection_state="used") == 0
    assert gauge("db_client_connection_count", db_client_connection_state="idle") == 1
    # After dispose() (as after a fork) the new pool keeps its engine's name.
    engine.dispose()
    with engine.connect():
        pass
    assert gauge("db_client_connection_wait_time_seconds_count") == 3
    assert gauge("db_client_connection_count", db_client_connection_state="idle") == 1
    engine.dispose()


@pytest.fixture(scope="module")
def postgresql() -> Iterator[str]:
    """A real PostgreSQL server for this module; its address as user@host:port/database."""
    with postgres() as address:
        yield address


def test_postgresql_through_psycopg_sync_and_async(
    agent: CollectorRegistry, postgresql: str
) -> None:
    """On a real PostgreSQL, through psycopg 3, sync and asyncio engines give the same
    exact counts (system `postgresql`, the unique-key violation as psycopg's class), and the
    pool is named after the URL without credentials."""
    pytest.importorskip("psycopg")
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = sqlalchemy.create_engine(f"postgresql+psycopg://{postgresql}")
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS item"))
    with engine.connect() as conn:
        before = operations(agent, "postgresql")
        workload(conn)
        conn.commit()
        with pytest.raises(sqlalchemy.exc.IntegrityError):
            conn.execute(text("INSERT INTO item (id, name) VALUES (1, 'again')"))
        conn.rollback()
        conn.execute(text("DROP TABLE item"))
        conn.commit()
        sync = delta(before, operations(agent, "postgresql"))
    engine.dispose()
    unique = {**EXPECTED, ("DROP", ""): 1.0}
    del unique[("INSERT", "IntegrityError")]
    unique[("INSERT", "UniqueViolation")] = 1.0
    assert sync == unique

    async def run() -> dict[Any, float]:
        engine = create_async_engine(f"postgresql+psycopg://{postgresql}")
        async with engine.connect() as conn:
            before = operations(agent, "postgresql")
            await conn.run_sync(workload)
            await conn.commit()
            with pytest.raises(sqlalchemy.exc.IntegrityError):
                await conn.execute(text("INSERT INTO item (id, name) VALUES (1, 'again')"))
            await conn.rollback()
            await conn.execute(text("DROP TABLE item"))
            await conn.commit()
            after = operations(agent, "postgresql")
        await engine.dispose()
        return delta(before, after)

    assert asyncio.run(run()) == unique
    host = postgresql.split("@", 1)[1]
    names = {
        s.labels["db_client_connection_pool_name"]
        for f in agent.collect()
        for s in f.samples
        if s.name == "db_client_connection_wait_time_seconds_count"
    }
    assert f"postgresql+psycopg://{host}" in names


def test_raw_psycopg_sync_and_async_statements_are_counted(
    agent: CollectorRegistry, postgresql: str
) -> None:
    """psycopg 3 used directly, sync and asyncio: each execute or executemany is one
    observation, by first keyword and psycopg's error class."""
    psycopg = pytest.importorskip("psycopg")
    dsn = f"postgresql://{postgresql}"
    statements = [
        ("CREATE TABLE raw_item (id integer PRIMARY KEY)", None),
        ("INSERT INTO raw_item (id) VALUES (%s)", (1,)),
        ("select count(*) from raw_item", None),
    ]
    want = {("CREATE", ""): 1.0, ("INSERT", ""): 2.0, ("SELECT", ""): 1.0,
            ("INSERT", "UniqueViolation"): 1.0, ("DROP", ""): 1.0}  # fmt: skip

    before = operations(agent, "postgresql")
    with psycopg.connect(dsn, autocommit=True) as conn, conn.cursor() as cursor:
        for sql, params in statements:
            cursor.execute(sql, params)
        cursor.executemany("INSERT INTO raw_item (id) VALUES (%s)", [(2,), (3,)])
        with pytest.raises(psycopg.errors.UniqueViolation):
            cursor.execute("INSERT INTO raw_item (id) VALUES (1)")
        cursor.execute("DROP TABLE raw_item")
    assert delta(before, operations(agent, "postgresql")) == want

    async def run() -> None:
        conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
        async with conn, conn.cursor() as cursor:
            for sql, params in statements:
                await cursor.execute(sql, params)
            await cursor.executemany("INSERT INTO raw_item (id) VALUES (%s)", [(2,), (3,)])
            with pytest.raises(psycopg.errors.UniqueViolation):
                await cursor.execute("INSERT INTO raw_item (id) VALUES (1)")
            await cursor.execute("DROP TABLE raw_item")

    before = operations(agent, "postgresql")
    asyncio.run(run())
    assert delta(before, operations(agent, "postgresql")) == want

    # A named (server-side) cursor runs its own execute, counted too.
    before = operations(agent, "postgresql")
    with psycopg.connect(dsn) as conn, conn.cursor(name="stream") as cursor:
        cursor.execute("SELECT generate_series(1, 3)")
        assert [row[0] for row in cursor] == [1, 2, 3]
    assert delta(before, operations(agent, "postgresql")) == {("SELECT", ""): 1.0}


def copy_then_fail(cursor: Any) -> None:
    with cursor.copy("COPY copied (id) FROM STDIN") as copy:
        copy.write_row((99,))
        raise ValueError("the app's own")


async def copy_then_fail_async(cursor: Any) -> None:
    async with cursor.copy("COPY copied (id) FROM STDIN") as copy:
        await copy.write_row((99,))
        raise ValueError("the app's own")


def test_psycopg_stream_and_copy_are_operations_too(
    agent: CollectorRegistry, postgresql: str
) -> None:
    """psycopg's stream() is one operation, counted when its first row comes (or its
    error), with every row still reaching the caller, even one that stops early; copy()
    is one operation for its whole block, failed when the block raises; sync and
    asyncio alike."""
    psycopg = pytest.importorskip("psycopg")
    dsn = f"postgresql://{postgresql}"
    want = {("CREATE", ""): 1.0, ("COPY", ""): 1.0, ("COPY", "ValueError"): 1.0,
            ("SELECT", ""): 2.0, ("SELECT", "UndefinedTable"): 1.0,
            ("DROP", ""): 1.0}  # fmt: skip

    before = operations(agent, "postgresql")
    with psycopg.connect(dsn, autocommit=True) as conn, conn.cursor() as cursor:
        cursor.execute("CREATE TABLE copied (id integer)")
        with cursor.copy("COPY copied (id) FROM STDIN") as copy:
            for i in range(5):
                copy.write_row((i,))
        with pytest.raises(ValueError, match="the app's own"):
            copy_then_fail(cursor)
        assert [row[0] for row in cursor.stream("SELECT id FROM copied ORDER BY id")] == [
            0, 1, 2, 3, 4,
        ]  # fmt: skip
        for _row in cursor.stream("SELECT id FROM copied ORDER BY id"):
            break  # stopped early: the connection is still usable below
        with pytest.raises(psycopg.errors.UndefinedTable):
            list(cursor.stream("SELECT * FROM no_such_table"))
        cursor.execute("DROP TABLE copied")
    assert delta(before, operations(agent, "postgresql")) == want

    async def run() -> list[int]:
        conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
        async with conn, conn.cursor() as cursor:
            await cursor.execute("CREATE TABLE copied (id integer)")
            async with cursor.copy("COPY copied (id) FROM STDIN") as copy:
                for i in range(5):
                    await copy.write_row((i,))
            with pytest.raises(ValueError, match="the app's own"):
                await copy_then_fail_async(cursor)
            rows = [row[0] async for row in cursor.stream("SELECT id FROM copied ORDER BY id")]
            async for _row in cursor.stream("SELECT id FROM copied ORDER BY id"):
                break
            with pytest.raises(psycopg.errors.UndefinedTable):
                [row async for row in cursor.stream("SELECT * FROM no_such_table")]
            await cursor.execute("DROP TABLE copied")
            return rows

    before = operations(agent, "postgresql")
    assert asyncio.run(run()) == [0, 1, 2, 3, 4]
    assert delta(before, operations(agent, "postgresql")) == want


def test_statements_in_a_traced_request_are_client_spans_without_their_literals(
    backend: Any, registry: CollectorRegistry, postgresql: str
) -> None:
    """Inside a recorded request, each statement (SQLAlchemy on SQLite, psycopg on
    PostgreSQL) is a CLIENT span under the request's span, named by its operation, with
    db.system.name and the query text with every literal replaced by ``?`` (placeholders
    kept); a failed one has error.type and ERROR status. A statement outside any trace
    is counted but makes no span."""
    import sightline
    from flask import Flask
    from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

    from .helpers import call_wsgi
    from .receivers import attributes

    psycopg = pytest.importorskip("psycopg")
    sightline.init(
        service="shop", registry=registry, metrics_addr="off", logs=False,
        otlp_endpoint=backend.url, bsp_schedule_delay=0.05,
    )  # fmt: skip
    engine = sqlalchemy.create_engine("sqlite://")
    with engine.begin() as conn:  # outside any request: no span
        conn.execute(text("CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT)"))
    app = Flask("shop")

    @app.route("/items")
    def items() -> str:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO item VALUES (42, 'secret lamp')"))
            name = conn.execute(text("SELECT name FROM item WHERE id = :id"), {"id": 42})
            found = name.scalar()
        with psycopg.connect(f"postgresql://{postgresql}", autocommit=True) as pg:
            pg.execute("SELECT 'hunter2' AS word, %s::int AS n", (7,))
            with pytest.raises(psycopg.errors.UndefinedTable):
                pg.execute("SELECT * FROM no_such_table WHERE code = 'x1'")
        return str(found)

    status, body = call_wsgi(app, "/items")
    assert (status, body) == ("200 OK", b"secret lamp")
    sightline.shutdown()
    spans = [s for _, s in backend.spans()]
    [server] = [s for s in spans if s.kind == Span.SPAN_KIND_SERVER]
    clients = [s for s in spans if s.kind == Span.SPAN_KIND_CLIENT]
    assert all(s.parent_span_id == server.span_id for s in clients)
    assert all(s.trace_id == server.trace_id for s in clients)
    shown: dict[str, list[tuple[Any, ...]]] = {}
    for span in clients:
        found = attributes(span.attributes)
        shown.setdefault(found["db.system.name"], []).append(
            (span.name, found.get("db.query.text"), found.get("error.type"), span.status.code)
        )
    ok, failed = Status.STATUS_CODE_UNSET, Status.STATUS_CODE_ERROR
    assert shown == {
        "sqlite": [
            ("INSERT", "INSERT INTO item VALUES (?, ?)", None, ok),
            ("SELECT", "SELECT name FROM item WHERE id = ?", None, ok),
        ],
        "postgresql": [
            ("SELECT", "SELECT ? AS word, %s::int AS n", None, ok),
            ("SELECT", "SELECT * FROM no_such_table WHERE code = ?", "UndefinedTable", failed),
        ],
    }
    for span in clients:
        assert span.start_time_unix_nano >= server.start_time_unix_nano
        assert span.end_time_unix_nano <= server.end_time_unix_nano


def test_a_pool_reports_its_size_and_its_overflow_limit_apart(
    agent: CollectorRegistry, tmp_path: Path
) -> None:
    """A pool of size 3 with 2 overflow keeps at most 3 idle and hands out at most 5:
    db_client_connection_idle_max and db_client_connection_max say each."""
    url = f"sqlite:///{tmp_path / 'sized.db'}"
    engine = sqlalchemy.create_engine(
        url, poolclass=sqlalchemy.pool.QueuePool, pool_size=3, max_overflow=2
    )
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    labels = {"db_system_name": "sqlite", "db_client_connection_pool_name": url}
    assert agent.get_sample_value("db_client_connection_idle_max", labels) == 3
    assert agent.get_sample_value("db_client_connection_max", labels) == 5
