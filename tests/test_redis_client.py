"""Redis commands measured (redis-py, sync and asyncio) against a real redis-server:
`db_client_operation_duration_seconds` per command and error, pipelines as one
operation, cache hits and misses from GET and MGET."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
import sightline
from prometheus_client import CollectorRegistry

redis = pytest.importorskip("redis")


def operations(registry: CollectorRegistry) -> dict[tuple[str, str, str], float]:
    found = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == "db_client_operation_duration_seconds_count":
                labels = sample.labels
                key = (labels["db_system_name"], labels["db_operation_name"], labels["error_type"])
                found[key] = sample.value
    return found


def lookups(registry: CollectorRegistry) -> dict[str, float]:
    return {
        result: registry.get_sample_value(
            "cache_lookups_total", {"db_system_name": "redis", "cache_result": result}
        )
        or 0.0
        for result in ("hit", "miss")
    }


EXPECTED = {
    ("redis", "SET", ""): 2.0,
    ("redis", "GET", ""): 2.0,
    ("redis", "MGET", ""): 1.0,
    ("redis", "MULTI", ""): 1.0,
    ("redis", "PIPELINE", ""): 1.0,
    ("redis", "INCRBY", "ResponseError"): 1.0,  # what redis-py sends for incr()
}


def test_sync_commands_pipelines_errors_and_lookups_are_counted_exactly(
    agent: CollectorRegistry, broker: str
) -> None:
    """Each command is one observation by name and error; a pipeline or transaction is one;
    GET and MGET count hits and misses per key; the error reaches the caller unchanged; a
    command that waits for data (BLPOP) is not counted."""
    client = redis.Redis.from_url(broker)
    client.set("a", "x")
    client.set("b", "y")
    assert client.get("a") == b"x"
    assert client.get("missing") is None
    assert client.mget("a", "missing", "other") == [b"x", None, None]
    with client.pipeline() as transaction:
        transaction.get("a").get("b").execute()
    with client.pipeline(transaction=False) as pipeline:
        pipeline.get("a").execute()
    with pytest.raises(redis.ResponseError):
        client.incr("a")
    assert client.blpop(["empty"], timeout=0.1) is None  # waits for data: not counted
    client.close()
    assert operations(agent) == EXPECTED
    assert lookups(agent) == {"hit": 2.0, "miss": 3.0}


def test_asyncio_client_is_counted_the_same(agent: CollectorRegistry, broker: str) -> None:
    """redis.asyncio: the same commands give the same counts as the sync client."""
    import redis.asyncio as aioredis

    async def run() -> None:
        client = aioredis.Redis.from_url(broker)
        await client.set("a", "x")
        await client.set("b", "y")
        await client.get("a")
        await client.get("missing")
        await client.mget("a", "missing", "other")
        async with client.pipeline() as transaction:
            await transaction.get("a").get("b").execute()
        async with client.pipeline(transaction=False) as pipeline:
            await pipeline.get("a").execute()
        with pytest.raises(redis.ResponseError):
            await client.incr("a")
        await client.aclose()

    asyncio.run(run())
    assert operations(agent) == EXPECTED
    assert lookups(agent) == {"hit": 2.0, "miss": 3.0}


def test_sightlines_own_commands_and_uninstall_leave_no_count(
    registry: CollectorRegistry, broker: str
) -> None:
    """Commands from Sightline's own threads (queue depth readers) are not the app's and
    are not counted; after shutdown redis-py's methods are its own again."""
    from redis.client import Pipeline, Redis

    originals = (Redis.execute_command, Pipeline.execute)
    sightline.init(service="test", registry=registry, metrics_addr="off", traces=False, logs=False)
    client = redis.Redis.from_url(broker)
    done: list[Any] = []
    reader = threading.Thread(target=lambda: done.append(client.llen("q")), name="sightline-queues")
    reader.start()
    reader.join(10)
    assert done == [0]
    assert operations(registry) == {}
    client.llen("q")
    assert operations(registry) == {("redis", "LLEN", ""): 1.0}
    sightline.shutdown()
    assert (Redis.execute_command, Pipeline.execute) == originals
    client.close()


def test_transaction_helper_counts_its_watch_and_its_transaction(
    agent: CollectorRegistry, broker: str
) -> None:
    """Redis.transaction(): the WATCH and the read it sends at once are counted, then the
    MULTI; an empty pipeline, which sends nothing, is not."""
    client = redis.Redis.from_url(broker)
    client.set("n", 1)

    def bump(pipe: Any) -> None:
        value = int(pipe.get("n"))
        pipe.multi()
        pipe.set("n", value + 1)

    client.transaction(bump, "n")
    client.pipeline().execute()
    assert client.get("n") == b"2"
    client.close()
    assert operations(agent) == {
        ("redis", "SET", ""): 1.0,
        ("redis", "WATCH", ""): 1.0,
        ("redis", "GET", ""): 2.0,
        ("redis", "MULTI", ""): 1.0,
    }
