"""One call to a dependency: the ``sqlalchemy``, ``redis``, ``psycopg``, ``django_orm``,
``http_client``, ``httpx``, ``urllib3`` and ``aiohttp`` suites."""

from __future__ import annotations

import contextlib
import functools
import gc
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from suites.common import Probe, Suite, check_exported, otel_sdk, samples, sightline_metrics, versus


class OpVariant(NamedTuple):
    """What an operation setup built: one call to time, and how the worker checks it."""

    #: Runs the operation once; returns its result.
    call: Callable[[], Any]
    #: The result every call returns.
    expected: Any
    #: Operations the variant's metrics counted, read after the timed calls.
    recorded: Probe | None = None
    #: Flushes the spans after the timed calls; returns how many the sink received.
    exported: Callable[[], int] | None = None


def sqla_query() -> tuple[Callable[[], Any], Any]:
    """A SELECT on an in-memory SQLite database through one SQLAlchemy connection."""
    import sqlalchemy

    engine = sqlalchemy.create_engine("sqlite://")
    conn = engine.connect()
    conn.exec_driver_sql("CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT)")
    conn.exec_driver_sql("INSERT INTO item VALUES (42, 'lamp')")
    query = sqlalchemy.text("SELECT name FROM item WHERE id = :id")
    return (lambda: conn.execute(query, {"id": 42}).scalar()), engine


def setup_sqla_bare() -> OpVariant:
    call, _ = sqla_query()
    return OpVariant(call, "lamp")


def setup_sqla_incumbent() -> OpVariant:
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    provider, exported = otel_sdk()
    call, engine = sqla_query()
    SQLAlchemyInstrumentor().instrument(engine=engine, tracer_provider=provider)
    return OpVariant(call, "lamp", None, exported)


def setup_sqla_sightline() -> OpVariant:
    probe = samples(sightline_metrics(), "db_client_operation_duration_seconds_count")
    call, _ = sqla_query()
    return OpVariant(call, "lamp", probe)


def redis_get() -> tuple[Callable[[], Any], Any]:
    import fakeredis

    client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    client.set("user:42", "lamp")
    return (lambda: client.get("user:42")), client


def setup_redis_bare() -> OpVariant:
    call, _ = redis_get()
    return OpVariant(call, b"lamp")


def setup_redis_incumbent() -> OpVariant:
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    call, _ = redis_get()  # its SET before the instrumentation: GETs alone are traced
    provider, exported = otel_sdk()
    RedisInstrumentor().instrument(tracer_provider=provider)
    return OpVariant(call, b"lamp", None, exported)


def setup_redis_sightline() -> OpVariant:
    probe = samples(sightline_metrics(), "db_client_operation_duration_seconds_count")
    call, _ = redis_get()
    return OpVariant(call, b"lamp", probe)


#: A keep-alive HTTP/1.1 server answering every GET with "ok", run in a process of its
#: own so that it takes no time from the process being measured.
HTTP_SERVER = """
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

class Answer(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as written

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass

server = HTTPServer(("127.0.0.1", 0), Answer)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


def http_url() -> str:
    """Starts :data:`HTTP_SERVER` in a process of its own; returns the URL a client GETs."""
    import atexit

    server = subprocess.Popen(
        [sys.executable, "-c", HTTP_SERVER], stdout=subprocess.PIPE, text=True
    )
    atexit.register(server.kill)
    assert server.stdout is not None
    return f"http://127.0.0.1:{server.stdout.readline().strip()}/items/42"


def requests_get() -> Callable[[], Any]:
    """A GET through one requests Session (a kept-alive connection) to a loopback server."""
    import requests

    url, session = http_url(), requests.Session()
    return lambda: session.get(url).content


def httpx_get() -> Callable[[], Any]:
    """The same GET through one synchronous httpx Client."""
    import httpx

    url, client = http_url(), httpx.Client()
    return lambda: client.get(url).content


def urllib3_get() -> Callable[[], Any]:
    """The same GET through a urllib3 PoolManager."""
    import urllib3

    url, pool = http_url(), urllib3.PoolManager()
    return lambda: pool.request("GET", url).data


def aiohttp_get() -> Callable[[], Any]:
    """The same GET through one aiohttp ClientSession, each call run to completion on one
    event loop (the loop's own cost is in every variant alike)."""
    import asyncio
    import atexit

    import aiohttp

    url, loop = http_url(), asyncio.new_event_loop()

    async def start() -> aiohttp.ClientSession:
        return aiohttp.ClientSession()  # made on the loop that uses it

    session = loop.run_until_complete(start())
    atexit.register(lambda: loop.run_until_complete(session.close()))

    async def get() -> bytes:
        async with session.get(url) as response:
            return await response.read()

    return lambda: loop.run_until_complete(get())


#: Each client suite's GET, and OpenTelemetry's instrumentor for it (module, class).
HTTP_CLIENTS: dict[str, tuple[Callable[[], Callable[[], Any]], str, str]] = {
    "http": (requests_get, "opentelemetry.instrumentation.requests", "RequestsInstrumentor"),
    "httpx": (httpx_get, "opentelemetry.instrumentation.httpx", "HTTPXClientInstrumentor"),
    "urllib3": (urllib3_get, "opentelemetry.instrumentation.urllib3", "URLLib3Instrumentor"),
    "aiohttp": (
        aiohttp_get,
        "opentelemetry.instrumentation.aiohttp_client",
        "AioHttpClientInstrumentor",
    ),
}


def client_variant(client: str, stack: str) -> OpVariant:
    """``<client>_<stack>``: the client's GET bare, under OpenTelemetry's instrumentation
    for that client (a span per request, SDK and exporter as in ``incumbent``), or under
    Sightline (the request's duration histogram by method, host and status)."""
    import importlib

    get, module, instrumentor = HTTP_CLIENTS[client]
    if stack == "incumbent":
        provider, exported = otel_sdk()
        instrumentation = getattr(importlib.import_module(module), instrumentor)()
        instrumentation.instrument(tracer_provider=provider)
        return OpVariant(get(), b"ok", None, exported)
    if stack == "sightline":
        probe = samples(sightline_metrics(), "http_client_request_duration_seconds_count")
        return OpVariant(get(), b"ok", probe)
    return OpVariant(get(), b"ok")


#: The environment variable naming the ``psycopg`` suite's PostgreSQL (a libpq
#: connection string); :func:`main` starts a throwaway server when it is unset.
POSTGRES_ENV = "BENCH_POSTGRES"


def pg_query() -> Callable[[], Callable[[], Any]]:
    """A SELECT by primary key through one psycopg 3 connection (autocommit) to PostgreSQL
    on loopback. The table is made here on a connection of its own; the returned function
    opens the timed connection, after the variant has instrumented what it does."""
    import psycopg

    dsn = os.environ[POSTGRES_ENV]
    with psycopg.connect(dsn, autocommit=True) as setup:
        setup.execute("CREATE TABLE IF NOT EXISTS item (id integer PRIMARY KEY, name text)")
        setup.execute("INSERT INTO item VALUES (42, 'lamp') ON CONFLICT DO NOTHING")

    def connect() -> Callable[[], Any]:
        cursor = psycopg.connect(dsn, autocommit=True).cursor()

        def call() -> Any:
            cursor.execute("SELECT name FROM item WHERE id = %s", (42,))
            row = cursor.fetchone()
            return None if row is None else row[0]

        return call

    return connect


def setup_pg_bare() -> OpVariant:
    return OpVariant(pg_query()(), "lamp")


def setup_pg_incumbent() -> OpVariant:
    from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor

    connect = pg_query()
    provider, exported = otel_sdk()
    PsycopgInstrumentor().instrument(tracer_provider=provider)
    return OpVariant(connect(), "lamp", None, exported)


def setup_pg_sightline() -> OpVariant:
    probe = samples(sightline_metrics(), "db_client_operation_duration_seconds_count")
    return OpVariant(pg_query()(), "lamp", probe)


def orm_query(instrument: Callable[[], None] | None = None) -> Callable[[], Any]:
    """``Item.objects.get(pk=42).name`` through Django's ORM on a SQLite file. The table is
    made with the sqlite3 module before ``instrument`` runs; Django opens its connection
    on the first query."""
    import atexit
    import shutil
    import sqlite3
    import tempfile

    import django
    from django.conf import settings
    from django.db import models

    directory = tempfile.mkdtemp(prefix="bench-django-")
    atexit.register(shutil.rmtree, directory, True)  # the worker process's own file
    path = os.path.join(directory, "db.sqlite3")
    setup = sqlite3.connect(path)
    with setup:  # commits
        setup.execute("CREATE TABLE bench_item (id integer PRIMARY KEY, name text)")
        setup.execute("INSERT INTO bench_item VALUES (42, 'lamp')")
    setup.close()
    if instrument is not None:
        instrument()
    settings.configure(
        SECRET_KEY="bench",
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": path}},
        INSTALLED_APPS=[],
    )
    django.setup()

    class Item(models.Model):  # type: ignore[misc]
        name = models.TextField()

        class Meta:
            app_label = "bench"

    return lambda: Item.objects.get(pk=42).name


def setup_orm_bare() -> OpVariant:
    return OpVariant(orm_query(), "lamp")


def setup_orm_incumbent() -> OpVariant:
    from opentelemetry.instrumentation.sqlite3 import SQLite3Instrumentor

    provider, exported = otel_sdk()
    call = orm_query(lambda: SQLite3Instrumentor().instrument(tracer_provider=provider))
    return OpVariant(call, "lamp", None, exported)


def setup_orm_sightline() -> OpVariant:
    probe = samples(sightline_metrics(), "db_client_operation_duration_seconds_count")
    return OpVariant(orm_query(), "lamp", probe)


VARIANTS: dict[str, Callable[[], OpVariant]] = {
    "sqla_bare": setup_sqla_bare,
    "sqla_incumbent": setup_sqla_incumbent,
    "sqla_sightline": setup_sqla_sightline,
    "redis_bare": setup_redis_bare,
    "redis_incumbent": setup_redis_incumbent,
    "redis_sightline": setup_redis_sightline,
    "pg_bare": setup_pg_bare,
    "pg_incumbent": setup_pg_incumbent,
    "pg_sightline": setup_pg_sightline,
    "orm_bare": setup_orm_bare,
    "orm_incumbent": setup_orm_incumbent,
    "orm_sightline": setup_orm_sightline,
    **{
        f"{client}_{stack}": functools.partial(client_variant, client, stack)
        for client in HTTP_CLIENTS
        for stack in ("bare", "incumbent", "sightline")
    },
}


def worker(name: str, calls: int, warmup: int) -> dict[str, Any]:
    """µs per call of the variant's operation."""
    variant = VARIANTS[name]()
    call = variant.call
    # The variant's setup ran operations of its own (a CREATE, a SET): counted from here.
    before = variant.recorded() if variant.recorded is not None else 0.0
    for _ in range(warmup):
        call()
    gc.collect()
    start = time.perf_counter_ns()
    for _ in range(calls):
        result = call()
    elapsed = time.perf_counter_ns() - start
    if result != variant.expected:
        raise SystemExit(f"{name}: got {result!r}, not {variant.expected!r}")
    total = warmup + calls
    if variant.recorded is not None and variant.recorded() - before != total:
        raise SystemExit(f"{name}: {variant.recorded() - before} counted for {total} calls")
    out: dict[str, Any] = {"us_per_request": elapsed / calls / 1000}
    if variant.exported is not None:
        out["spans"] = spans = variant.exported()
        out["spans_share"] = spans / total
        check_exported(name, spans, total, 1.0)
    return out


def client_suite(client: str, what: str, *libraries: str) -> Suite:
    """An outgoing-HTTP suite: each variant GETs from :data:`HTTP_SERVER` in another
    process over a kept-alive connection."""
    return versus(
        client,
        f"Outgoing HTTP: a {what} to a loopback server in another process",
        rounds=10,
        requests=5000,
        warmup=500,
        libraries=libraries,
        unit="request",
        request="GET /items/42 (kept-alive connection)",
    )


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[str]:
    """A PostgreSQL server (Debian's package, the newest installed) in a temporary
    directory, on a loopback port, trusting local connections, for the ``psycopg`` suite;
    yields its connection string. As root it runs as the ``postgres`` account."""
    import shutil
    import socket
    import tempfile

    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: p.parts)
    if not found:
        raise SystemExit(
            f"psycopg suite: no PostgreSQL server (apt-get install postgresql), "
            f"or name one in {POSTGRES_ENV} (a libpq connection string)"
        )
    bin_dir, base = found[-1].parent, Path(tempfile.mkdtemp(prefix="bench-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        import pwd

        account = pwd.getpwnam("postgres")
        os.chown(base, account.pw_uid, account.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data = base / "data"
    subprocess.run(
        [*as_user, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres",
         "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = open(base / "postgres.log", "wb")  # noqa: SIM115 (closed below)
    server = subprocess.Popen(
        [*as_user, str(bin_dir / "postgres"), "-D", str(data), "-p", str(port),
         "-k", str(base), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    said = (base / "postgres.log").read_text(errors="replace")[-2000:]
                    raise SystemExit(f"psycopg suite: PostgreSQL did not start:\n{said}") from None
                time.sleep(0.1)
        yield f"host=127.0.0.1 port={port} user=postgres dbname=postgres"
    finally:
        server.terminate()
        server.wait(30)
        log.close()
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def postgres() -> Iterator[None]:
    """The ``psycopg`` suite's server for its runs: the one :data:`POSTGRES_ENV` names,
    else a throwaway one, named there while the suite runs."""
    if POSTGRES_ENV in os.environ:
        yield
        return
    with throwaway_postgres() as dsn:
        os.environ[POSTGRES_ENV] = dsn
        try:
            yield
        finally:
            del os.environ[POSTGRES_ENV]


SUITES: dict[str, Suite] = {
    "sqlalchemy": versus(
        "sqla",
        "SQLAlchemy: a SELECT on in-memory SQLite",
        rounds=10,
        requests=20000,
        warmup=2000,
        libraries=("sqlalchemy", "opentelemetry-instrumentation-sqlalchemy"),
        unit="statement",
        request="SELECT name FROM item WHERE id = 42",
    ),
    "http_client": client_suite(
        "http",
        "GET through requests",
        "requests",
        "urllib3",
        "opentelemetry-instrumentation-requests",
    ),
    "httpx": client_suite(
        "httpx",
        "GET through a synchronous httpx Client",
        "httpx",
        "opentelemetry-instrumentation-httpx",
    ),
    "urllib3": client_suite(
        "urllib3",
        "GET through a urllib3 PoolManager",
        "urllib3",
        "opentelemetry-instrumentation-urllib3",
    ),
    "aiohttp": client_suite(
        "aiohttp",
        "GET through an aiohttp ClientSession",
        "aiohttp",
        "opentelemetry-instrumentation-aiohttp-client",
    ),
    "redis": versus(
        "redis",
        "Redis: a GET through redis-py on an in-process Redis (fakeredis)",
        rounds=10,
        requests=20000,
        warmup=2000,
        libraries=("redis", "fakeredis", "opentelemetry-instrumentation-redis"),
        unit="command",
        request="GET user:42",
    ),
    "psycopg": versus(
        "pg",
        "psycopg 3: a SELECT by primary key on PostgreSQL over loopback",
        rounds=10,
        requests=5000,
        warmup=500,
        libraries=("psycopg", "opentelemetry-instrumentation-psycopg"),
        unit="statement",
        request="SELECT name FROM item WHERE id = 42 (one connection, autocommit)",
        server=postgres,
    ),
    "django_orm": versus(
        "orm",
        "Django ORM: Item.objects.get(pk=42) on a SQLite file",
        rounds=10,
        requests=10000,
        warmup=1000,
        libraries=("django", "opentelemetry-instrumentation-sqlite3"),
        unit="statement",
        request="Item.objects.get(pk=42).name",
    ),
}
