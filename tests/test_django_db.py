"""Django's database statements measured, on SQLite and on a real PostgreSQL (psycopg 3,
where the driver's integration counts them, once), each in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .servers import ROOT, postgres

pytest.importorskip("django")

SCRIPT = """
import json, sys
import sightline
from prometheus_client import CollectorRegistry

registry = CollectorRegistry()
sightline.init(service="t", registry=registry, metrics_addr="off", traces=False, logs=False)
import django
from django.conf import settings
settings.configure(DATABASES={"default": json.loads(sys.argv[1])}, USE_TZ=True)
django.setup()
from django.db import IntegrityError, connection


def counts():
    found = {}
    for family in registry.collect():
        for s in family.samples:
            if s.name == "db_client_operation_duration_seconds_count":
                key = "|".join((s.labels["db_system_name"], s.labels["db_operation_name"],
                                s.labels["error_type"]))
                found[key] = s.value
    return found


connection.ensure_connection()
before = counts()
with connection.cursor() as cursor:
    cursor.execute("CREATE TABLE item (id integer PRIMARY KEY, name text)")
    cursor.execute("INSERT INTO item (id, name) VALUES (%s, %s)", [1, "lamp"])
    cursor.executemany("INSERT INTO item (id, name) VALUES (%s, %s)", [(2, "mug"), (3, "cup")])
    cursor.execute("SELECT count(*) FROM item")
    assert cursor.fetchone()[0] == 3
    try:
        cursor.execute("INSERT INTO item (id, name) VALUES (%s, %s)", [1, "again"])
    except IntegrityError:
        pass
    cursor.execute("DROP TABLE item")
after = counts()
print(json.dumps({k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}))
"""


def run(database: dict[str, Any]) -> dict[str, float]:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(database)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    found: dict[str, float] = json.loads(result.stdout.strip().splitlines()[-1])
    return found


def expected(system: str, error: str) -> dict[str, float]:
    return {
        f"{system}|CREATE|": 1.0,
        f"{system}|INSERT|": 2.0,  # one execute, one executemany
        f"{system}|SELECT|": 1.0,
        f"{system}|INSERT|{error}": 1.0,
        f"{system}|DROP|": 1.0,
    }


def test_django_statements_on_sqlite(tmp_path: Path) -> None:
    """Through Django's cursor (the ORM's path) on SQLite: one observation per statement,
    by vendor, first keyword and Django's error class."""
    database = {"ENGINE": "django.db.backends.sqlite3", "NAME": str(tmp_path / "db.sqlite3")}
    assert run(database) == expected("sqlite", "IntegrityError")


def test_django_statements_on_postgresql_are_counted_once() -> None:
    """On a real PostgreSQL through psycopg 3, the same statements are counted once each
    (by the driver's integration, with psycopg's error class), not by Django as well."""
    pytest.importorskip("psycopg")
    with postgres() as address:
        user, _, rest = address.partition("@")
        hostport, _, name = rest.partition("/")
        host, _, port = hostport.partition(":")
        database = {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": name, "USER": user, "HOST": host, "PORT": port,
        }  # fmt: skip
        assert run(database) == expected("postgresql", "UniqueViolation")
