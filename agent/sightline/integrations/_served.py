"""The app a server loaded: measured, whatever its framework.

Where a server obtains the app it will serve (uvicorn's ``Config.load``, gunicorn's
``Application.wsgi``, hypercorn's app wrappers), Sightline hands it to :func:`measured`.
An app that a framework integration records already (Flask, Django, Starlette/FastAPI,
Litestar, Quart, or one wrapped with ``sightline.instrument_app``) is returned as it is;
any other is wrapped in the generic WSGI or ASGI middleware. Its requests are then
counted, named by a framework app found inside it (which claims each request, see
``asgi``) or ``_unmatched``, with one warning for the app naming the fix (``route_of``).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterator
from typing import Any, Literal

from .. import _safety, _state
from .asgi import SightlineASGIMiddleware
from .wsgi import SightlineMiddleware

logger = logging.getLogger("sightline")

Protocol = Literal["wsgi", "asgi"]


def _call(app: Any) -> Any:
    """What calling ``app`` runs, for an instance (its class's ``__call__``)."""
    try:
        return type(app).__call__
    except AttributeError:
        return None


def recorded(app: Any) -> bool:
    """Whether a Sightline integration records ``app``'s requests already: its class's
    ``__call__`` is one of Sightline's patches or middlewares."""
    return str(getattr(_call(app), "__module__", "")).startswith("sightline.")


def protocol(app: Any) -> Protocol | None:
    """``asgi`` for an ASGI 3 app, ``wsgi`` for a callable of two arguments, else None."""
    if inspect.iscoroutinefunction(app) or inspect.iscoroutinefunction(_call(app)):
        return "asgi"
    try:
        parameters = inspect.signature(app).parameters.values()
    except (TypeError, ValueError):
        return None
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) == 2 or any(p.kind is p.VAR_POSITIONAL for p in parameters):
        return "wsgi"
    return None


def measured(app: Any, kind: Protocol | None = None) -> Any:
    """``app``, wrapped in the generic middleware unless it is recorded already (or the
    agent is not running, or ``app`` is neither WSGI nor ASGI 3: then as it is). Never
    raises: the server loading the app is the app's, and gets it unwrapped instead."""
    try:
        return _measured(app, kind)
    except Exception as exc:
        _safety.report("served.measured", exc)
        return app


def _measured(app: Any, kind: Protocol | None) -> Any:
    if _state.current is None or recorded(app):
        return app
    kind = kind or protocol(app)
    if kind == "asgi":
        return SightlineASGIMiddleware(app)
    if kind == "wsgi":
        return SightlineMiddleware(app)
    logger.warning(
        "sightline: %r is neither a WSGI app nor an ASGI 3 app Sightline can tell: its "
        "requests are not measured; wrap it with sightline.instrument_app(app)",
        app,
    )
    return app


def uvicorn_loaded(config: Any) -> None:
    """Measure the app uvicorn's ``Config.load`` loaded, inside uvicorn's own adapters
    (its WSGI adapter especially: a framework inside it sees a new environ)."""
    holder, app = None, config.loaded_app
    while type(app).__module__.startswith("uvicorn.middleware.") and hasattr(app, "app"):
        holder, app = app, app.app
    interface = getattr(config, "interface", None)
    if interface == "asgi2":  # uvicorn's adapter outside it is an ASGI 3 app
        config.loaded_app = measured(config.loaded_app, "asgi")
        return
    if interface == "wsgi":
        # The WSGI adapter: a2wsgi's, or uvicorn's own (deprecated) one, which never
        # closes the response body as PEP 3333 requires, so a request would never end.
        native = type(holder).__name__ == "_WSGIMiddleware"
        adapter: Any = holder if native else app
        raw = getattr(adapter, "app", None)
        if raw is None:
            return
        wsgi = raw if recorded(raw) else measured(raw, "wsgi")
        if native:
            wsgi = _closing(wsgi)
        if wsgi is not raw:
            adapter.app = wsgi
        return
    if recorded(app):
        return
    wrapped = measured(app, "asgi")
    if holder is None:
        config.loaded_app = wrapped
    else:
        holder.app = wrapped


def _closing(app: Any) -> Any:
    """``app``, its response bodies closed once iterated (or abandoned)."""

    def closing(environ: Any, start_response: Any) -> Iterator[bytes]:
        body = app(environ, start_response)
        try:
            yield from body
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()

    return closing
