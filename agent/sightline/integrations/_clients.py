"""Shared shape of the outgoing-HTTP integrations: enable an official OpenTelemetry
instrumentation so downstream calls carry ``traceparent`` and show as CLIENT spans."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from . import Integration

if TYPE_CHECKING:
    from .._agent import Agent


class ClientIntegration(Integration):
    instrumentor: ClassVar[Any]

    def __init__(self) -> None:
        self._enabled: Any = None

    def install(self, agent: Agent) -> None:
        if agent.tracing is None:
            return
        instrumentor = self.instrumentor()
        if instrumentor.is_instrumented_by_opentelemetry:
            return  # the app (or opentelemetry-instrument) did it already: leave it theirs
        instrumentor.instrument()
        self._enabled = instrumentor

    def uninstall(self) -> None:
        if self._enabled is not None:
            self._enabled.uninstrument()
            self._enabled = None
