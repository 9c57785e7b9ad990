"""HTTP(S) connections held to one deadline, for :class:`sightline._export.Endpoint`.

Loaded by the first push, on the export thread: ``http.client``, ``ssl`` and
``urllib.request`` are among the slowest modules of the standard library to import,
and a process that never exports should not pay for them (docs/performance.md,
"Start-up").
"""

from __future__ import annotations

import base64
import http.client
import io
import socket
import ssl
import time
import urllib.parse
import urllib.request
from typing import Any

#: What a push can fail with, for the export path to tell the causes apart.
HTTPException = http.client.HTTPException
RemoteDisconnected = http.client.RemoteDisconnected
SSLCertVerificationError = ssl.SSLCertVerificationError
SSLError = ssl.SSLError


def remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("deadline passed")
    return left


class Deadlined(http.client.HTTPConnection):
    """An HTTP connection whose every step waits only for what is left of ``deadline``:
    connecting (each address the name resolves to in turn), each send, each read of the
    answer, a proxy's answer included. Resolving the name is left to the system resolver's
    own timeouts, and each read of a TLS handshake waits at most what was left when the
    connection was made."""

    deadline = float("inf")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._create_connection = self._connect_in_time

    def _connect_in_time(
        self, address: tuple[str, int], timeout: Any = None, source_address: Any = None
    ) -> socket.socket:
        host, port = address
        error: OSError | None = None
        for family, kind, proto, _, sockaddr in socket.getaddrinfo(
            host, port, 0, socket.SOCK_STREAM
        ):
            sock = socket.socket(family, kind, proto)
            try:
                sock.settimeout(remaining(self.deadline))
                if source_address:
                    sock.bind(source_address)
                sock.connect(sockaddr)
                return sock
            except OSError as exc:
                sock.close()
                error = exc
                if isinstance(exc, TimeoutError):
                    break  # the deadline is spent: no time for another address
        raise error or OSError(f"{host} resolves to no address")

    def send(self, data: Any) -> None:
        if self.sock is not None:
            self.sock.settimeout(remaining(self.deadline))
        super().send(data)

    def response_class(self, sock: Any, *args: Any, **kwargs: Any) -> http.client.HTTPResponse:  # type: ignore[override]
        return Response(sock, *args, deadline=self.deadline, **kwargs)


class HTTPConnection(Deadlined):
    pass


class HTTPSConnection(Deadlined, http.client.HTTPSConnection):
    pass


class Response(http.client.HTTPResponse):
    """An HTTP response read against one deadline for the whole answer, not per read."""

    def __init__(self, sock: Any, *args: Any, deadline: float, **kwargs: Any) -> None:
        super().__init__(sock, *args, **kwargs)
        # Keep the base class's raw reader: it keeps the socket open (the connection may
        # close it once the answer says so); only its reads are bounded here.
        raw = self.fp.detach()
        self.fp = io.BufferedReader(DeadlineReader(raw, sock, deadline))


class DeadlineReader(io.RawIOBase):
    def __init__(self, raw: Any, sock: Any, deadline: float) -> None:
        self._raw = raw
        self._sock = sock
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        self._sock.settimeout(remaining(self._deadline))
        return self._raw.readinto(buffer)  # type: ignore[no-any-return]

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


def connect(
    url: str, tls_context: ssl.SSLContext | None, timeout: float
) -> tuple[Deadlined, str, dict[str, str]]:
    """A new connection to ``url`` (through the proxy the environment names, as urllib
    would), the request target and the headers a plain-HTTP proxy needs."""
    split = urllib.parse.urlsplit(url)
    host = split.hostname
    if split.scheme not in ("http", "https") or not host:
        raise ValueError(f"not an http(s) URL: {url!r}")
    port = split.port  # ValueError for a port out of range
    target = urllib.parse.urlunsplit(("", "", split.path or "/", split.query, ""))
    tls = split.scheme == "https"
    proxy = urllib.request.getproxies().get(split.scheme)
    if not proxy or urllib.request.proxy_bypass(host):
        if tls:
            return HTTPSConnection(host, port, timeout=timeout, context=tls_context), target, {}
        return HTTPConnection(host, port, timeout=timeout), target, {}
    via = urllib.parse.urlsplit(proxy if "://" in proxy else "http://" + proxy)
    auth: dict[str, str] = {}
    if via.username is not None:
        user = urllib.parse.unquote(via.username)
        secret = urllib.parse.unquote(via.password or "")
        token = base64.b64encode(f"{user}:{secret}".encode()).decode()
        auth["Proxy-Authorization"] = f"Basic {token}"
    if tls:  # tunnelled through CONNECT: the proxy never sees the request
        tunnel = HTTPSConnection(via.hostname or "", via.port, timeout=timeout, context=tls_context)
        tunnel.set_tunnel(host, port, headers=auth)
        return tunnel, target, {}
    plain = HTTPConnection(via.hostname or "", via.port, timeout=timeout)
    return plain, url, auth  # a plain-HTTP proxy is sent the absolute URL
