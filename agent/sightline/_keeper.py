"""Handing the metrics socket from process to process, and the keeper that holds it.

A process of a multi-process server that holds the metrics socket offers it on a Unix
socket in the server's private directory (``<key>.sock``); a process that starts asks
there and receives the descriptor (``SCM_RIGHTS``), after checking the listener is
what it expects. Only this user can reach the directory, and each side checks the
other's user id.

Workers come and go, and all of them can be gone at once (recycled together, or a
rolling restart); the socket would close with the last one and scrapes would be
refused until the next one starts. So the process that first binds the socket also
starts a keeper: ``python -m sightline._keeper``, a small process that only holds
the socket and offers it, and exits when the server's main process is gone. While no
worker is up, scrapes wait in the socket's queue instead of being refused.

This module imports nothing but the standard library and ``_process``: the keeper
starts in a few milliseconds and stays a few megabytes.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import struct
import sys

from ._process import process_key, running

#: How long a process waits for a sibling to hand over the socket.
HANDOVER_TIMEOUT = 1.0
_MESSAGE = b"L"
#: The ending of a keeper's offer (a worker's is ``<key>.sock``).
KEEPER = ".keeper.sock"


def offered_by(name: str) -> str | None:
    """The key of the process offering the socket under the file ``name``, if it is one."""
    if not name.endswith(".sock"):
        return None
    key = name[: -len(KEEPER)] if name.endswith(KEEPER) else name[: -len(".sock")]
    pid, _, ticks = key.partition("-")
    return key if pid.isdigit() and ticks.isdigit() else None


def offer(address: str) -> socket.socket:
    """A Unix socket at ``address`` on which to hand over the metrics socket."""
    offered = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        offered.bind(address)
        offered.listen(8)
        offered.setblocking(False)
    except BaseException:
        offered.close()
        raise
    return offered


def hand_over(offered: socket.socket, listener: socket.socket) -> None:
    """Answer one process asking on ``offered``: send it ``listener`` if it is this user."""
    try:
        peer, _ = offered.accept()
    except OSError:
        return
    with peer:
        try:
            peer.settimeout(HANDOVER_TIMEOUT)
            credentials = peer.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
            _, uid, _ = struct.unpack("3i", credentials)  # struct ucred: pid, uid, gid
            if uid == os.geteuid():
                socket.send_fds(peer, [_MESSAGE], [listener.fileno()])
        except OSError:
            pass  # the asking process went away: it will bind or ask another


def receive(address: str) -> socket.socket | None:
    """The listening socket the process offering at ``address`` hands over, if it does."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as peer:
        peer.settimeout(HANDOVER_TIMEOUT)
        try:
            peer.connect(address)
            credentials = peer.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
            if struct.unpack("3i", credentials)[1] != os.geteuid():
                return None
            message, fds, _, _ = socket.recv_fds(peer, 1, 1)
        except OSError:
            return None
    if message != _MESSAGE or len(fds) != 1:
        for fd in fds:
            os.close(fd)
        return None
    listener = socket.socket(fileno=fds[0])
    listener.setblocking(False)
    return listener


def main(argv: list[str]) -> int:
    """``python -m sightline._keeper STORE_FD LISTENER_FD SERVER_KEY``."""
    store_fd, listener_fd, server_key = int(argv[0]), int(argv[1]), argv[2]
    # Ctrl-C in the server's terminal reaches the keeper too: it ends quietly.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    listener = socket.socket(fileno=listener_fd)
    name = f"{process_key(os.getpid())}{KEEPER}"
    offered = offer(f"/proc/self/fd/{store_fd}/{name}")
    try:
        while running(server_key):
            readable, _, _ = select.select([offered], [], [], 1.0)
            if readable:
                hand_over(offered, listener)
    finally:
        offered.close()
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=store_fd)
        listener.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
