"""The /metrics server: one socket shared by a server's processes and kept between them,
never a second one on the port, and scrapers that cannot hold it up."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from sightline import _scrape
from sightline._process import process_key
from sightline._scrape import MetricsServer

from .helpers import free_port, wait_until, wakeups
from .servers import ROOT

PROCESS = """
import os, sys, time
from pathlib import Path
from sightline import _keeper, _scrape
from sightline._process import process_key
from sightline._scrape import MetricsServer
from sightline._store import Store

path, port, server, mode = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
if mode == "deaf":  # no sibling ever answers it
    _keeper.receive = lambda address: None
    _scrape.OBTAIN_TIMEOUT = 1.0

def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"pid {os.getpid()}".encode()]

store = Store.open(path.parent, path.name)
metrics = MetricsServer(("127.0.0.1", port), app, store, process_key(os.getpid()), server)
metrics.start()
metrics.serving.wait(5)
inode = os.fstat(metrics._socket.fileno()).st_ino if metrics.serving.is_set() else "none"
print(inode, flush=True)
sys.stdin.readline()
metrics.close()
"""


def listening(port: int) -> set[int]:
    """Inodes of the TCP sockets listening on ``port`` (a shared socket is one)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == "0A":
            found.add(int(fields[9]))
    return found


def keepers(server: int) -> list[psutil.Process]:
    key = process_key(server)
    return [
        p
        for p in psutil.process_iter(["cmdline"])
        if "sightline._keeper" in (p.info["cmdline"] or []) and key in p.info["cmdline"]
    ]


class Process:
    """One process of a pretend server, holding a MetricsServer on the shared store."""

    def __init__(self, store: Path, port: int, server: int, mode: str = "") -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", PROCESS, str(store), str(port), str(server), mode or "-"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        self.inode = int(line) if line.isdigit() else None

    def stop(self) -> str:
        """Let it close and exit; returns what it wrote on stderr."""
        _, err = self.proc.communicate("\n", timeout=30)
        return err


@pytest.fixture
def server() -> Iterator[subprocess.Popen[bytes]]:
    """A stand-in for the server's main process (gunicorn's master)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc
    proc.kill()
    proc.wait()


def test_processes_share_one_socket_kept_between_them(
    tmp_path: Path, server: subprocess.Popen[bytes]
) -> None:
    """Successive processes of one server get the same listening socket, also after all of
    them have exited (the keeper held it); the port never holds more than one."""
    store, port = tmp_path / "store", free_port()
    store.mkdir(mode=0o700)
    first = Process(store, port, server.pid)
    second = Process(store, port, server.pid)
    assert first.inode is not None
    assert second.inode == first.inode
    assert listening(port) == {first.inode}
    first.stop()
    second.stop()
    assert listening(port) == {first.inode}  # no process of the server: the keeper holds it
    third = Process(store, port, server.pid)
    assert third.inode == first.inode
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
        assert response.read().decode() == f"pid {third.proc.pid}"
    third.stop()


def test_a_process_no_sibling_answers_never_binds_a_second_socket(
    tmp_path: Path, server: subprocess.Popen[bytes]
) -> None:
    """A process whose siblings do not hand the socket over (too slow, say) finds the port
    taken and gives up on metrics, saying so, instead of binding a second socket that
    nobody would accept on."""
    store, port = tmp_path / "store", free_port()
    store.mkdir(mode=0o700)
    first = Process(store, port, server.pid)
    deaf = Process(store, port, server.pid, mode="deaf")
    assert deaf.inode is None
    assert listening(port) == {first.inode}
    assert "cannot serve metrics" in deaf.stop()
    first.stop()


def test_the_keeper_exits_with_the_server(tmp_path: Path, server: subprocess.Popen[bytes]) -> None:
    """The keeper holds the socket while the server's main process lives, then exits and
    the port is free."""
    store, port = tmp_path / "store", free_port()
    store.mkdir(mode=0o700)
    Process(store, port, server.pid).stop()
    [keeper] = keepers(server.pid)
    assert listening(port)
    server.kill()
    server.wait()
    assert wait_until(lambda: not keeper.is_running() or keeper.status() == "zombie", 10)
    assert wait_until(lambda: not listening(port), 5)


def serve_here(monkeypatch: pytest.MonkeyPatch, **limits: Any) -> tuple[MetricsServer, int]:
    for name, value in limits.items():
        monkeypatch.setattr(_scrape, name, value)
    port = free_port()

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"metrics"]

    server = MetricsServer(("127.0.0.1", port), app).start()
    return server, port


def test_a_scraper_that_dribbles_is_cut_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """A client sending its request a byte at a time, each within the per-read timeout,
    is cut off once the whole request has taken the connection timeout."""
    server, port = serve_here(monkeypatch, CONNECTION_TIMEOUT=1.0)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            started = time.monotonic()
            cut = False
            for byte in b"GET /metrics HTTP/1.1\r\nHost: x\r\n" * 10:
                try:
                    client.sendall(bytes([byte]))
                except OSError:
                    cut = True
                    break
                time.sleep(0.3)
                if time.monotonic() - started > 4:
                    break
            if not cut:
                client.settimeout(1)
                cut = client.recv(1) == b""
        assert cut
        assert time.monotonic() - started < 3.5
    finally:
        server.close()


def test_a_busy_server_answers_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """With every scrape slot held by slow clients, a new scrape is answered 503 at once
    instead of waiting in line."""
    server, port = serve_here(monkeypatch, MAX_CONNECTIONS=1)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as slow:
            slow.sendall(b"GET /metrics HTTP/1.1\r\n")  # and never the rest
            time.sleep(0.3)
            started = time.monotonic()
            with pytest.raises(urllib.error.HTTPError) as busy:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
            assert busy.value.code == 503
            busy.value.close()
            assert time.monotonic() - started < 1.5
    finally:
        server.close()


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads /proc")
def test_the_server_thread_sleeps_with_no_timer_between_scrapes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Between scrapes the metrics server's thread is never woken (a thread woken by a
    timer slows a busy app down), and the next scrape is still answered."""
    server, port = serve_here(monkeypatch)
    try:
        for _ in range(2):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as got:
                assert got.read() == b"metrics"
            time.sleep(0.2)  # the scrape's own thread ends, and its deadline is dropped
            thread = server._thread
            assert thread is not None
            before = wakeups(thread)
            time.sleep(1.6)  # a 0.5 s timer would have woken it three times
            assert wakeups(thread) == before
    finally:
        server.close()


def test_closing_cuts_scrapes_past_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    """close() returns by its deadline even with a scraper holding a connection open."""
    server, port = serve_here(monkeypatch)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as slow:
        slow.sendall(b"GET /metrics HTTP/1.1\r\n")
        time.sleep(0.3)
        started = time.monotonic()
        server.close(time.monotonic() + 0.5)
        assert time.monotonic() - started < 1.5


REUSEPORT_HOLDER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen()
print("bound", flush=True)
sys.stdin.readline()
"""


@pytest.mark.parametrize(("holder_is_sibling", "joins"), [(True, True), (False, False)])
def test_a_process_serving_alone_joins_only_its_own_servers_port(
    holder_is_sibling: bool, joins: bool
) -> None:
    """A worker that serves its own socket (its server's directory refused) shares the
    port with SO_REUSEPORT only with processes of its own server; a port another process
    holds, even with SO_REUSEPORT, is refused: up is False and the error names the holder."""
    port = free_port()
    holder = subprocess.Popen(
        [sys.executable, "-c", REUSEPORT_HOLDER, str(port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == b"bound\n"
        # The holder's parent is this test process: the "server" when it is a sibling.
        server = __import__("os").getpid() if holder_is_sibling else 1
        metrics = MetricsServer(("127.0.0.1", port), None, server=server, reuse_port=True)
        metrics.start()
        assert wait_until(lambda: metrics.up is not None, timeout=10)
        assert metrics.up is joins
        metrics.close()
    finally:
        holder.communicate(timeout=5)


def test_the_error_for_a_taken_port_names_the_service_and_pid(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A port held by another Sightline service is reported with that service's name, the
    holder's pid and the setting that moves this one."""
    port = free_port()
    code = (
        "import sightline, sys; "
        f"sightline.init(service='billing', metrics_addr='127.0.0.1:{port}'); "
        "print('up', flush=True); sys.stdin.readline()"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == b"up\n"
        assert wait_until(lambda: bool(_scrape._port.served_service("127.0.0.1", port)), 10)
        metrics = MetricsServer(("127.0.0.1", port), None, service="shop")
        metrics.start()
        assert wait_until(lambda: metrics.up is not None, timeout=10)
        assert metrics.up is False
        metrics.close()
    finally:
        holder.communicate(timeout=5)
    [error] = [r.getMessage() for r in caplog.records if "cannot serve metrics" in r.getMessage()]
    assert f"port {port} is held by the service 'billing' (pid {holder.pid} " in error
    assert "SIGHTLINE_METRICS_ADDR" in error
