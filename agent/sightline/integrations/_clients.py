"""Shared shape of the outgoing-HTTP integrations.

Each one measures every request its library sends (``http_client_request_duration_seconds``,
by method, host, status and error), whether tracing is on or not, by wrapping the one
method through which the library sends a request (its table of patches). With tracing on
it also enables the official OpenTelemetry instrumentation, so that calls carry
``traceparent`` and show as CLIENT spans; when that package is missing, one warning says
how to get it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from .. import _state
from ._base import Integration
from ._patches import timed, timed_async

if TYPE_CHECKING:
    from .._agent import Agent

logger = logging.getLogger("sightline")


class ClientIntegration(Integration):
    #: The OpenTelemetry instrumentor class, None when its package is not installed.
    instrumentor: ClassVar[Any]
    package: ClassVar[str]  # the instrumentation's distribution, for the warning
    #: Whether calls go without trace context when the instrumentor is missing (requests
    #: sends through urllib3, whose instrumentation carries it).
    warn_without: ClassVar[bool] = True

    def __init__(self) -> None:
        super().__init__()
        self._enabled: Any = None

    def install(self, agent: Agent) -> None:
        super().install(agent)  # measured, traced or not
        if agent.tracing is None or self._enabled is not None:
            return
        if self.instrumentor is None:
            if self.warn_without:
                logger.warning(
                    "sightline: outgoing %s calls are measured but carry no trace context, "
                    "so the services they call start traces of their own: pip install "
                    "'sightline[clients]' (%s)",
                    self.name,
                    self.package,
                )
            return
        instrumentor = self.instrumentor()
        if instrumentor.is_instrumented_by_opentelemetry:
            return  # the app (or opentelemetry-instrument) did it already: leave it theirs
        try:
            instrumentor.instrument()
        except BaseException:
            super().uninstall()  # a failed install leaves nothing behind
            raise
        self._enabled = instrumentor

    def uninstall(self) -> None:
        # The instrumentation first: it may have wrapped the same method after us, and
        # unwrapping gives ours back, to be put back in turn.
        if self._enabled is not None:
            self._enabled.uninstrument()
            self._enabled = None
        super().uninstall()


Describe = Callable[[tuple[Any, ...]], tuple[str, str]]


def measuring(send: Callable[..., Any], describe: Describe, where: str, sync: bool = True) -> Any:
    """``send`` timed (see :mod:`._patches`): ``describe(args)`` gives (method, host), the
    response's ``status_code`` or ``status`` the status; empty when no response came."""

    def begin(args: tuple[Any, ...]) -> Any:
        agent = _state.current
        return None if agent is None else (agent, args)

    def end(context: Any, response: Any, error: str, seconds: float) -> None:
        agent, args = context
        method, host = describe(args)
        status = ""
        if response is not None:
            code = getattr(response, "status_code", None) or getattr(response, "status", "")
            status = str(int(code)) if code else ""
        agent.metrics.observe_client(method, host, status, error, seconds)

    return (timed if sync else timed_async)(send, begin, end, where)
