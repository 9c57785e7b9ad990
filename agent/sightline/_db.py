"""What the database integrations share: a statement's operation name, OpenTelemetry's
spelling of a system, and which drivers are measured at the driver itself (so that an ORM
over them does not count a statement twice)."""

from __future__ import annotations

import re
from typing import Any

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
