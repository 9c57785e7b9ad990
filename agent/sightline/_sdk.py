"""The OpenTelemetry SDK's tracer provider, for the spans of other instrumentations.

Sightline's own spans (requests, tasks, database calls) are :class:`~._spans.LeanSpan`
objects and need no SDK. The SDK's provider serves what asks the global provider for a
tracer: the app's own ``trace.get_tracer(...)`` and OpenTelemetry's instrumentations
(HTTP clients). It is made, and the SDK imported (about 16 ms, with psutil), only when
one of them first asks (:mod:`.tracing` sets a stand-in as the global provider), so a
process that never does, most of them, never pays for it.

Its sampler and processor delegate to what the current ``init()`` configured
(:class:`.tracing.Current`): the global provider can be set only once per process.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider, sampling

if TYPE_CHECKING:
    from .tracing import Current


def build_sampler(name: str, ratio: float) -> sampling.Sampler:
    root: sampling.Sampler
    if name.endswith("always_on"):
        root = sampling.ALWAYS_ON
    elif name.endswith("always_off"):
        root = sampling.ALWAYS_OFF
    else:
        root = sampling.TraceIdRatioBased(ratio)
    return sampling.ParentBased(root) if name.startswith("parentbased_") else root


class _DelegatingSampler(sampling.Sampler):
    def __init__(self, current: Current) -> None:
        self.current = current
        self._built: tuple[tuple[str, float] | None, sampling.Sampler] = (None, sampling.ALWAYS_OFF)

    @property
    def delegate(self) -> sampling.Sampler:
        wanted = self.current.sampler
        key, built = self._built
        if key != wanted:
            built = build_sampler(*wanted) if wanted is not None else sampling.ALWAYS_OFF
            self._built = (wanted, built)
        return built

    def should_sample(self, *args: Any, **kwargs: Any) -> sampling.SamplingResult:
        return self.delegate.should_sample(*args, **kwargs)

    def get_description(self) -> str:
        return f"Sightline({self.delegate.get_description()})"


class _QueueProcessor(SpanProcessor):
    """Hands each ended, sampled span to the current export queue (if any)."""

    def __init__(self, current: Current) -> None:
        self.current = current

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        queue = self.current.queue
        if queue is not None and span.context is not None and span.context.trace_flags.sampled:
            queue.put(span)

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class _Provider(TracerProvider):
    def _handle_fork(self) -> None:
        # The SDK re-detects the resource after fork on a thread pool, which can hang a
        # forked child (seen with SDK 1.45). Sightline writes this process's resource
        # into every export instead, so the child only needs a fresh lock.
        self._tracers_lock = threading.Lock()


def provider(current: Current) -> TracerProvider:
    """The SDK provider whose spans go where ``current`` says."""
    made = _Provider(
        sampler=_DelegatingSampler(current), resource=Resource.get_empty(), shutdown_on_exit=False
    )
    made.add_span_processor(_QueueProcessor(current))
    return made
