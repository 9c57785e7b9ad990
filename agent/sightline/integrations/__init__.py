"""Integrations: one module per library, each behind the same tiny interface.

A module imports its library at the top and raises :class:`DidNotEnable` when it is
missing; loading it then checks the library's version (:meth:`Integration.check_version`),
and one older than the integration supports is not enabled either, with one warning.
Auto-enabled integrations then skip quietly; ones named in ``SIGHTLINE_INTEGRATIONS``
make ``init()`` fail loudly instead. Each installs on its own: one failing is logged and
skipped, and the rest still install.

``init()`` never imports a library the app has not imported: an integration whose
library is installed but not yet imported is installed right after the app first
imports it (:data:`TRIGGERS`, :class:`ImportWatcher`), so a Flask service does not
load Django or FastAPI because they happen to be installed. Integrations named in
``SIGHTLINE_INTEGRATIONS`` are installed at once, so a missing one fails ``init()``.

Writing one (see :mod:`._base`)::

    class RedisIntegration(Integration):
        name = "redis"
        library = "redis"          # the distribution whose version is checked
        minimum_version = "4.2"    # older: one warning, and the integration is not installed
        patches = (Patch(Redis, "execute_command", _timed),)  # applied by install()

    INTEGRATION = RedisIntegration
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
import threading
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

from .. import _safety, _state
from .._settings import INTEGRATION_NAMES, ConfigError, Settings
from ._base import DidNotEnable, Integration

if TYPE_CHECKING:
    from .._agent import Agent

logger = logging.getLogger("sightline")


#: The modules whose first import installs an integration (any of them, each time one
#: is imported: ``install`` is idempotent and picks up what has become available, as
#: FastAPI after Starlette). Integrations not listed install at ``init()``.
TRIGGERS: dict[str, tuple[str, ...]] = {
    "flask": ("flask",),
    "django": ("django",),
    "starlette": ("starlette", "fastapi"),
    "litestar": ("litestar",),
    "quart": ("quart",),
    "gunicorn": ("gunicorn",),
    "uvicorn": ("uvicorn",),
    "hypercorn": ("hypercorn",),
    "waitress": ("waitress",),
    "celery": ("celery",),
    "rq": ("rq",),
    "requests": ("requests",),
    "httpx": ("httpx",),
    "aiohttp": ("aiohttp",),
    "urllib3": ("urllib3",),
    "redis": ("redis",),
    "sqlalchemy": ("sqlalchemy",),
    "psycopg": ("psycopg",),
}


class ImportWatcher:
    """Runs callbacks right after a watched module has been loaded (imported, or reloaded).

    A meta path finder (not derived from ``importlib.abc``'s, whose import loads
    ``importlib.resources`` and ``tempfile``), on ``sys.meta_path`` only while something
    is watched. It finds nothing itself: for a watched name it asks the other finders
    for the spec and wraps its loader, so the module is loaded exactly as it would have
    been, then the callbacks run (each under the safety net: an import of the app's
    never fails because of Sightline).
    """

    def __init__(self) -> None:
        self._callbacks: dict[str, list[Callable[[], None]]] = {}
        self._lock = threading.Lock()

    def watch(self, module: str, callback: Callable[[], None]) -> None:
        with self._lock:
            self._callbacks.setdefault(module, []).append(callback)
            if self not in sys.meta_path:
                sys.meta_path.insert(0, self)

    def unwatch(self, callback: Callable[[], None]) -> None:
        with self._lock:
            for module, callbacks in list(self._callbacks.items()):
                callbacks[:] = [c for c in callbacks if c != callback]
                if not callbacks:
                    del self._callbacks[module]
            if not self._callbacks and self in sys.meta_path:
                sys.meta_path.remove(self)

    def unwatch_all(self) -> None:
        with self._lock:
            self._callbacks.clear()
            if self in sys.meta_path:
                sys.meta_path.remove(self)

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> Any:
        if fullname not in self._callbacks:
            return None
        for finder in list(sys.meta_path):
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec = find(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _NotifyingLoader(spec.loader, lambda: self._fire(fullname))
        return spec

    def _fire(self, module: str) -> None:
        with self._lock:
            callbacks = self._callbacks.get(module, [])[:]
        for callback in callbacks:
            with _safety.internal_errors(f"integrations.import.{module}"):
                callback()


class _NotifyingLoader:
    """The real loader, then a notification; the module keeps the real loader."""

    def __init__(self, loader: Any, then: Callable[[], None]) -> None:
        self.loader = loader
        self.then = then

    def create_module(self, spec: Any) -> ModuleType | None:
        module: ModuleType | None = self.loader.create_module(spec)
        return module

    def exec_module(self, module: ModuleType) -> None:
        # Introspection (importlib.resources, inspect, reload) sees the real loader.
        module.__loader__ = self.loader
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        self.loader.exec_module(module)
        self.then()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)


watcher = ImportWatcher()


def load(name: str) -> type[Integration]:
    try:
        module = importlib.import_module(f"{__name__}.{name}")
    except ImportError as exc:
        raise DidNotEnable(f"{name} is not installed ({exc})") from None
    integration: type[Integration] = module.INTEGRATION
    integration.check_version()  # an older library: one warning, then DidNotEnable
    return integration


def install_all(agent: Agent, settings: Settings) -> list[Integration]:
    """Install the requested integrations, or every available one when none is requested.

    Returns the list of installed integrations; one installed later, when the app first
    imports its library, is appended to it then.
    """
    required = bool(settings.integrations)
    names = settings.integrations or tuple(
        n for n in INTEGRATION_NAMES if n not in settings.disabled_integrations
    )
    installed: list[Integration] = []
    for name in names:
        triggers = TRIGGERS.get(name, ())
        if required or not triggers or any(t in sys.modules for t in triggers):
            _install(agent, name, installed, required)
        elif any(importlib.util.find_spec(t) is not None for t in triggers):
            _defer(agent, name, triggers, installed)
        else:
            logger.debug("sightline: %s integration not enabled: not installed", name)
    return installed


def _install(agent: Agent, name: str, installed: list[Integration], required: bool) -> None:
    try:
        integration = load(name)()
    except DidNotEnable as exc:
        if required:
            raise ConfigError(f"invalid SIGHTLINE_INTEGRATIONS: {exc}") from None
        logger.debug("sightline: %s integration not enabled: %s", name, exc)
        return
    with _safety.internal_errors(f"integrations.{name}.install"):
        integration.install(agent)
        installed.append(integration)
        logger.debug("sightline: %s integration installed", name)


class _Deferred:
    """Installs one integration each time one of its trigger modules is first imported."""

    def __init__(self, agent: Agent, name: str, installed: list[Integration]) -> None:
        self.agent = agent
        self.name = name
        self.installed = installed
        self.integration: Integration | None = None

    def __call__(self) -> None:
        # Not under the agent's lock: this runs inside the app's import, and init() in
        # another thread may be waiting on that very import.
        if _state.current is not self.agent:
            return  # shut down meanwhile
        if self.integration is None:
            try:
                self.integration = load(self.name)()
            except DidNotEnable as exc:
                logger.debug("sightline: %s integration not enabled: %s", self.name, exc)
                watcher.unwatch(self)
                return
            self.installed.append(self.integration)
        self.integration.install(self.agent)
        logger.debug("sightline: %s integration installed on import", self.name)


#: Integrations waiting for their library to be imported (uninstall_all stops the wait).
_waiting: list[_Deferred] = []


def _defer(
    agent: Agent, name: str, triggers: tuple[str, ...], installed: list[Integration]
) -> None:
    deferred = _Deferred(agent, name, installed)
    _waiting.append(deferred)
    for module in triggers:
        watcher.watch(module, deferred)
    logger.debug(
        "sightline: %s integration waits for %s to be imported", name, " or ".join(triggers)
    )


def uninstall_all(installed: list[Integration]) -> None:
    while _waiting:
        watcher.unwatch(_waiting.pop())
    for integration in reversed(installed):
        with _safety.internal_errors(f"integrations.{integration.name}.uninstall"):
            integration.uninstall()
    installed.clear()
