"""Starting, probing and stopping the stack's processes.

Each process is started in its own session (so a Ctrl-C in the terminal reaches only
the command that started it) with its output in a log file, and recorded by PID and
start time: a PID the kernel has since given to another program is never signalled.
Stopping signals the whole process group, so gunicorn's and Celery's workers go with
their master.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

# Set on every process the stack starts: how `down` (and the tests) can tell ours apart.
MARKER = "SIGHTLINE_STACK_DIR"

# Debian installs some daemons outside a non-root PATH.
_SEARCH = ("/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/share/grafana/bin")


def find_binary(names: Sequence[str]) -> str | None:
    """The first of ``names`` found on PATH or in the usual system directories."""
    for name in names:
        path = shutil.which(name) or shutil.which(name, path=os.pathsep.join(_SEARCH))
        if path:
            return path
    return None


@dataclass(frozen=True)
class Record:
    """A process the stack started: enough to find it again, and only it."""

    name: str
    pid: int
    started: float  # start time (see started()), to tell a reused PID apart
    log: str
    directory: str = ""  # the state directory, as in the process's MARKER variable

    def process(self) -> psutil.Process | None:
        """The recorded process, if that PID is still it (exited but unreaped included):
        same start time, or (where the start time can only be read against the wall
        clock, which may have been stepped since) the marker in its environment."""
        try:
            proc = psutil.Process(self.pid)
            if abs(started(proc) - self.started) < _SLACK:
                return proc
            if self.directory and _environ(proc).get(MARKER) == self.directory:
                return proc
            return None
        except psutil.Error:
            return None

    def alive(self) -> bool:
        proc = self.process()
        return proc is not None and _running(proc)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "pid": self.pid,
            "started": self.started,
            "log": self.log,
            "directory": self.directory,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Record:
        return cls(
            str(data["name"]),
            int(data["pid"]),
            float(data["started"]),
            str(data["log"]),
            str(data.get("directory", "")),
        )


def _monotonic_start_time() -> bool:
    try:
        psutil.Process().create_time(monotonic=True)  # type: ignore[call-arg,unused-ignore]
        return True
    except TypeError:
        return False


# How far two readings of one process's start time may differ.
_SLACK = 0.01 if _monotonic_start_time() else 1.5


def started(proc: psutil.Process) -> float:
    """When ``proc`` started, in seconds since boot where psutil can tell (7.2 and later
    on Linux): exact, and unmoved by clock changes. The wall-clock start time psutil
    otherwise gives is rebuilt from a boot time the kernel rounds to whole seconds, so it
    can differ by one between two readings."""
    try:
        return float(proc.create_time(monotonic=True))  # type: ignore[call-arg,unused-ignore]
    except TypeError:
        return float(proc.create_time())


def _environ(proc: psutil.Process) -> dict[str, str]:
    try:
        return proc.environ()
    except psutil.Error:
        return {}


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


#: Every process launched here, held: each outlives the call that started it (its record
#: finds it again), and a Popen dropped while its process runs is reported as leaked.
_launched: list[subprocess.Popen[bytes]] = []


def launch(
    name: str, argv: Sequence[str], env: Mapping[str, str], log: Path, cwd: Path | None = None
) -> tuple[subprocess.Popen[bytes], Record]:
    """Start ``argv`` detached, output appended to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            list(argv),
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
        )
    _launched[:] = [held for held in _launched if held.poll() is None]
    _launched.append(proc)
    try:
        start = started(psutil.Process(proc.pid))
    except psutil.Error:
        start = 0.0
    return proc, Record(name, proc.pid, start, str(log), env.get(MARKER, ""))


class NotReady(RuntimeError):
    pass


# Loopback needs no proxy: one set in HTTP_PROXY without a NO_PROXY for 127.0.0.1 would
# otherwise receive every probe.
LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))

#: What reading a stack component's HTTP API can raise: no answer, a broken answer, or
#: JSON of another shape than expected.
API_FAILURES = (
    OSError,
    ValueError,
    KeyError,
    TypeError,
    AttributeError,
    http.client.HTTPException,
)


def get_json(url: str, timeout: float) -> Any:
    """The JSON ``url`` answers, asked without any proxy (the stack is on loopback)."""
    with LOCAL.open(url, timeout=timeout) as response:
        return json.load(response)


def wait_http(url: str, timeout: float, alive: Any = None) -> None:
    """Poll ``url`` until it answers 2xx; ``alive()`` false means the process died."""
    deadline = time.monotonic() + timeout
    while True:
        if alive is not None and not alive():
            raise NotReady(f"exited before {url} answered")
        try:
            with LOCAL.open(url, timeout=1) as response:
                if 200 <= response.status < 300:
                    return
        except (OSError, urllib.error.HTTPError):
            pass
        if time.monotonic() > deadline:
            raise NotReady(f"{url} did not answer within {timeout:.0f} s")
        time.sleep(0.1)


def wait_redis(port: int, timeout: float, alive: Any = None) -> None:
    """Poll a Redis server on loopback until it answers PING."""
    deadline = time.monotonic() + timeout
    while True:
        if alive is not None and not alive():
            raise NotReady(f"exited before port {port} answered PING")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as probe:
                probe.sendall(b"PING\r\n")
                if probe.recv(16).startswith(b"+PONG"):
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise NotReady(f"port {port} did not answer PING within {timeout:.0f} s")
        time.sleep(0.05)


def port_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def holder(port: int) -> str:
    """Who listens on TCP ``port``, as a phrase: the program and its PID, and the state
    directory if it is another Sightline stack's; or why that cannot be seen."""
    try:
        listeners = [
            c
            for c in psutil.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
        ]
    except (psutil.Error, OSError):
        listeners = []
    for conn in listeners:
        if conn.pid is None:
            continue
        try:
            proc = psutil.Process(conn.pid)
            name = proc.name()
        except psutil.Error:
            continue
        directory = _environ(proc).get(MARKER)
        if directory:
            return f"{name} (pid {conn.pid}) of the Sightline stack in {directory}"
        return f"{name} (pid {conn.pid})"
    return (
        "a program this user cannot see (another user's; as root, "
        f"`ss -ltnp 'sport = :{port}'` names it)"
    )


def stop(record: Record, timeout: float = 10.0) -> bool:
    """SIGTERM the process group of ``record``, SIGKILL what is left after ``timeout``.

    Returns False if the process was already gone (or the PID is someone else's now).
    """
    proc = record.process()
    if proc is None:
        return False
    members = _group(proc)
    _signal_group(record.pid, members, signal.SIGTERM)
    left = _wait(members, timeout)
    if left:
        _signal_group(record.pid, left, signal.SIGKILL)
        _wait(left, 5)
    return True


def _wait(members: Sequence[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until every member has exited; an exited process that its parent (not us)
    has yet to reap counts as exited."""
    deadline = time.monotonic() + timeout
    while True:
        left = [m for m in members if _running(m)]
        if not left or time.monotonic() > deadline:
            return left
        psutil.wait_procs(left, timeout=0.1)


def _group(proc: psutil.Process) -> list[psutil.Process]:
    members = [proc]
    try:
        members += proc.children(recursive=True)
    except psutil.Error:
        pass
    return members


def _signal_group(pgid: int, members: Sequence[psutil.Process], signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except OSError:
        pass
    # Children that left the group (a daemon's own setsid) still get the signal.
    for member in members:
        try:
            member.send_signal(signum)
        except psutil.Error:
            pass


def ours(directory: Path) -> list[psutil.Process]:
    """Every running process started by the stack whose state lives in ``directory``:
    carrying its marker, or working inside it (Redis overwrites its environment)."""
    found = []
    wanted = str(directory)
    for proc in psutil.process_iter():
        try:
            if not _running(proc):
                continue
            if _environ(proc).get(MARKER) == wanted or Path(proc.cwd()).is_relative_to(directory):
                found.append(proc)
        except psutil.Error:
            continue
    return found
