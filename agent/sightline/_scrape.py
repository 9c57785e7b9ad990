"""Serving ``/metrics``: a small HTTP server on a background thread, and, for the
processes of one server, one listening socket they all share.

Alone, a process binds ``SIGHTLINE_METRICS_ADDR`` and serves it. The processes of a
multi-process server (gunicorn's workers, ``uvicorn --workers``) all answer scrapes
on that one address, and are recycled all the time. If each bound a socket of its own
(``SO_REUSEPORT``), every worker exit would fail the scrapes queued on its socket: the
kernel drops them when it closes. Here there is one socket, bound by the first process
and handed by any process holding it to the next one that starts (``_keeper``). A
process that exits closes only its own descriptor: connections waiting in the queue
stay there and the others accept them. A new process asks the live ones, under the
directory's lock, and binds a socket itself only when none answers; it then starts the
keeper, which holds the socket while no worker does. The shared socket is bound without
``SO_REUSEPORT``, so the port can never hold a second one (a socket nobody accepts on
would swallow the scrapes the kernel routes to it): a process that finds the port taken
asks its siblings again, for a while.

Connections are accepted without blocking, as several processes wait on the socket
and one takes each; each is served on its own short-lived thread, at most
:data:`MAX_CONNECTIONS` at a time (past that a scrape is answered 503 at once: the loop
never waits, as it also hands the socket over), each within :data:`CONNECTION_TIMEOUT`
in all. Closing waits for scrapes in progress until the shutdown deadline, then cuts them.
"""

from __future__ import annotations

import contextlib

# Loaded now, not by the first name lookup on a background thread: a process forking
# while that thread imported it would leave the module's import lock held in the child,
# and the child's first lookup of a name (the app's, say) would wait for ever.
import encodings.idna  # noqa: F401
import errno
import functools
import logging
import os
import selectors
import socket
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from . import _fork, _keeper, _port
from ._process import process_key, running
from ._store import Store

if TYPE_CHECKING:
    import subprocess

logger = logging.getLogger("sightline")

#: Scrapes served at the same time; past it a scrape is answered 503 at once.
MAX_CONNECTIONS = 8
#: Longest a scrape may take in all, from its connection to the last byte of the answer.
CONNECTION_TIMEOUT = 10.0
#: Longest a process starting waits for the shared socket while siblings offer it but do
#: not hand it over, and while the port is taken and nobody offers it (another program's).
OBTAIN_TIMEOUT = 10.0
FOREIGN_TIMEOUT = 1.0
_BUSY = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
#: Processes started to keep the socket, held so they are not reported as leaked.
_keepers: list[subprocess.Popen[bytes]] = []


@functools.cache
def _handler() -> Any:
    """wsgiref's request handler, quiet: loaded by the first scrape, with the HTTP server
    modules it needs (docs/performance.md, "Start-up")."""
    simple_server = _fork.load("wsgiref.simple_server")

    class QuietHandler(simple_server.WSGIRequestHandler):  # type: ignore[misc,name-defined]
        def log_message(self, format: str, *args: Any) -> None:
            pass  # one line per scrape on stderr helps nobody

    return QuietHandler


class _Environ:
    """What wsgiref's request handler needs of a server, without a server of its own."""

    def __init__(self, app: Any, host: str, port: int) -> None:
        self.application = app
        self.server_name = host
        self.server_port = port
        self.base_environ = {
            "SERVER_NAME": host,
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_PORT": str(port),
            "REMOTE_HOST": "",
            "CONTENT_LENGTH": "",
            "SCRIPT_NAME": "",
        }

    def get_app(self) -> Any:
        return self.application


class MetricsServer:
    """Serves a WSGI app (prometheus-client's) on ``addr`` from a daemon thread.

    ``store`` and ``key`` (the snapshot directory and this process's key) make the socket
    shared by the server's processes; without them it is this process's own, shared with
    the server's other processes through ``SO_REUSEPORT`` if ``reuse_port``. ``server``
    (the pid of the server's main process) lets a keeper hold a shared socket between
    workers, for as long as that process lives.
    """

    def __init__(
        self,
        addr: tuple[str, int],
        app: Any,
        store: Store | None = None,
        key: str | None = None,
        server: int | None = None,
        reuse_port: bool = False,
        service: str = "",
    ) -> None:
        self.addr = addr
        self.service = service
        #: None while the socket is being obtained, then whether metrics are served.
        self.up: bool | None = None
        self.store = store
        self.key = key
        self.server = server
        self.reuse_port = reuse_port
        self._environ = _Environ(app, addr[0], addr[1])
        self._pid = os.getpid()
        self._socket: socket.socket | None = None
        self._handover: socket.socket | None = None
        self._handover_name: str | None = None
        self._stopping = threading.Event()
        self._wake_read, self._wake_write = socket.socketpair()
        # Scrapes being served: their thread, connection and deadline.
        self._connections: dict[threading.Thread, tuple[socket.socket, float]] = {}
        self._thread: threading.Thread | None = None
        self.serving = threading.Event()  # set once the socket is had

    def set_app(self, app: Any) -> None:
        self._environ.application = app

    def start(self) -> MetricsServer:
        """Serve from a daemon thread. A socket of this process's own is bound at once; a
        shared one is obtained on the thread (it may wait for a sibling). A socket that
        cannot be had is logged, and the app runs on without metrics."""
        failed: OSError | None = None
        if self.store is None or self.key is None:
            try:
                self._socket = self._bind(reuse_port=self.reuse_port)
            except OSError as exc:
                failed = exc  # said from the thread: finding who holds the port takes time
        self._thread = threading.Thread(
            target=self._run, args=(failed,), name="sightline-metrics", daemon=True
        )
        self._thread.start()
        return self

    def _fail(self, exc: OSError) -> None:
        self.up = False
        host, port = self.addr
        cause = exc.strerror or str(exc)
        if exc.errno == errno.EADDRINUSE:
            cause = f"port {port} is {_port.describe(host, port, self.service)}"
        logger.error(
            "sightline: cannot serve metrics on %s:%d: %s. This process serves no metrics "
            "(sightline_metrics_server_up 0) and the app runs on. Give each service its own "
            "port with SIGHTLINE_METRICS_ADDR (or `off`).",
            host,
            port,
            cause,
        )

    def _run(self, failed: OSError | None = None) -> None:
        if failed is not None:
            self._fail(failed)
            return
        if self._socket is None:
            try:
                self._socket = self._obtain()
            except OSError as exc:
                if not self._stopping.is_set():
                    self._fail(exc)
                return
        if self._stopping.is_set():
            return
        self.up = True
        self.serving.set()
        self._serve()

    # -- the socket

    def _obtain(self) -> socket.socket:
        """The server's shared socket: handed over by a live sibling, or bound here when
        none holds it. Without ``SO_REUSEPORT``, so that there is never a second socket
        on the port: one held only by a keeper would swallow the scrapes routed to it."""
        store, key = self.store, self.key
        assert store is not None
        assert key is not None
        address = store.socket_address(f"{key}.sock")
        if address is None:  # no /proc: each process binds its own, as before
            return self._bind(reuse_port=True)
        started = time.monotonic()
        while True:
            with store.lock(".listener.lock", timeout=2.0) as locked:
                listener, offered = self._from_siblings(store)
                if listener is None and locked:
                    try:
                        listener = self._bind(reuse_port=False)
                    except OSError as exc:
                        # Held by a sibling that did not answer in time, or by one just
                        # leaving: ask again, for a while. Nobody offering it means
                        # another program holds the port: that is said soon.
                        waited = time.monotonic() - started
                        limit = OBTAIN_TIMEOUT if offered else FOREIGN_TIMEOUT
                        if exc.errno != errno.EADDRINUSE or waited > limit:
                            raise
                    else:
                        self._start_keeper(store, listener)
                if listener is not None:
                    try:
                        store.unlink(f"{key}.sock")
                        self._handover = _keeper.offer(address)
                        self._handover_name = f"{key}.sock"
                    except OSError as exc:  # the keeper still offers it
                        logger.debug("sightline: cannot offer the metrics socket: %s", exc)
                    return listener
            if time.monotonic() - started > OBTAIN_TIMEOUT:
                raise OSError(errno.EADDRINUSE, "no process of this server hands it over")
            if self._stopping.wait(0.2):
                raise OSError(errno.ECANCELED, "stopped")

    def _bind(self, reuse_port: bool) -> socket.socket:
        host, port = self.addr
        if reuse_port and any(not self._sibling(pid) for pid in _port.holders(host, port)):
            # SO_REUSEPORT would let this process join another service's port, and the
            # kernel would deal the scrapes out between the two.
            raise OSError(errno.EADDRINUSE, os.strerror(errno.EADDRINUSE))
        try:
            family, _, _, _, sockaddr = socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]
        except (socket.gaierror, UnicodeError) as exc:
            raise OSError(errno.EADDRNOTAVAIL, f"cannot resolve {host}: {exc}") from None
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            listener.bind(sockaddr)
            listener.listen(64)
        except BaseException:
            listener.close()
            raise
        listener.setblocking(False)
        return listener

    def _sibling(self, pid: int) -> bool:
        """Whether ``pid`` is another process of this server (its parent is the server's)."""
        if self.server is None or pid == os.getpid():
            return pid == os.getpid()
        try:
            with open(f"/proc/{pid}/stat") as file:
                stat = file.read()
        except OSError:
            return False
        return pid == self.server or stat.rpartition(")")[2].split()[1] == str(self.server)

    def _start_keeper(self, store: Store, listener: socket.socket) -> None:
        server = self.server
        try:
            key = process_key(server) if server is not None else None
        except OSError:
            key = None
        if key is None:
            return
        env = {k: v for k, v in os.environ.items() if k != "SIGHTLINE_LAUNCHER"}
        command = [sys.executable, "-m", "sightline._keeper"]
        command += [str(store.fd), str(listener.fileno()), key]
        try:
            keeper = _fork.spawn(
                command,
                pass_fds=(store.fd, listener.fileno()),
                # None of the app's output: a supervisor waiting for it to end must not
                # wait for the keeper too.
                stdin=_fork.DEVNULL,
                stdout=_fork.DEVNULL,
                stderr=_fork.DEVNULL,
                env=env,
            )
        except OSError as exc:  # workers still hand the socket on; only gaps are at risk
            logger.debug("sightline: cannot start the metrics socket's keeper: %s", exc)
            return
        _keepers.append(keeper)

    def _from_siblings(self, store: Store) -> tuple[socket.socket | None, bool]:
        """The socket from the first live sibling that hands it over, and whether any live
        sibling offers it at all."""
        # Keepers first: they do nothing else, and answer at once.
        offers = sorted(store.names(), key=lambda name: (not name.endswith(_keeper.KEEPER), name))
        offered = False
        for name in offers:
            key = _keeper.offered_by(name)
            if key is None or key == self.key or not running(key):
                continue
            address = store.socket_address(name)
            if address is None:
                break
            offered = True
            listener = _keeper.receive(address)
            if listener is not None and self._matches(listener):
                return listener, True
            if listener is not None:
                listener.close()
        return None, offered

    def _matches(self, listener: socket.socket) -> bool:
        """A handed-over socket listens on the address this process is configured with."""
        try:
            if listener.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) != 1:
                return False
            family, _, _, _, sockaddr = socket.getaddrinfo(
                self.addr[0], self.addr[1], type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]
            bound = listener.getsockname()
            return listener.family == family and bound[:2] == sockaddr[:2]
        except (OSError, UnicodeError):
            return False

    # -- serving

    def _serve(self) -> None:
        listener = self._socket
        assert listener is not None
        with selectors.DefaultSelector() as selector:
            selector.register(listener, selectors.EVENT_READ, self._accept)
            selector.register(self._wake_read, selectors.EVENT_READ, None)
            if self._handover is not None:
                selector.register(self._handover, selectors.EVENT_READ, self._hand_over)
            while not self._stopping.is_set():
                try:
                    events = selector.select(self._end_overdue())
                except OSError:
                    break
                for key, _ in events:
                    if key.data is not None and not self._stopping.is_set():
                        key.data()

    def _accept(self) -> None:
        assert self._socket is not None
        try:
            connection, client = self._socket.accept()
        except (BlockingIOError, InterruptedError):
            return  # another process took it
        except OSError as exc:
            logger.debug("sightline: metrics accept failed: %s", exc)
            time.sleep(0.01)  # out of descriptors: do not spin
            return
        connection.setblocking(True)
        connection.settimeout(CONNECTION_TIMEOUT)
        if len(self._connections) >= MAX_CONNECTIONS:
            # Never wait here: this loop also hands the socket to processes starting.
            with contextlib.suppress(OSError):
                connection.settimeout(0.1)
                connection.sendall(_BUSY)
            connection.close()
            return
        thread = threading.Thread(
            target=self._handle, args=(connection, client), name="sightline-scrape", daemon=True
        )
        self._connections[thread] = (connection, time.monotonic() + CONNECTION_TIMEOUT)
        thread.start()

    def _end_overdue(self) -> float | None:
        """Cut the connections of scrapes past their deadline (a scraper sending a byte
        now and then would otherwise hold a thread for ever); returns the seconds until
        the next deadline, or None (wait for ever) when no scrape is open.

        Between scrapes the thread sleeps with no timeout. A thread that woke on a timer
        would want the GIL at once, and while the app's threads are busy it waits for
        it, woken at every GIL release of theirs only to lose it again: with a 0.5 s
        timer that cost a Flask app logging a line per request about 10 µs a request.
        """
        now = time.monotonic()
        nearest: float | None = None
        for connection, deadline in list(self._connections.values()):
            if now > deadline:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
            elif nearest is None or deadline < nearest:
                nearest = deadline
        return None if nearest is None else nearest - now + 0.01

    def _handle(self, connection: socket.socket, client: Any) -> None:
        try:
            _handler()(connection, client, self._environ)
        except Exception as exc:  # a scraper hanging up: its business, not the app's
            logger.debug("sightline: metrics request failed: %s", exc)
        finally:
            with contextlib.suppress(OSError):
                connection.close()
            self._connections.pop(threading.current_thread(), None)

    def _hand_over(self) -> None:
        assert self._handover is not None
        assert self._socket is not None
        _keeper.hand_over(self._handover, self._socket)

    # -- closing

    def close(self, deadline: float | None = None) -> None:
        """Stop accepting, finish the scrapes in progress until ``deadline``, close."""
        if deadline is None:
            deadline = time.monotonic() + 5.0
        if self._pid != os.getpid():
            # A forked child inherited the descriptors but not the thread: close its copies
            # only (the parent still serves, and still offers its socket).
            for owned in (self._socket, self._handover, self._wake_read, self._wake_write):
                if owned is not None:
                    with contextlib.suppress(OSError):
                        owned.close()
            return
        if self.store is not None and self._handover_name is not None:
            # No longer offered: a process starting now asks one that stays (the keeper).
            with contextlib.suppress(OSError):
                self.store.unlink(self._handover_name)
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._wake_write.send(b"x")
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))
        for scrape in list(self._connections):
            scrape.join(max(0.0, deadline - time.monotonic()))
        for connection, _ in list(self._connections.values()):  # past the deadline: cut
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        if self._handover is not None:
            self._handover.close()
        if self._socket is not None:
            self._socket.close()  # the socket lives on in the other processes holding it
        self._wake_read.close()
        self._wake_write.close()
