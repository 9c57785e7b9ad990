"""What every integration is: an :class:`Integration` subclass in a module of its own,
whose import raises :class:`DidNotEnable` when its library is missing or unsupported."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from .._agent import Agent


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
