"""Starting, probing and stopping the stack's processes.

Each process is started in its own session (so a Ctrl-C in the terminal reaches only
the command that started it) with its output in a log file, and recorded by PID and
start time: a PID the kernel has since given to another program is never signalled.
Stopping signals the whole process group, so gunicorn's and Celery's workers go with
their master.
"""

from __future__ import annotations

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
    started: float  # psutil's create_time, to tell a reused PID apart
    log: str

    def process(self) -> psutil.Process | None:
        try:
            proc = psutil.Process(self.pid)
            if abs(proc.create_time() - self.started) > 0.01 or proc.status() == "zombie":
                return None
            return proc
        except psutil.Error:
            return None

    def alive(self) -> bool:
        return self.process() is not None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "pid": self.pid, "started": self.started, "log": self.log}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Record:
        return cls(str(data["name"]), int(data["pid"]), float(data["started"]), str(data["log"]))


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
    try:
        started = psutil.Process(proc.pid).create_time()
    except psutil.Error:
        started = 0.0
    return proc, Record(name, proc.pid, started, str(log))


class NotReady(RuntimeError):
    pass


def wait_http(url: str, timeout: float, alive: Any = None) -> None:
    """Poll ``url`` until it answers 2xx; ``alive()`` false means the process died."""
    deadline = time.monotonic() + timeout
    while True:
        if alive is not None and not alive():
            raise NotReady(f"exited before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
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


def stop(record: Record, timeout: float = 10.0) -> bool:
    """SIGTERM the process group of ``record``, SIGKILL what is left after ``timeout``.

    Returns False if the process was already gone (or the PID is someone else's now).
    """
    proc = record.process()
    if proc is None:
        return False
    members = _group(proc)
    _signal_group(record.pid, members, signal.SIGTERM)
    _gone, left = psutil.wait_procs(members, timeout=timeout)
    if left:
        _signal_group(record.pid, left, signal.SIGKILL)
        psutil.wait_procs(left, timeout=5)
    return True


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
    """Every running process started by the stack whose state lives in ``directory``."""
    found = []
    wanted = str(directory)
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(MARKER) == wanted and proc.status() != "zombie":
                found.append(proc)
        except psutil.Error:
            continue
    return found
