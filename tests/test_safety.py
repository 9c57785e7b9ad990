"""The safety net: what ``internal_errors`` swallows, reports and lets through."""

from __future__ import annotations

import pytest
from sightline import _safety


@pytest.mark.internal_errors_expected
def test_an_agent_error_is_reported_and_suppressed(internal_errors: list[BaseException]) -> None:
    """An ``Exception`` inside ``internal_errors`` goes no further, and is reported once,
    counted under the place it was raised."""
    counted: list[str] = []
    _safety.count_with(counted.append)
    try:
        with _safety.internal_errors("test.where"):
            raise ValueError("agent bug")
        after = True
    finally:
        _safety.stop_counting(counted.append)
    assert after
    assert [str(e) for e in internal_errors] == ["agent bug"]
    assert counted == ["test.where"]


def test_an_interrupt_passes_through(internal_errors: list[BaseException]) -> None:
    """``KeyboardInterrupt`` and ``SystemExit`` are not the agent's to swallow: they
    propagate, and nothing is reported."""
    for stop in (KeyboardInterrupt, SystemExit):
        with pytest.raises(stop), _safety.internal_errors("test.where"):
            raise stop()
    assert internal_errors == []


def test_nothing_raised_reports_nothing(internal_errors: list[BaseException]) -> None:
    """Work that raises nothing runs to its end and reports nothing."""
    ran = []
    with _safety.internal_errors("test.where"):
        ran.append(1)
    assert ran == [1]
    assert internal_errors == []
