"""Shared fixtures: a fresh agent per test, and internal errors made fatal."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sightline
from prometheus_client import CollectorRegistry
from sightline import _safety


@pytest.fixture(autouse=True)
def internal_errors(request: pytest.FixtureRequest) -> Iterator[list[BaseException]]:
    """Collect what the safety net swallowed; a test fails if anything was, unless it opts out."""
    collected: list[BaseException] = []
    _safety.sink = collected
    try:
        yield collected
    finally:
        _safety.sink = None
        sightline.shutdown()
    if collected and request.node.get_closest_marker("internal_errors_expected") is None:
        raise collected[0]


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def agent(registry: CollectorRegistry) -> Iterator[CollectorRegistry]:
    """An agent with metrics only, in a fresh registry, no background server."""
    sightline.init(service="test", registry=registry, metrics_addr="off", traces=False, logs=False)
    yield registry
    sightline.shutdown()


@pytest.fixture
def backend() -> Iterator[Any]:
    """A loopback OTLP/Loki receiver (see tests/receivers.py)."""
    from .receivers import Backend

    server = Backend().start()
    yield server
    server.stop()


@pytest.fixture
def broker(tmp_path: Any) -> Iterator[str]:
    """A real redis-server on a loopback port, for Celery and RQ; yields its URL."""
    from .servers import redis

    with redis(tmp_path) as url:
        yield url
