"""What the database integrations share: a statement's operation name, OpenTelemetry's
spelling of a system, and which drivers are measured at the driver itself (so that an ORM
over them does not count a statement twice)."""

from __future__ import annotations

import re
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._agent import Agent

OTHER = "_OTHER"
#: The first keyword of a statement, as its operation name; any other is _OTHER.
OPERATIONS = frozenset(
    (
        "SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "WITH", "BEGIN", "COMMIT",
        "ROLLBACK", "SAVEPOINT", "RELEASE", "CREATE", "DROP", "ALTER", "TRUNCATE", "SET",
        "SHOW", "EXPLAIN", "PRAGMA", "COPY", "CALL", "LOCK", "VACUUM", "ANALYZE", "GRANT",
        "REVOKE", "DECLARE", "FETCH", "CLOSE", "LISTEN", "NOTIFY", "REPLACE", "UPSERT",
    )
)  # fmt: skip
#: Names (SQLAlchemy dialects, Django vendors) that OpenTelemetry's db.system.name spells
#: otherwise.
SYSTEMS = {
    "mssql": "microsoft.sql_server",
    "microsoft": "microsoft.sql_server",
    "oracle": "oracle.db",
}

#: True while a library does its own bookkeeping around the app's work (RQ saving a job's
#: state around the job): its statements are measured, not traced, so that a trace shows
#: the app's own calls. Integrations set it around such code and clear it around the
#: app's code inside.
untraced: ContextVar[bool] = ContextVar("sightline_untraced", default=False)

#: Cursor classes whose statements a driver integration measures, and the SQLAlchemy
#: driver names over them: an ORM on top leaves those statements to the driver's.
DRIVER_CURSORS: list[type] = []
DRIVER_NAMES: set[str] = set()


def operation(statement: Any) -> str:
    """The statement's first keyword, after any leading comments; never its text."""
    if isinstance(statement, (bytes, bytearray)):
        statement = bytes(statement[:64]).decode("ascii", "replace")
    if not isinstance(statement, str):
        return OTHER
    text = _COMMENTS.sub("", statement[:256]).lstrip(" \t\r\n(")
    head = text[:64].split(None, 1)
    word = head[0].upper() if head else ""
    return word if word in OPERATIONS else OTHER


#: Comments before a statement's first keyword (``-- name: get_user``, ``/* app:shop */``).
_COMMENTS = re.compile(r"\A(?:\s*(?:--[^\n]*(?:\n|\Z)|/\*.*?\*/))+", re.S)


def system(name: str) -> str:
    return SYSTEMS.get(name, name) if name else "other"


def measured_by_driver(cursor: Any) -> bool:
    return bool(DRIVER_CURSORS) and isinstance(cursor, tuple(DRIVER_CURSORS))


def record(
    agent: Agent, system: str, operation: str, error: str, seconds: float, statement: Any = None
) -> None:
    """One database operation that just ended: its observation, and inside a recorded
    trace a CLIENT span for it, carrying ``statement`` with its literals stripped."""
    agent.metrics.observe_db(system, operation, error, seconds)
    if agent.tracing is None or untraced.get():
        return
    attributes: dict[str, Any] = {"db.system.name": system, "db.operation.name": operation}
    if isinstance(statement, (bytes, bytearray)):
        statement = bytes(statement[:MAX_QUERY_TEXT]).decode("utf-8", "replace")
    if isinstance(statement, str):
        attributes["db.query.text"] = lambda: strip_literals(statement)
    name = operation if operation != OTHER else system
    agent.tracing.client_span(name, attributes, error, seconds)


#: Longest query text a span carries (the rest is cut).
MAX_QUERY_TEXT = 2048
#: String literals ('it''s', E'…', dollar-quoted bodies) and numbers that are not part of
#: a name or a placeholder ($1, :p1): what a span's query text must not show.
_LITERALS = re.compile(
    r"""'(?:[^']|'')*'|\$(\w*)\$.*?\$\1\$|(?<![\w$:.])[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?\b""",
    re.S,
)


def strip_literals(statement: str) -> str:
    """``statement`` with every literal value replaced by ``?``: a query's shape, never
    the data in it."""
    return _LITERALS.sub("?", statement[:MAX_QUERY_TEXT])
