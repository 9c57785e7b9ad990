"""Who holds a TCP port: the processes listening on it, and the service they serve.

When the metrics port is taken, "address already in use" is not enough to act on: the
user needs to know whether another service, another server of the same service or an
unrelated program holds it. The listening sockets come from ``/proc/net/tcp{,6}``, their
processes from each ``/proc/PID/fd`` this user may read, and the service from the
``target_info`` line the holder serves on ``/metrics`` (a Sightline or any OpenTelemetry
Prometheus endpoint has one). All of it runs off the request path, once, when a port
cannot be had.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re

from . import _fork

_LISTEN = "0A"
#: Processes looked at for a socket's owner, at most (a host may run many thousands).
MAX_PROCESSES = 20_000
#: Bytes of the holder's /metrics page read, at most, looking for ``target_info``.
MAX_PAGE = 4 << 20
_SERVICE = re.compile(rb'^target_info\{.*?\bservice_name="((?:[^"\\]|\\.)*)"', re.M)


def _address(hex_address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """``/proc/net/tcp``'s address: 32-bit words in host (little-endian) order."""
    raw = bytes.fromhex(hex_address)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(words)


def _overlaps(
    held: ipaddress.IPv4Address | ipaddress.IPv6Address,
    wanted: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> bool:
    """Whether a socket bound on ``held`` keeps a bind on ``wanted`` from succeeding."""
    if held.is_unspecified or wanted.is_unspecified:
        return True
    mapped = getattr(held, "ipv4_mapped", None)
    return held == wanted or (mapped is not None and mapped == wanted)


def listening_inodes(host: str, port: int) -> set[str]:
    """Inodes of the listening sockets that hold ``host:port`` (empty without ``/proc``)."""
    try:
        wanted = ipaddress.ip_address(host)
    except ValueError:
        wanted = ipaddress.ip_address("0.0.0.0")  # a name: any listener on the port counts
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as lines:
                next(lines, None)
                for line in lines:
                    fields = line.split()
                    if len(fields) < 10 or fields[3] != _LISTEN:
                        continue
                    address, _, port_hex = fields[1].partition(":")
                    if int(port_hex, 16) == port and _overlaps(_address(address), wanted):
                        inodes.add(fields[9])
        except (OSError, ValueError):
            continue
    return inodes


def holders(host: str, port: int) -> list[int]:
    """Pids of the processes (of those this user may look into) holding ``host:port``."""
    inodes = listening_inodes(host, port)
    if not inodes:
        return []
    targets = {f"socket:[{inode}]" for inode in inodes}
    found = []
    try:
        pids = [name for name in os.listdir("/proc") if name.isdigit()][:MAX_PROCESSES]
    except OSError:
        return []
    for pid in pids:
        folder = f"/proc/{pid}/fd"
        try:
            names = os.listdir(folder)
        except OSError:  # another user's, or gone
            continue
        for name in names:
            with contextlib.suppress(OSError):
                if os.readlink(f"{folder}/{name}") in targets:
                    found.append(int(pid))
                    break
    return sorted(found)


def command(pid: int) -> str:
    """The process's command line, shortened, or ``?``."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            text = " ".join(file.read(400).decode(errors="replace").replace("\0", " ").split())
    except OSError:
        return "?"
    return text if len(text) < 80 else text[:77] + "..."


def served_service(host: str, port: int, timeout: float = 1.0) -> str | None:
    """The ``service_name`` of the ``target_info`` served on ``host:port``/metrics, if any."""
    try:
        wildcard = ipaddress.ip_address(host).is_unspecified
        loopback = "::1" if ":" in host else "127.0.0.1"
    except ValueError:
        wildcard, loopback = False, host
    client = _fork.load("http.client")  # loaded only when a port is found taken
    connection = client.HTTPConnection(loopback if wildcard else host, port, timeout=timeout)
    try:
        connection.request("GET", "/metrics", headers={"Accept": "text/plain"})
        response = connection.getresponse()
        if response.status != 200:
            return None
        page = response.read(MAX_PAGE)
    except (OSError, client.HTTPException, UnicodeError):
        return None
    finally:
        connection.close()
    match = _SERVICE.search(page)
    if match is None:
        return None
    return match.group(1).decode(errors="replace").replace('\\"', '"').replace("\\\\", "\\")


def describe(host: str, port: int, service: str) -> str:
    """Who holds the port, for an error message: the service and the pids when knowable."""
    pids = holders(host, port)
    shown = ", ".join(f"{pid} `{command(pid)}`" for pid in pids[:4])
    if len(pids) > 4:
        shown += f" and {len(pids) - 4} more"
    held_by = served_service(host, port)
    if held_by is None:
        what = "a program that serves no OpenTelemetry target_info"
    elif held_by == service:
        what = f"another server of the same service {held_by!r}"
    else:
        what = f"the service {held_by!r}"
    if pids:
        return f"held by {what} (pid {shown})"
    return f"held by {what} (a process this user cannot see)"
