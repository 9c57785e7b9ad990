"""Methods replaced on library classes by the integrations, and put back.

A method is put back only while it is still the wrapper installed here: if something
patched it afterwards (another instrumentation, a test double), that patch stays, and the
wrapper inside it passes calls straight through once the agent has stopped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Patches:
    def __init__(self) -> None:
        self._done: dict[tuple[type, str], tuple[Any, Any]] = {}

    def apply(self, cls: type, name: str, wrap: Callable[[Any], Any]) -> None:
        """Replace ``cls.name`` (defined on ``cls`` itself) by ``wrap(original)``, once."""
        if (cls, name) in self._done:
            return
        original = cls.__dict__[name]
        wrapper = wrap(original)
        setattr(cls, name, wrapper)
        self._done[(cls, name)] = (original, wrapper)

    def restore(self) -> None:
        for (cls, name), (original, wrapper) in list(self._done.items()):
            if cls.__dict__.get(name) is wrapper:
                setattr(cls, name, original)
            del self._done[(cls, name)]

    def __bool__(self) -> bool:
        return bool(self._done)
