"""The bounded export queue and HTTP pusher shared by spans and logs."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

import pytest
from prometheus_client import CollectorRegistry, Counter
from sightline import _export
from sightline._export import BatchQueue, Endpoint, ExportStats, Retrying, push

from .helpers import free_port
from .receivers import Backend


def make_stats(registry: CollectorRegistry, signal: str = "logs") -> ExportStats:
    def counter(name: str, labels: list[str]) -> Counter:
        return Counter(name, name, labels, registry=registry)

    return ExportStats(
        signal,
        counter("exported", ["signal"]),
        counter("dropped", ["signal", "reason"]),
        counter("retried", ["signal", "reason"]),
        counter("failures", ["signal", "reason"]),
    )


def get(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name + "_total", labels) or 0.0


def test_queue_is_bounded_and_drops_newest(registry: CollectorRegistry) -> None:
    """Past its bound the queue drops new items, counts them, and never blocks the caller."""
    release = threading.Event()
    sent: list[list[int]] = []

    def send(batch: Sequence[int]) -> None:
        release.wait(5)
        sent.append(list(batch))

    queue: BatchQueue[int] = BatchQueue(
        "logs", send, make_stats(registry), max_items=10, batch_items=4, interval=0.01
    )
    started = time.monotonic()
    for i in range(100):
        queue.put(i)
        assert len(queue) <= 10
    assert time.monotonic() - started < 0.5
    release.set()
    queue.close(time.monotonic() + 5)
    delivered = [i for batch in sent for i in batch]
    assert delivered == sorted(delivered), "order is kept"
    assert delivered[:4] == [0, 1, 2, 3]
    assert get(registry, "dropped", signal="logs", reason="queue_full") == 100 - len(delivered)
    assert all(len(batch) <= 4 for batch in sent)


def test_batches_are_capped_by_bytes(registry: CollectorRegistry) -> None:
    """A batch never holds more bytes than allowed (a single oversized item goes alone)."""
    sent: list[list[str]] = []
    queue: BatchQueue[str] = BatchQueue(
        "logs",
        lambda batch: sent.append(list(batch)),
        make_stats(registry),
        max_items=100,
        batch_items=50,
        interval=0.2,
        size_of=len,
        batch_bytes=10,
    )
    for item in ["aaaa", "bbbb", "cccc", "d" * 30, "ee"]:
        queue.put(item)
    queue.close(time.monotonic() + 5)
    assert sent == [["aaaa", "bbbb"], ["cccc"], ["d" * 30], ["ee"]]


def test_close_is_bounded_when_send_hangs(registry: CollectorRegistry) -> None:
    """close() returns by its deadline even if a send never returns; the rest is counted."""
    hang = threading.Event()
    queue: BatchQueue[int] = BatchQueue(
        "traces",
        lambda batch: hang.wait(30),
        make_stats(registry, "traces"),
        max_items=100,
        batch_items=5,
        interval=0.01,
    )
    for i in range(20):
        queue.put(i)
    time.sleep(0.1)
    started = time.monotonic()
    queue.close(time.monotonic() + 0.5)
    assert time.monotonic() - started < 1.0
    # 15 still queued and the 5 of the hung batch: every item accounted for, exactly once.
    assert get(registry, "dropped", signal="traces", reason="shutdown") == 20
    hang.set()
    time.sleep(0.1)
    assert get(registry, "exported", signal="traces") == 0
    assert get(registry, "dropped", signal="traces", reason="shutdown") == 20


def endpoint(url: str, timeout: float = 1.0) -> Endpoint:
    return Endpoint(url=url + "/loki/api/v1/push", headers={}, timeout=timeout)


def test_push_retries_then_delivers(registry: CollectorRegistry, backend: Backend) -> None:
    """429 and 5xx are retried with backoff until the backend accepts."""
    backend.script = [503, 429]
    stats = make_stats(registry)
    ok = push(
        endpoint(backend.url),
        b'{"streams":[]}',
        "application/json",
        7,
        stats,
        threading.Event(),
        lambda: None,
        Retrying(base=0.01, cap=0.05),
    )
    assert ok
    assert backend.answered == [503, 429]
    assert get(registry, "retried", signal="logs", reason="http_5xx") == 7
    assert get(registry, "retried", signal="logs", reason="http_429") == 7
    assert get(registry, "exported", signal="logs") == 7


def test_push_does_not_retry_other_4xx(registry: CollectorRegistry, backend: Backend) -> None:
    """A 400 is final: one attempt, the items are dropped and counted."""
    backend.script = [400, 400]
    ok = push(
        endpoint(backend.url),
        b"{}",
        "application/json",
        3,
        make_stats(registry),
        threading.Event(),
        lambda: None,
        Retrying(base=0.01, cap=0.05),
    )
    assert not ok
    assert backend.answered == [400]
    assert get(registry, "dropped", signal="logs", reason="http_4xx") == 3


def test_push_gives_up_after_its_attempts(registry: CollectorRegistry) -> None:
    """Against a closed port the pusher tries a bounded number of times, then drops."""
    url = f"http://127.0.0.1:{free_port()}"
    ok = push(
        endpoint(url),
        b"{}",
        "application/json",
        2,
        make_stats(registry),
        threading.Event(),
        lambda: None,
        Retrying(base=0.01, cap=0.02, max_attempts=3),
    )
    assert not ok
    assert get(registry, "failures", signal="logs", reason="connection") == 3
    assert get(registry, "dropped", signal="logs", reason="retries_exhausted") == 2


def test_push_times_out_on_a_silent_backend(registry: CollectorRegistry, backend: Backend) -> None:
    """A backend that accepts and never answers costs one timeout per attempt."""
    backend.hang.set()
    started = time.monotonic()
    ok = push(
        endpoint(backend.url, timeout=0.3),
        b"{}",
        "application/json",
        1,
        make_stats(registry),
        threading.Event(),
        lambda: None,
        Retrying(base=0.01, cap=0.02, max_attempts=2),
    )
    assert not ok
    assert time.monotonic() - started < 2
    assert get(registry, "failures", signal="logs", reason="timeout") == 2


def test_warnings_are_rate_limited(
    registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    """A dead backend produces one warning per cause per minute, not one per attempt."""
    _export._last_warned.clear()
    url = f"http://127.0.0.1:{free_port()}"
    stats = make_stats(registry)
    with caplog.at_level(logging.WARNING, logger="sightline"):
        for _ in range(3):
            push(
                endpoint(url),
                b"{}",
                "application/json",
                1,
                stats,
                threading.Event(),
                lambda: None,
                Retrying(base=0.01, cap=0.01, max_attempts=4),
            )
    warnings = [r for r in caplog.records if r.name == "sightline"]
    assert len(warnings) == 1
    assert "the app is not affected" in warnings[0].getMessage()
