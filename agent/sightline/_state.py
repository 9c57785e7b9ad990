"""The running agent: the one piece of state the rest of Sightline reads.

:data:`current` is the agent ``init()`` started. It is None before ``init()``, after
``shutdown()`` and when ``SIGHTLINE_DISABLED`` is set, and every hook then passes the
app's work straight through. The hot path reads ``_state.current``, one attribute
lookup; only :func:`attach` and :func:`stop` change it, under :data:`lock`.

This module imports nothing of Sightline's, so every other module can read it without
closing an import cycle.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._agent import Agent

Depth = Callable[[], float]
Age = Callable[[], "float | None"]

#: Held while an agent starts or stops: ``init()``, ``shutdown()``, a worker's exit path.
lock = threading.RLock()

current: Agent | None = None

#: Queues declared with ``sightline.track_queue()``, before or after ``init()``:
#: (system, name) -> (depth, oldest age). Each agent that starts samples them all.
tracked: dict[tuple[str, str], tuple[Depth, Age | None]] = {}


def attach(agent: Agent) -> None:
    """Make ``agent`` (started) the current one."""
    global current
    with lock:
        current = agent


def stop(timeout: float | None = None) -> None:
    """Make no agent current and close the one that was, within ``timeout`` seconds (or
    its shutdown budget): ``shutdown()``, and the exit paths of server processes."""
    global current
    with lock:
        agent, current = current, None
        if agent is not None:
            agent.close(timeout)


def track_queue(system: str, name: str, depth: Depth, oldest_age: Age | None) -> None:
    """Remember a queue to sample, and have the running agent (if any) sample it now."""
    with lock:
        tracked[(system, name)] = (depth, oldest_age)
        if current is not None:
            current.queue_depths.track(system, name, depth, oldest_age)
