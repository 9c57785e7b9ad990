"""Getting telemetry out without ever making the app wait: a bounded queue and an HTTP pusher.

:class:`BatchQueue` takes items from app threads in O(1) and never blocks them: past
its bounds (a number of items and a number of bytes), new items are dropped and
counted (``drop newest``, as OpenTelemetry's batch processor and most log shippers
do). One daemon thread drains it in batches capped by count and bytes, at least every
``interval`` seconds, and hands each batch to a send function. :func:`push` is that
function's HTTP half: gzip, one deadline for each whole request (connecting, sending
and the answer: a backend that dribbles its answer a byte at a time fails it like a
silent one), at most :data:`MAX_RESPONSE_BYTES` of any answer read, retries with
exponential backoff and jitter on connection errors, 429 and 5xx, none on other 4xx.
Closing flushes what it can before a deadline and then gives up, so shutdown is
bounded even when the backend is down or hung.
"""

from __future__ import annotations

import binascii

# Loaded now, not by the first name lookup on a background thread: a process forking
# while that thread imported it would leave the module's import lock held in the child,
# and the child's first lookup of a name (the app's, say) would wait for ever.
import encodings.idna  # noqa: F401
import logging
import os
import random
import threading
import time
import urllib.parse
import zlib
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from . import _fork, _safety

if TYPE_CHECKING:
    import ssl

    from ._transport import Deadlined
    from .metrics import Counter

logger = logging.getLogger("sightline")
T = TypeVar("T")

_WARN_EVERY_SECONDS = 60.0
_last_warned: dict[tuple[str, str], float] = {}
#: The most of a backend's answer that is read; a longer one ends its connection.
MAX_RESPONSE_BYTES = 64 * 1024


def split_credentials(url: str) -> tuple[str, str | None, str | None]:
    """``url`` without its ``user:password@`` part, and that user and password (decoded),
    so credentials are sent as an ``Authorization`` header and never shown in a message."""
    split = urllib.parse.urlsplit(url)
    if split.username is None and "@" not in split.netloc:
        return url, None, None
    host = split.netloc.rpartition("@")[2]
    clean = urllib.parse.urlunsplit((split.scheme, host, split.path, split.query, split.fragment))
    user = urllib.parse.unquote(split.username or "")
    password = urllib.parse.unquote(split.password) if split.password is not None else None
    return clean, user, password


def basic_auth(user: str, password: str | None) -> str:
    pair = f"{user}:{password or ''}".encode()
    return "Basic " + binascii.b2a_base64(pair, newline=False).decode()


def gzipped(body: bytes, level: int) -> bytes:
    """``body`` as one gzip member (what ``gzip.compress`` writes, with no timestamp),
    made by zlib directly: the gzip module is not loaded at start-up for this."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, 31)  # 31: the gzip container
    return compressor.compress(body) + compressor.flush()


def warn_rate_limited(signal: str, cause: str, message: str, *args: object) -> None:
    """Log a warning at most once a minute per (signal, cause): a dead backend is one line."""
    key = (signal, cause)
    now = time.monotonic()
    last = _last_warned.get(key)
    if last is None or now - last >= _WARN_EVERY_SECONDS:
        _last_warned[key] = now
        logger.warning(message, *args)


class ExportStats:
    """Self-metrics of one signal's export path (see docs/metrics.md)."""

    def __init__(
        self, signal: str, exported: Counter, dropped: Counter, retried: Counter, failures: Counter
    ) -> None:
        self.signal = signal
        self._exported = exported.labels(signal)
        self._dropped = dropped
        self._retried = retried
        self._failures = failures
        # Drops can come once per item from app threads: their children are cached.
        self._children: dict[tuple[str, str], Any] = {}
        self.closed = False

    def exported(self, n: int) -> None:
        if not self.closed:
            self._exported.inc(n)

    def dropped(self, reason: str, n: int) -> None:
        if n and not self.closed:
            child = self._children.get(("dropped", reason))
            if child is None:
                child = self._children[("dropped", reason)] = self._dropped.labels(
                    self.signal, reason
                )
            child.inc(n)

    def retried(self, reason: str, n: int) -> None:
        if not self.closed:
            self._retried.labels(self.signal, reason).inc(n)

    def failed(self, reason: str) -> None:
        if not self.closed:
            self._failures.labels(self.signal, reason).inc()


class PushError(Exception):
    """A push that did not deliver; ``reason`` is a metric label, ``retry`` says if worth it."""

    def __init__(self, reason: str, retry: bool, detail: str, status: int = 0) -> None:
        super().__init__(detail)
        self.reason = reason
        self.retry = retry
        self.status = status  # the HTTP status, when the backend answered


class Endpoint:
    """Where one signal is pushed, over one keep-alive HTTP(S) connection.

    The connection is opened on first use, reused while the backend keeps it open and
    dropped after any failure, so a push costs no TCP or TLS handshake in the steady
    state. ``HTTP(S)_PROXY`` and ``NO_PROXY`` are honoured as urllib honours them.
    Only the export thread of one queue posts to an endpoint; after fork the child
    starts without the parent's connection.
    """

    def __init__(
        self,
        url: str,
        headers: Mapping[str, str],
        timeout: float,
        gzip: bool = True,
        tls: ssl.SSLContext | None = None,
        ca_setting: str = "",
    ) -> None:
        url, user, password = split_credentials(url)
        self.tls = tls  # None: the system's trust store, as urllib would use
        # What an untrusted certificate's warning names as the fix.
        self._tls_hint = f"; set {ca_setting} to the CA that signed it" if ca_setting else ""
        self.url = url  # never holds credentials: it is shown in warnings
        self.headers = dict(headers)
        if user is not None and not any(k.lower() == "authorization" for k in headers):
            self.headers["Authorization"] = basic_auth(user, password)
        self.timeout = timeout
        self.gzip = gzip
        self._connection: Deadlined | None = None
        self._target = "/"
        self.date: str | None = None
        _fork.track(self)

    def _after_fork(self) -> None:
        self.close()  # closes this process's copy of the parent's socket, not the parent's

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    def post(self, body: bytes, content_type: str, timeout: float) -> None:
        """POST once, all of it within ``timeout``; raises :class:`PushError` classified
        for metrics and retry."""
        headers = {"Content-Type": content_type, "User-Agent": "sightline", **self.headers}
        if self.gzip:
            # zlib's fast levels: on span batches, level 3 compresses within 1.5% of
            # level 5's size in two thirds of its time (about 1 µs a span against 1.5).
            body = gzipped(body, 3)
            headers["Content-Encoding"] = "gzip"
        url = self.url
        net = transport()
        try:
            status = self._exchange(net, body, headers, timeout)
        except TimeoutError:
            raise PushError("timeout", True, f"no answer from {url} in {timeout:.1f}s") from None
        except net.SSLCertVerificationError as error:
            # Retrying cannot make an untrusted certificate trusted.
            raise PushError(
                "tls", False, f"cannot trust {url}: {error.verify_message}{self._tls_hint}"
            ) from None
        except net.SSLError as error:
            raise PushError("tls", True, f"TLS with {url} failed: {error.reason}") from None
        except (OSError, net.HTTPException) as error:
            raise PushError("connection", True, f"cannot reach {url}: {error}") from None
        except ValueError as error:  # a URL or header the HTTP client refuses: retrying won't help
            raise PushError("invalid_request", False, f"cannot send to {url}: {error}") from None
        if 200 <= status < 300:
            return
        if status == 429:
            raise PushError("http_429", True, f"HTTP 429 from {url}", status)
        if status >= 500:
            raise PushError("http_5xx", True, f"HTTP {status} from {url}", status)
        # Other 4xx, and redirects (not followed): sending the same again won't help.
        raise PushError("http_4xx", False, f"HTTP {status} from {url}", status)

    def _exchange(
        self, net: ModuleType, body: bytes, headers: dict[str, str], timeout: float
    ) -> int:
        deadline = time.monotonic() + timeout
        connection = self._connection
        if connection is not None:
            try:
                return self._send(connection, body, headers, deadline)
            except (net.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                pass  # the backend closed the idle connection: once more on a fresh one
        connection, self._target, extra = net.connect(self.url, self.tls, net.remaining(deadline))
        self._connection = connection
        return self._send(connection, body, {**headers, **extra}, deadline)

    def _send(
        self,
        connection: Deadlined,
        body: bytes,
        headers: dict[str, str],
        deadline: float,
    ) -> int:
        try:
            connection.deadline = deadline
            connection.request("POST", self._target, body, headers)
            response = connection.getresponse()
            response.read(MAX_RESPONSE_BYTES)
        except BaseException:
            self._connection = None
            connection.close()
            raise
        self.date = response.getheader("Date")  # the backend's clock, for `sightline doctor`
        if response.will_close or not response.isclosed():  # closing or left unread
            self._connection = None
            connection.close()
        return response.status


def transport() -> ModuleType:
    """The HTTP(S) client (:mod:`sightline._transport`), loaded by the first push."""
    return _fork.load(f"{__package__}._transport")


class Retrying:
    """Backoff policy: ``base * 2**attempt`` with full jitter, capped, for ``max_attempts``."""

    def __init__(self, base: float = 0.5, cap: float = 10.0, max_attempts: int = 6) -> None:
        self.base = base
        self.cap = cap
        self.max_attempts = max_attempts

    def delay(self, attempt: int) -> float:
        return random.uniform(0, min(self.cap, self.base * (2**attempt)))


def push(
    endpoint: Endpoint,
    body: bytes,
    content_type: str,
    items: int,
    stats: ExportStats,
    stop: threading.Event,
    deadline: Callable[[], float | None],
    policy: Retrying,
) -> bool:
    """POST ``body`` holding ``items`` items, retrying as :class:`Retrying` says.

    Returns True once delivered; False when dropped (counted in ``stats``). Never raises.
    ``deadline()`` is the monotonic time by which everything must end (during shutdown).
    """
    for attempt in range(policy.max_attempts):
        limit = deadline()
        timeout = endpoint.timeout
        if limit is not None:
            timeout = min(timeout, limit - time.monotonic())
            if timeout <= 0.05:
                stats.dropped("shutdown", items)
                return False
        try:
            endpoint.post(body, content_type, timeout)
        except PushError as error:
            stats.failed(error.reason)
            warn_rate_limited(
                stats.signal,
                error.reason,
                "sightline: %s export failed (%s); the app is not affected",
                stats.signal,
                error,
            )
            if not error.retry:
                stats.dropped(error.reason, items)
                return False
            if attempt + 1 >= policy.max_attempts:
                break
            stats.retried(error.reason, items)
            pause = policy.delay(attempt)
            # During shutdown the stop event is set and wait() returns at once: the
            # remaining attempts run back to back until the deadline ends them.
            stop.wait(pause)
            continue
        stats.exported(items)
        return True
    stats.dropped("retries_exhausted", items)
    return False


class BatchQueue(Generic[T]):
    """A queue bounded in items and, with ``size_of``, in bytes, drained by one daemon
    thread into ``send(batch)``.

    ``put`` never blocks and never raises. The thread is started lazily, and again in a
    forked child (threads do not survive fork), so pre-forking servers work.

    The thread wakes when a batch is full or an interval has passed, and sends what is
    queued. Once a whole interval has brought nothing it sleeps with no timer, until the
    next ``put`` wakes it. A thread woken by a timer wants the GIL at once and, while the
    app's threads are busy, waits for it through a storm of futile wakeups that slow
    them down: an idle queue costs the app nothing, and a busy one one wakeup an interval.
    """

    def __init__(
        self,
        name: str,
        send: Callable[[Sequence[T]], None],
        stats: ExportStats,
        max_items: int,
        batch_items: int,
        interval: float,
        size_of: Callable[[T], int] | None = None,
        batch_bytes: int | None = None,
        on_stop: Callable[[], None] | None = None,
        max_bytes: int | None = None,
    ) -> None:
        self.name = name
        self._on_stop = on_stop
        self._send = send
        self.stats = stats
        self.max_items = max_items
        self.max_bytes = max_bytes
        # Bytes queued, as size_of counts them; changed with the queue, under _bytes_lock.
        self.bytes = 0
        self._bytes_lock = threading.Lock()
        self._batch_items = batch_items
        self._batch_bytes = batch_bytes
        self._size_of = size_of
        self._interval = interval
        self._items: deque[T] = deque()
        self._wake = threading.Event()
        # Set by the thread before it sleeps with no timer on an empty queue; the put
        # that finds it set clears it and wakes the thread.
        self._idle = False
        self.stopping = threading.Event()
        self._deadline: float | None = None
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._closed = False
        self._lock = threading.Lock()
        self._in_flight = 0
        _fork.track(self)

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: T) -> None:
        if self._closed:
            self.stats.dropped("shutdown", 1)
            return
        if len(self._items) >= self.max_items:
            self.stats.dropped("queue_full", 1)
            return
        if self.max_bytes is not None and self._size_of is not None:
            size = self._size_of(item)
            with self._bytes_lock:
                if self.bytes + size > self.max_bytes:
                    self.stats.dropped("queue_full", 1)
                    return
                self.bytes += size
                self._items.append(item)
        else:
            self._items.append(item)
        if self._thread is None:
            self._start()
        elif self._idle:
            self._idle = False
            self._wake.set()
        elif len(self._items) >= self._batch_items and not self._wake.is_set():
            # Set once: the thread takes everything queued before it waits again, and
            # setting a set event would take its lock and notify on every put.
            self._wake.set()

    def _after_fork(self) -> None:
        # Threads do not survive fork and a lock may have been held by one of them; what
        # was queued belongs to the parent, which sends it.
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._items = deque()
        self.bytes = 0
        self._bytes_lock = threading.Lock()
        self._wake = threading.Event()
        self._idle = False
        self.stopping = threading.Event()
        self._thread = None
        self._in_flight = 0

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(
                target=self._run, name=f"sightline-{self.name}", daemon=True
            )
            self._thread.start()

    def deadline(self) -> float | None:
        return self._deadline

    def _run(self) -> None:
        while not self.stopping.is_set():
            if len(self._items) < self._batch_items:
                self._wake.wait(self._interval)  # a batch fills, or the interval ends
            self._wake.clear()
            if self._items:
                self._drain()
                continue
            # A whole interval brought nothing: sleep with no timer, so a queue fed all
            # the time wakes once an interval, as before, and an idle one never. Said
            # before the second look, so a put either is seen here or sees it.
            self._idle = True
            if not self._items and not self.stopping.is_set():
                self._wake.wait()  # the next put, or close(), wakes it
            self._idle = False
            self._wake.clear()
        self._drain()  # the final flush, bounded by the deadline close() set
        if self._on_stop is not None:
            with _safety.internal_errors(f"export.{self.name}.stop"):
                self._on_stop()

    def _drain(self) -> None:
        while self._items:
            if self._deadline is not None and time.monotonic() >= self._deadline:
                return  # join() counts what is left
            batch = self._take()
            self._in_flight = len(batch)
            try:
                self._send(batch)
            except Exception as exc:
                self.stats.dropped("internal_error", len(batch))
                _safety.report(f"export.{self.name}", exc)
            finally:
                self._in_flight = 0

    def _take(self) -> list[T]:
        with self._bytes_lock:
            batch: list[T] = []
            size = 0
            items = self._items
            size_of = self._size_of
            limit = self._batch_bytes
            while items and len(batch) < self._batch_items:
                if size_of is not None:
                    item_size = size_of(items[0])
                    if limit is not None and batch and size + item_size > limit:
                        break
                    size += item_size
                batch.append(items.popleft())
            if self.max_bytes is not None:
                self.bytes -= size
            return batch

    def close(self, deadline: float) -> None:
        """Flush what can be sent before ``deadline`` (monotonic), then stop. Bounded."""
        self.begin_close(deadline)
        self.join(deadline)

    def begin_close(self, deadline: float) -> None:
        """Stop taking items and start the final flush; :meth:`join` waits for it."""
        self._closed = True
        self._deadline = deadline
        self.stopping.set()
        self._wake.set()

    def join(self, deadline: float) -> None:
        """Wait for the final flush until ``deadline``; whatever is still queued is dropped.

        A send still hung at the deadline is left to its daemon thread (its timeout ends
        it; the process may exit first), so this never waits past the deadline.
        """
        thread = self._thread
        if thread is not None and thread.is_alive():
            thread.join(max(0.0, deadline - time.monotonic()))
        left = 0
        while True:
            try:
                self._items.popleft()
            except IndexError:
                break
            left += 1
        with self._bytes_lock:
            self.bytes = 0
        if thread is not None and thread.is_alive():
            # A batch still being sent is given up on: counted now, and the stats stop
            # listening, so a late outcome is not counted twice.
            left += self._in_flight
            self.stats.dropped("shutdown", left)
            self.stats.closed = True
        else:
            self.stats.dropped("shutdown", left)
