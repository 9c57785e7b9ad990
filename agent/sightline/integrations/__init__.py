"""Integrations: one module per library, each behind the same tiny interface.

A module imports its library at the top and raises :class:`DidNotEnable` when it is
missing. Auto-enabled integrations then skip quietly; ones named in
``SIGHTLINE_INTEGRATIONS`` make ``init()`` fail loudly instead. Each installs on its
own: one failing is logged and skipped, and the rest still install.

Writing one::

    class RedisIntegration(Integration):
        name = "redis"

        def install(self, agent: Agent) -> None: ...   # add hooks; safe to call twice
        def uninstall(self) -> None: ...               # remove exactly those hooks

    INTEGRATION = RedisIntegration
"""

from __future__ import annotations

import importlib
import logging
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

from .. import _safety
from .._settings import INTEGRATION_NAMES, ConfigError, Settings

if TYPE_CHECKING:
    from .._agent import Agent

logger = logging.getLogger("sightline")


class DidNotEnable(Exception):
    """The integration's library is missing or unsupported; the message says which."""


class Integration(ABC):
    name: ClassVar[str]

    @abstractmethod
    def install(self, agent: Agent) -> None:
        """Add this integration's hooks. Calling it twice is harmless."""

    @abstractmethod
    def uninstall(self) -> None:
        """Remove every hook ``install`` added, leaving the library as it found it."""


def load(name: str) -> type[Integration]:
    try:
        module = importlib.import_module(f"{__name__}.{name}")
    except ImportError as exc:
        raise DidNotEnable(f"{name} is not installed ({exc})") from None
    integration: type[Integration] = module.INTEGRATION
    return integration


def install_all(agent: Agent, settings: Settings) -> list[Integration]:
    """Install the requested integrations, or every available one when none is requested."""
    required = bool(settings.integrations)
    names = settings.integrations or tuple(
        n for n in INTEGRATION_NAMES if n not in settings.disabled_integrations
    )
    installed: list[Integration] = []
    for name in names:
        try:
            integration = load(name)()
        except DidNotEnable as exc:
            if required:
                raise ConfigError(f"invalid SIGHTLINE_INTEGRATIONS: {exc}") from None
            logger.debug("sightline: %s integration not enabled: %s", name, exc)
            continue
        with _safety.internal_errors(f"integrations.{name}.install"):
            integration.install(agent)
            installed.append(integration)
            logger.debug("sightline: %s integration installed", name)
    return installed


def uninstall_all(installed: list[Integration]) -> None:
    for integration in reversed(installed):
        with _safety.internal_errors(f"integrations.{integration.name}.uninstall"):
            integration.uninstall()
    installed.clear()
