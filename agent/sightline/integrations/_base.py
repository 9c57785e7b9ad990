"""What every integration is: an :class:`Integration` subclass in a module of its own,
whose import raises :class:`DidNotEnable` when its library is missing.

An integration says what it replaces on its library in one table of :class:`Patch`
rows; the default ``install`` applies them and ``uninstall`` puts back what was there.
This is the one place where the integrations set attributes of a library's classes::

    class LitestarIntegration(Integration):
        name = "litestar"
        library = "litestar"  # the distribution whose version is checked
        minimum_version = "2.25"
        patches = (Patch(Litestar, "__call__", _call),)  # _call(original) -> wrapper

An integration that also connects signals or finds its server overrides ``install`` and
``uninstall`` and calls ``super()`` for the table. The library's installed version is
checked once, when the integration is loaded (:meth:`Integration.check_version`).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from .._agent import Agent

logger = logging.getLogger("sightline")


class DidNotEnable(Exception):
    """The integration's library is missing or unsupported; the message says which."""


@dataclass(frozen=True)
class Patch:
    """``owner.attribute`` replaced by ``wrap(original)`` while the integration is installed.

    ``owner`` is a class (or module), or a function of no arguments returning one, called
    at install time: for a part of the library found only then, or absent from some of its
    versions (None skips the row). ``wrap`` runs once, at install, with what was there, and
    returns the replacement: a wrapper closing over the original, so calling it costs no
    lookup. Once the agent has stopped, the wrapper must pass calls straight through: it
    may stay in place under someone else's patch (see :meth:`Integration.uninstall`).
    """

    owner: Any
    attribute: str
    wrap: Callable[[Any], Any]

    def resolve(self) -> Any:
        if isinstance(self.owner, (type, ModuleType)):
            return self.owner
        return self.owner()


#: Marks an attribute the owner inherited: uninstall deletes the replacement.
_INHERITED = object()
#: Every patch in place: (owner, attribute) -> (what the owner itself held, the
#: replacement). Shared by all integrations and their instances, so that a method is
#: replaced once however many install it (requests and urllib3 share urllib3's).
_applied: dict[tuple[Any, str], tuple[Any, Any]] = {}
#: Each integration class's version check, made once: "" when supported, else why not.
_verdicts: dict[type, str] = {}


class Integration:
    name: ClassVar[str]
    #: The distribution whose installed version is checked (its name on PyPI).
    library: ClassVar[str]
    #: The oldest release of it this integration supports; None: any.
    minimum_version: ClassVar[str | None] = None
    #: What ``install`` replaces on the library, in order.
    patches: ClassVar[tuple[Patch, ...]] = ()

    def __init__(self) -> None:
        self._patched: list[tuple[Any, str]] = []  # the rows this instance applied

    def install(self, agent: Agent) -> None:
        """Add this integration's hooks. Calling it twice is harmless: a row already
        applied is left alone, one whose owner has appeared since is applied now."""
        for patch in self.patches:
            owner = patch.resolve()
            key = (owner, patch.attribute)
            if owner is None or key in _applied:
                continue
            found = vars(owner).get(patch.attribute, _INHERITED)
            original = getattr(owner, patch.attribute) if found is _INHERITED else found
            replacement = patch.wrap(original)
            setattr(owner, patch.attribute, replacement)
            _applied[key] = (found, replacement)
            self._patched.append(key)

    def uninstall(self) -> None:
        """Remove every hook ``install`` added, leaving the library as it found it.

        An attribute is put back only while it still holds our replacement: if something
        patched it afterwards (another instrumentation, a test double), that patch stays,
        and our wrapper inside it passes calls straight through once the agent has stopped.
        """
        while self._patched:
            owner, attribute = key = self._patched.pop()
            found, replacement = _applied.pop(key)
            if vars(owner).get(attribute) is not replacement:
                continue
            if found is _INHERITED:
                delattr(owner, attribute)
            else:
                setattr(owner, attribute, found)

    @classmethod
    def check_version(cls) -> None:
        """Raise :class:`DidNotEnable` when the installed library is older than
        ``minimum_version``; the first time, one warning says so (even for an integration
        that was not asked for by name, which is otherwise skipped quietly)."""
        verdict = _verdicts.get(cls)
        if verdict is None:
            verdict = _verdicts[cls] = cls._version_verdict()
            if verdict:
                logger.warning("sightline: %s", verdict)
        if verdict:
            raise DidNotEnable(verdict)

    @classmethod
    def _version_verdict(cls) -> str:
        if cls.minimum_version is None:
            return ""
        installed = installed_version(cls.library)
        if installed is None or release(installed) >= release(cls.minimum_version):
            return ""  # no metadata (a vendored copy): given the benefit of the doubt
        return (
            f"the {cls.name} integration is not installed: {cls.library} {installed} is "
            f"older than {cls.minimum_version}, the oldest version it supports"
        )


def installed_version(distribution: str) -> str | None:
    """The installed version of ``distribution``, None when it has no metadata.

    Most libraries keep it as ``__version__`` in the module of the same name, which is
    loaded by now: read from the module's own namespace (a module ``__getattr__`` that
    warns, as Flask's does, is not called), it costs nothing. Otherwise the package
    metadata says.
    """
    module = sys.modules.get(distribution.lower())
    version = vars(module).get("__version__") if module is not None else None
    if isinstance(version, str) and version[:1].isdigit():
        return version
    # Loaded here, once an integration is: importing it takes longer than init() may.
    import importlib.metadata

    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def release(version: str) -> tuple[int, ...]:
    """The numeric release a version string starts with, trailing zeros dropped:
    ``"2.2.0rc1"`` and ``"2.2"`` are ``(2, 2)``; ``"21.2.0"`` is ``(21, 2)``."""
    numbers: list[int] = []
    for part in version.split("."):
        digits = part[: len(part) - len(part.lstrip("0123456789"))]
        if not digits:
            break
        numbers.append(int(digits))
        if digits != part:
            break  # a pre-release or local suffix: "0rc1" ends the release
    while numbers and numbers[-1] == 0:
        numbers.pop()
    return tuple(numbers)
