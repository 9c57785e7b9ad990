"""The age of the oldest message in a RabbitMQ queue, from the management API.

AMQP 0-9-1 cannot look at a queue's head without taking the message, and handing it
back marks it redelivered (on a quorum queue it also counts towards the delivery
limit, after which the message is dead-lettered). So the age comes from the
management plugin's ``head_message_timestamp``: the AMQP ``timestamp`` property of the
message at the head of a classic queue (delivered but unacknowledged messages
included), which the Celery integration sets on every message it publishes. It is
whole seconds, and the API refreshes it with the queue's statistics, every 5 s; the
depth itself is counted over AMQP, live.
Quorum queues and streams do not report it; there the age is left out and the reason
is logged.

Reads happen on the queue sampler's thread, never on a task's path, with a timeout.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

#: The management plugin's port when the setting is ``auto`` (15671 behind TLS).
PORT, TLS_PORT = 15672, 15671
TIMEOUT = 5.0
SETTING = "SIGHTLINE_RABBITMQ_API"


class AgeUnavailable(Exception):
    """The age cannot be read; the message says why and what to set."""


class ManagementApi:
    """Reads ``head_message_timestamp`` of a queue in one virtual host."""

    def __init__(self, base: str, username: str, password: str, vhost: str) -> None:
        parts = urllib.parse.urlsplit(base)
        if parts.username is not None:
            username = urllib.parse.unquote(parts.username)
            password = urllib.parse.unquote(parts.password or "")
            netloc = parts.netloc.rpartition("@")[2]
            base = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))
        self.base = base.rstrip("/")
        self.vhost = vhost
        credentials = f"{username}:{password}".encode()
        self._authorization = "Basic " + base64.b64encode(credentials).decode("ascii")

    @classmethod
    def for_broker(cls, setting: str, connection: Any) -> ManagementApi | None:
        """The API of the broker ``connection`` (a kombu Connection) talks to, as
        ``setting`` (``auto``, ``off`` or a URL) says; None when it is ``off``."""
        if setting == "off":
            return None
        if setting == "auto":
            tls = bool(getattr(connection, "ssl", False))
            host = str(connection.hostname or "localhost")
            if ":" in host:
                host = f"[{host}]"
            scheme, port = ("https", TLS_PORT) if tls else ("http", PORT)
            setting = f"{scheme}://{host}:{port}"
        vhost = str(getattr(connection, "virtual_host", None) or "/")
        return cls(setting, str(connection.userid or ""), str(connection.password or ""), vhost)

    def age(self, queue: str, waiting: float) -> float | None:
        """Seconds since the message at the head of ``queue`` was published, given the
        ``waiting`` messages AMQP just counted: 0 when none wait, None while the API's
        statistics (refreshed every 5 s) do not show them yet."""
        if not waiting:
            return 0.0
        found = self._queue(queue)
        if found is None or not found.get("messages_ready"):
            return None
        stamp = found.get("head_message_timestamp")
        if not isinstance(stamp, (int, float)) or isinstance(stamp, bool):
            raise AgeUnavailable(
                f"RabbitMQ gives no timestamp for the message at the head of {queue!r} "
                "(a quorum queue or stream, or a message from a producer without "
                f"Sightline); the depth is still read. {SETTING}=off stops asking"
            )
        return max(0.0, time.time() - float(stamp))

    def _queue(self, queue: str) -> dict[str, Any] | None:
        """The queue's statistics; None when it is not declared or has none yet."""
        path = "/api/queues/{}/{}".format(
            urllib.parse.quote(self.vhost, safe=""), urllib.parse.quote(queue, safe="")
        )
        columns = "messages_ready,messages_unacknowledged,head_message_timestamp"
        request = urllib.request.Request(
            f"{self.base}{path}?columns={columns}",
            headers={"Authorization": self._authorization, "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
                found = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            exc.close()  # its connection
            if exc.code == 404:
                return None  # not declared yet
            if exc.code in (401, 403):
                raise AgeUnavailable(
                    f"the RabbitMQ management API at {self.base} refused the broker's "
                    f"credentials ({exc.code}); give the user the `monitoring` tag, or set "
                    f"{SETTING} to a URL with a user that has it, or to off"
                ) from None
            raise AgeUnavailable(
                f"the RabbitMQ management API at {self.base} answered {exc.code}; "
                f"set {SETTING} to its URL, or to off"
            ) from None
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise AgeUnavailable(
                f"no RabbitMQ management API at {self.base} ({reason}); enable the "
                f"rabbitmq_management plugin, or set {SETTING} to its URL, or to off"
            ) from None
        return found if isinstance(found, dict) else None  # [] before the first statistics
