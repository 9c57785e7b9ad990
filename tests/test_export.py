"""The bounded export queue and HTTP pusher shared by spans and logs."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import pytest
from prometheus_client import CollectorRegistry, Counter
from sightline import _export
from sightline._export import BatchQueue, Endpoint, ExportStats, Retrying, push

from .helpers import free_port, wait_until, wakeups
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


def test_each_full_batch_wakes_the_export_thread_before_its_interval(
    registry: CollectorRegistry,
) -> None:
    """Every time a full batch is waiting, the export thread sends it at once rather than
    at its (here one-minute) interval, and nothing put meanwhile is left behind."""
    sent: list[list[int]] = []
    arrived = threading.Condition()

    def send(batch: Sequence[int]) -> None:
        with arrived:
            sent.append(list(batch))
            arrived.notify_all()

    queue: BatchQueue[int] = BatchQueue(
        "logs", send, make_stats(registry), max_items=100, batch_items=4, interval=60.0
    )

    def delivered(count: int) -> Callable[[], bool]:
        return lambda: sum(len(batch) for batch in sent) >= count

    for round_ in range(5):
        for i in range(4 * round_, 4 * round_ + 4):
            queue.put(i)
        with arrived:
            assert arrived.wait_for(delivered(4 * round_ + 4), timeout=5)
    assert [i for batch in sent for i in batch] == list(range(20))
    queue.close(time.monotonic() + 5)


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads /proc")
def test_an_empty_queue_sleeps_with_no_timer_and_wakes_on_the_next_put(
    registry: CollectorRegistry,
) -> None:
    """Once its queue is empty the export thread is never woken by its interval (a timer
    would slow a busy app down), and an item put after a long idle still goes out within
    about one interval, without close()."""
    sent: list[int] = []
    queue: BatchQueue[int] = BatchQueue(
        "logs", sent.extend, make_stats(registry), max_items=100, batch_items=50, interval=0.05
    )
    for round_ in range(3):
        queue.put(round_)
        assert wait_until(lambda: round_ in sent, timeout=2, every=0.01)  # noqa: B023
        time.sleep(0.3)  # an interval with nothing, and then asleep for good
        thread = queue._thread
        assert thread is not None
        before = wakeups(thread)
        time.sleep(0.6)  # twelve intervals
        assert wakeups(thread) == before
    queued = time.monotonic()
    queue.put(99)
    assert wait_until(lambda: 99 in sent, timeout=2, every=0.005)
    assert time.monotonic() - queued < 0.5
    queue.close(time.monotonic() + 5)
    assert sent == [0, 1, 2, 99]


def test_nothing_put_from_many_threads_is_left_behind_by_a_sleeping_thread(
    registry: CollectorRegistry,
) -> None:
    """Items put from several threads while the export thread drains and goes back to
    sleep are all sent within the interval, none stranded until close()."""
    sent: list[int] = []
    queue: BatchQueue[int] = BatchQueue(
        "logs",
        sent.extend,
        make_stats(registry),
        max_items=100_000,
        batch_items=500,
        interval=0.005,
    )

    def producer(first: int) -> None:
        for i in range(first, first + 3000):
            queue.put(i)
            if i % 97 == 0:  # let the queue run dry now and then, at times for intervals
                time.sleep(0.02 if i % 970 == 0 else 0.002)

    producers = [threading.Thread(target=producer, args=(n * 3000,)) for n in range(4)]
    for thread in producers:
        thread.start()
    for thread in producers:
        thread.join()
    assert wait_until(lambda: len(sent) == 12_000, timeout=5, every=0.01), len(sent)
    assert sorted(sent) == list(range(12_000))
    queue.close(time.monotonic() + 5)


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


_opened: list[Endpoint] = []


def endpoint(url: str, timeout: float = 1.0, path: str = "/loki/api/v1/push") -> Endpoint:
    """An endpoint closed (with its kept-alive connection) when the test ends."""
    opened = Endpoint(url=url + path, headers={}, timeout=timeout)
    _opened.append(opened)
    return opened


@pytest.fixture(autouse=True)
def _close_endpoints() -> Iterator[None]:
    yield
    while _opened:
        _opened.pop().close()


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


def deliver(endpoint: Endpoint, stats: ExportStats, times: int = 1) -> bool:
    return all(
        push(
            endpoint,
            b'{"streams":[]}',
            "application/json",
            1,
            stats,
            threading.Event(),
            lambda: None,
            Retrying(base=0.01, cap=0.02, max_attempts=2),
        )
        for _ in range(times)
    )


def test_pushes_reuse_one_connection(registry: CollectorRegistry) -> None:
    """Against a keep-alive backend, successive pushes travel over one TCP connection."""
    backend = Backend(keep_alive=True).start()
    try:
        stats = make_stats(registry)
        assert deliver(endpoint(backend.url), stats, times=4)
        assert len(backend.loki_pushes) == 4
        assert len(set(backend.peers)) == 1
    finally:
        backend.stop()


def test_push_reopens_a_connection_the_backend_closed(registry: CollectorRegistry) -> None:
    """A kept-alive connection the backend closed while idle is reopened: nothing fails."""
    backend = Backend(keep_alive=True, drop_idle=True).start()
    try:
        stats = make_stats(registry)
        target = endpoint(backend.url)
        for _ in range(3):
            assert deliver(target, stats)
            time.sleep(0.05)  # let the close reach the client side
        assert len(backend.loki_pushes) == 3
        assert len(set(backend.peers)) == 3
        assert get(registry, "failures", signal="logs", reason="connection") == 0
        assert get(registry, "exported", signal="logs") == 3
    finally:
        backend.stop()


def test_push_goes_through_the_environment_proxy(
    registry: CollectorRegistry, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With HTTP_PROXY set, an http endpoint is reached through the proxy, by absolute URL."""
    for name in ("NO_PROXY", "no_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", "http://user:p%40ss@" + backend.url.removeprefix("http://"))
    url = "http://loki.example.invalid:3100/loki/api/v1/push"
    assert deliver(endpoint(url, path=""), make_stats(registry))
    assert backend.targets == [url]
    assert backend.headers[0]["proxy-authorization"] == "Basic dXNlcjpwQHNz"  # user:p@ss
    assert len(backend.loki_pushes) == 1


def test_push_bypasses_the_proxy_for_no_proxy_hosts(
    registry: CollectorRegistry, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host listed in NO_PROXY is reached directly even with HTTP_PROXY set."""
    for name in ("no_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")  # nothing listens
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert deliver(endpoint(backend.url), make_stats(registry))
    assert backend.targets == ["/loki/api/v1/push"]


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


class RawBackend:
    """A loopback server speaking raw bytes: ``answer(connection)`` writes whatever it
    likes after reading the request headers; what it manages to write is counted."""

    def __init__(self, answer: Callable[[socket.socket], None]) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.answer = answer
        self.written = 0
        self.stopped = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(connection,), daemon=True).start()

    def _one(self, connection: socket.socket) -> None:
        with connection:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = connection.recv(65536)
                if not chunk:
                    return
                data += chunk
            # The whole body too: closing with some of it unread would reset the
            # connection, and the client would see a reset instead of the answer.
            head, _, body = data.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(body) < length:
                chunk = connection.recv(65536)
                if not chunk:
                    return
                body += chunk
            try:
                self.answer(connection)
            except OSError:
                pass  # the client gave up, as it should

    def send(self, connection: socket.socket, data: bytes) -> None:
        connection.sendall(data)
        self.written += len(data)

    def close(self) -> None:
        self.stopped.set()
        self.listener.close()


def test_a_backend_dribbling_its_answer_fails_the_push_on_time(
    registry: CollectorRegistry,
) -> None:
    """A backend sending its answer one byte at a time (each byte within the timeout) is
    a timeout once the whole request has taken the timeout: counted as a failure."""

    def dribble(connection: socket.socket) -> None:
        for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n":
            if backend.stopped.wait(0.1):
                return
            backend.send(connection, bytes([byte]))

    backend = RawBackend(dribble)
    try:
        started = time.monotonic()
        ok = push(
            endpoint(backend.url, timeout=0.5),
            b"{}",
            "application/json",
            4,
            make_stats(registry),
            threading.Event(),
            lambda: None,
            Retrying(base=0.01, cap=0.01, max_attempts=1),
        )
        elapsed = time.monotonic() - started
    finally:
        backend.close()
    assert not ok
    assert elapsed < 1.5, elapsed
    assert get(registry, "failures", signal="logs", reason="timeout") == 1
    assert get(registry, "dropped", signal="logs", reason="retries_exhausted") == 4


def test_only_a_bounded_part_of_a_huge_answer_is_read(registry: CollectorRegistry) -> None:
    """An answer announcing 1.5 GB is read no further than the bound: the push succeeds,
    the connection is dropped, and the backend cannot push more than a few buffers."""

    def flood(connection: socket.socket) -> None:
        backend.send(connection, b"HTTP/1.1 200 OK\r\nContent-Length: 1500000000\r\n\r\n")
        block = b"x" * 65536
        while not backend.stopped.is_set():
            backend.send(connection, block)

    backend = RawBackend(flood)
    try:
        target = endpoint(backend.url, timeout=5)
        assert deliver(target, make_stats(registry))
        assert target._connection is None  # not kept: the rest of the answer is unread
        time.sleep(0.3)
        # Kernel buffers on both sides take some; a read of the whole answer would not stop.
        assert backend.written < 16 * 1024 * 1024, backend.written
    finally:
        backend.close()


def test_queue_is_bounded_in_bytes(registry: CollectorRegistry) -> None:
    """With the backend stuck, 100 KB lines fill the byte bound long before the item
    bound; the rest are dropped and counted, and memory held stays under the bound."""
    release = threading.Event()
    queue: BatchQueue[str] = BatchQueue(
        "logs",
        lambda batch: release.wait(5),
        make_stats(registry),
        max_items=12_000,
        max_bytes=1_000_000,
        batch_items=1,
        interval=0.01,
        size_of=len,
    )
    line = "x" * 100_000
    for _ in range(200):
        queue.put(line)
        assert queue.bytes <= 1_000_000
    assert len(queue) <= 10
    assert get(registry, "dropped", signal="logs", reason="queue_full") >= 189
    release.set()
    queue.close(time.monotonic() + 5)


def test_credentials_in_a_url_are_sent_as_basic_auth_and_never_shown(
    registry: CollectorRegistry, backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """A URL's user:password becomes the Authorization header; the warning about a failed
    push names the URL without them."""
    _export._last_warned.clear()
    authority = backend.url.removeprefix("http://")
    stats = make_stats(registry)
    target = endpoint(f"http://me:s3cr%40t@{authority}")
    assert deliver(target, stats)
    assert backend.headers[0]["authorization"] == "Basic bWU6czNjckB0"  # me:s3cr@t
    assert "@" not in backend.targets[0]
    dead = endpoint(f"http://me:s3cr%40t@127.0.0.1:{free_port()}")
    with caplog.at_level(logging.WARNING, logger="sightline"):
        deliver(dead, stats)
    assert caplog.records
    assert "s3cr" not in caplog.text
    assert "me:" not in caplog.text


@pytest.mark.parametrize(
    "answer",
    [
        (b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n", b""),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\n", b"hello"),
        (b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n", b"until the connection closes"),
    ],
)
def test_an_answer_that_closes_the_connection_is_delivered_once(
    registry: CollectorRegistry, answer: tuple[bytes, bytes]
) -> None:
    """An answer that ends with the connection (Connection: close, or HTTP/1.0 read to the
    end), its body arriving after a pause: the push succeeds at the first attempt and the
    backend receives it once."""
    head, body = answer
    received: list[int] = []

    def answer_then_close(connection: socket.socket) -> None:
        received.append(1)
        backend.send(connection, head)
        time.sleep(0.05)
        backend.send(connection, body)

    backend = RawBackend(answer_then_close)
    try:
        stats = make_stats(registry)
        assert deliver(endpoint(backend.url), stats)
        assert received == [1]
        assert get(registry, "exported", signal="logs") == 1
        assert get(registry, "failures", signal="logs", reason="connection") == 0
    finally:
        backend.close()


@pytest.mark.parametrize("body", [b"", b"x", bytes(range(256)) * 400])
def test_a_gzipped_body_is_one_gzip_member_of_the_same_bytes(body: bytes) -> None:
    """What the pusher compresses is a gzip member the gzip module reads back whole, at
    least as small as ``gzip.compress`` makes it at the same level for repetitive data."""
    import gzip

    packed = _export.gzipped(body, 3)
    assert packed[:2] == b"\x1f\x8b"  # the gzip magic number
    assert gzip.decompress(packed) == body
    if len(body) > 1000:
        assert len(packed) <= len(gzip.compress(body, compresslevel=3))
