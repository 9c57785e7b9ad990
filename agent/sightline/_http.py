"""HTTP details shared by every server integration: method folding and proxy queue time."""

from __future__ import annotations

import urllib.parse

from .metrics import KNOWN_METHODS, OTHER_METHOD

# Front proxies stamp the time they received the request as seconds, milliseconds,
# microseconds or nanoseconds since the epoch; the magnitude tells which.
_SCALES = ((1e17, 1e-9), (1e14, 1e-6), (1e11, 1e-3), (0.0, 1.0))
# A wait longer than this is a clock problem, not a queue: ignore it.
MAX_QUEUE_SECONDS = 3600.0


def fold_method(method: str) -> str:
    """The method as a bounded label: standard methods as they are, anything else ``_OTHER``."""
    return method if method in KNOWN_METHODS else OTHER_METHOD


def request_start(header: str) -> float | None:
    """Parse ``X-Request-Start``/``X-Queue-Start`` (``t=1700000000.123``, ms, µs, ns).

    Returns seconds since the epoch, or None for anything unparseable or non-positive.
    """
    value = header.strip()
    if value.startswith("t="):
        value = value[2:]
    if not value or len(value) > 32:
        return None
    try:
        stamp = float(value)
    except ValueError:
        return None
    if not stamp > 0 or stamp == float("inf"):
        return None
    for threshold, scale in _SCALES:
        if stamp >= threshold:
            return stamp * scale
    return None


def queue_seconds(header: str, now: float) -> float | None:
    """Seconds between the proxy's stamp and ``now``, or None if absent, garbage or negative."""
    start = request_start(header)
    if start is None:
        return None
    waited = now - start
    if waited < 0 or waited > MAX_QUEUE_SECONDS:
        return None
    return waited


#: Query-string keys whose values never reach a span: any key containing one of these.
SENSITIVE_QUERY_WORDS = (
    "token",
    "password",
    "passwd",
    "secret",
    "key",
    "auth",
    "session",
    "signature",
    "credential",
    "jwt",
)
REDACTED = "REDACTED"


def redact_query(query: str, extra_words: tuple[str, ...] = ()) -> str:
    """The query string with the values of sensitive keys replaced by ``REDACTED``.

    Keys are matched case-insensitively, percent-decoded, by substring (``api_key``,
    ``X-Amz-Signature``); the rest of the string is kept byte for byte.
    """
    if not query:
        return query
    words = SENSITIVE_QUERY_WORDS + extra_words
    parts = []
    for part in query.split("&"):
        key, sep, _value = part.partition("=")
        name = urllib.parse.unquote_plus(key).lower()
        if sep and any(word in name for word in words):
            part = f"{key}={REDACTED}"
        parts.append(part)
    return "&".join(parts)


def redact_url(url: str, extra_words: tuple[str, ...] = ()) -> str:
    """A full URL with its ``user:password@`` replaced by ``REDACTED:REDACTED@`` (as the
    conventions for ``url.full`` say) and its query redacted as :func:`redact_query`;
    the rest is kept as it was."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return redact_target(url, extra_words)
    end = len(rest)
    for mark in "/?#":
        found = rest.find(mark)
        if 0 <= found < end:
            end = found
    authority, tail = rest[:end], rest[end:]
    if "@" in authority:
        authority = f"{REDACTED}:{REDACTED}@" + authority.rpartition("@")[2]
    return f"{scheme}://{authority}{redact_target(tail, extra_words) if tail else ''}"


def redact_target(target: str, extra_words: tuple[str, ...] = ()) -> str:
    """A path with a query (``/a?token=x``), or a bare query, redacted."""
    path, sep, query = target.partition("?")
    if not sep:
        return redact_query(target, extra_words) if "=" in target else target
    query, hash_, fragment = query.partition("#")
    return f"{path}?{redact_query(query, extra_words)}{hash_}{fragment}"
