"""Redis (redis-py, sync and asyncio): every command measured, and cache hits and misses.

- ``db_client_operation_duration_seconds{db_system_name="redis"}``: one observation per
  command, by command name (``GET``, ``HSET``, ...; one that is not a command name is
  ``_OTHER``) and error (the exception's class, empty on success). A pipeline is one
  operation, ``PIPELINE`` (``MULTI`` for a transaction).
- ``cache_lookups_total{db_system_name="redis", cache_result}``: ``GET`` counts a hit
  when the key held a value and a miss when it did not; ``MGET`` counts each key (reads
  inside a pipeline are not counted as lookups). Redis Cluster clients are not measured.

``Redis.execute_command`` and ``Pipeline.execute`` are wrapped on their classes (sync and
asyncio) and put back by ``uninstall``. Commands Sightline sends itself (reading a
queue's depth, from its ``sightline-*`` threads) are not counted, nor those that wait for
data (:data:`BLOCKING`): their time is a queue's idleness, not Redis's.
"""

from __future__ import annotations

import re
import threading
from typing import Any

from .. import _db, _state
from ._base import DidNotEnable, Integration, Patch
from ._patches import timed, timed_async

try:
    from redis.client import Pipeline, Redis
except ImportError:
    raise DidNotEnable("redis is not installed") from None
_async: Any
try:
    import redis.asyncio.client as _async
except ImportError:  # redis-py before 4.2
    _async = None

SYSTEM = "redis"
OTHER = "_OTHER"
#: A command name (``GET``), or a command and its subcommand as redis-py sends some.
_COMMAND = re.compile(r"[A-Z][A-Z0-9_.|-]{0,31}(?: [A-Z][A-Z0-9_-]{0,31})?")
_LOOKUPS = frozenset(("GET", "MGET"))
#: Commands that wait for data or replicas: their time is how long a list stayed empty (an
#: RQ worker waiting for a job), not Redis's latency. Not counted, nor XREAD with BLOCK.
BLOCKING = frozenset(
    (
        "BLPOP", "BRPOP", "BRPOPLPUSH", "BLMOVE", "BLMPOP", "BZPOPMIN", "BZPOPMAX", "BZMPOP",
        "WAIT", "WAITAOF",
    )
)  # fmt: skip


def operation(args: tuple[Any, ...]) -> str:
    name = args[0] if args else ""
    if isinstance(name, (bytes, bytearray)):
        name = bytes(name).decode("ascii", "replace")
    name = str(name).upper()
    return name if _COMMAND.fullmatch(name) else OTHER


def _ours() -> bool:
    return threading.current_thread().name.startswith("sightline-")


def _end(context: Any, result: Any, error: str, seconds: float) -> None:
    agent, name = context
    _db.record(agent, SYSTEM, name, error, seconds)  # no query text: values are data
    if error or name not in _LOOKUPS:
        return
    if name == "GET":
        hit = result is not None
        agent.metrics.cache_lookup(SYSTEM, int(hit), int(not hit))
    elif isinstance(result, list):
        misses = sum(value is None for value in result)
        agent.metrics.cache_lookup(SYSTEM, len(result) - misses, misses)


def _beginning(name_of: Any) -> Any:
    def begin(args: tuple[Any, ...]) -> Any:
        agent = _state.current
        if agent is None or _ours():
            return None
        try:
            name = name_of(args[0], args[1:])  # before running: a pipeline resets itself
        except Exception:  # an argument whose str() fails: the command still runs
            name = OTHER
        return None if name is None else (agent, name)

    return begin


def _sync(original: Any, name_of: Any) -> Any:
    return timed(original, _beginning(name_of), _end, "redis.measure")


def _async_wrapper(original: Any, name_of: Any) -> Any:
    return timed_async(original, _beginning(name_of), _end, "redis.measure")


def _command_name(client: Any, args: tuple[Any, ...]) -> str | None:
    name = operation(args)
    if name in BLOCKING:
        return None
    if name in ("XREAD", "XREADGROUP") and any(_word(arg) == b"BLOCK" for arg in args[1:]):
        return None  # XREAD ... BLOCK waits for data, as BLPOP does
    return name


def _word(arg: Any) -> bytes:
    if isinstance(arg, bytes):
        return arg.upper()
    return arg.upper().encode("ascii", "ignore") if isinstance(arg, str) else b""


def _pipeline_name(pipeline: Any, args: tuple[Any, ...]) -> str | None:
    if not getattr(pipeline, "command_stack", True):
        return None  # an empty pipeline sends nothing
    # `is_transaction` in the asyncio client, `transaction` in the sync one (where the
    # asyncio pipeline has the client's `transaction()` method instead); MULTI called by
    # hand makes a transaction of either.
    flags = (
        getattr(pipeline, "is_transaction", None),
        getattr(pipeline, "transaction", None),
        getattr(pipeline, "explicit_transaction", None),
    )
    return "MULTI" if any(flag is True for flag in flags) else "PIPELINE"


def _targets() -> list[tuple[Any, str, Any]]:
    """(class, method, wrapper factory) for every method measured: commands, pipelines,
    and the commands a pipeline sends at once (WATCH and the reads after it)."""
    found: list[tuple[Any, str, Any]] = [
        (Redis, "execute_command", lambda f: _sync(f, _command_name)),
        (Pipeline, "execute", lambda f: _sync(f, _pipeline_name)),
        (Pipeline, "immediate_execute_command", lambda f: _sync(f, _command_name)),
    ]
    if _async is not None:
        found += [
            (_async.Redis, "execute_command", lambda f: _async_wrapper(f, _command_name)),
            (_async.Pipeline, "execute", lambda f: _async_wrapper(f, _pipeline_name)),
            (
                _async.Pipeline,
                "immediate_execute_command",
                lambda f: _async_wrapper(f, _command_name),
            ),
        ]
    return [(cls, name, wrap) for cls, name, wrap in found if name in cls.__dict__]


class RedisIntegration(Integration):
    name = "redis"
    library = "redis"
    minimum_version = "4.2"
    patches = tuple(Patch(cls, method, wrap) for cls, method, wrap in _targets())


INTEGRATION = RedisIntegration
