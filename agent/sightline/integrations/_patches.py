"""Wrappers that time the calls of a library's methods, for the integrations' tables of
patches (see :class:`._base.Patch`, which replaces the methods and puts them back)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

from .. import _safety

#: Called with a call's arguments before it runs: what ``end`` needs, or None to let the
#: call through unmeasured (no agent, a call not counted).
Begin = Callable[[tuple[Any, ...]], Any]
#: Called after it: (what ``begin`` returned, the result or None, the exception's class
#: name or "", seconds).
End = Callable[[Any, Any, str, float], None]


def timed(original: Callable[..., Any], begin: Begin, end: End, where: str) -> Any:
    """``original`` timed: what it returns or raises (a cancellation included) reaches the
    caller unchanged; ``begin`` and ``end`` run under the safety net."""

    def measured(*args: Any, **kwargs: Any) -> Any:
        context = _begin(begin, args, where)
        if context is None:
            return original(*args, **kwargs)
        start = time.perf_counter()
        try:
            result = original(*args, **kwargs)
        except BaseException as exc:
            _end(end, context, None, type(exc).__name__, start, where)
            raise
        _end(end, context, result, "", start, where)
        return result

    measured.__wrapped__ = original  # type: ignore[attr-defined]
    return measured


def timed_async(original: Callable[..., Any], begin: Begin, end: End, where: str) -> Any:
    """:func:`timed` for a coroutine function."""

    async def measured(*args: Any, **kwargs: Any) -> Any:
        context = _begin(begin, args, where)
        if context is None:
            return await original(*args, **kwargs)
        start = time.perf_counter()
        try:
            result = await original(*args, **kwargs)
        except BaseException as exc:
            _end(end, context, None, type(exc).__name__, start, where)
            raise
        _end(end, context, result, "", start, where)
        return result

    measured.__wrapped__ = original  # type: ignore[attr-defined]
    return measured


# These two run on every call measured: a plain try rather than the safety net's context
# manager, same effect at a fraction of the cost.
def _begin(begin: Begin, args: tuple[Any, ...], where: str) -> Any:
    try:
        return begin(args)
    except Exception as exc:
        _safety.report(where, exc)
        return None  # the call goes through unmeasured


def _end(end: End, context: Any, result: Any, error: str, start: float, where: str) -> None:
    seconds = time.perf_counter() - start
    try:
        end(context, result, error, seconds)
    except Exception as exc:
        _safety.report(where, exc)


def timed_stream(original: Callable[..., Any], begin: Begin, end: End, where: str) -> Any:
    """:func:`timed` for a generator function that runs its call when the first item is
    asked for (a query streamed row by row): timed until the first item (or the end, or
    the error); the rest is the caller's pace, not the call's."""

    def measured(*args: Any, **kwargs: Any) -> Any:
        items = original(*args, **kwargs)
        context = _begin(begin, args, where)
        return items if context is None else _first_timed(items, context, end, where)

    measured.__wrapped__ = original  # type: ignore[attr-defined]
    return measured


def _first_timed(items: Any, context: Any, end: End, where: str) -> Any:
    start = time.perf_counter()
    try:
        first = next(items)
    except StopIteration:
        _end(end, context, None, "", start, where)
        return
    except BaseException as exc:
        _end(end, context, None, type(exc).__name__, start, where)
        raise
    _end(end, context, None, "", start, where)
    yield first
    yield from items


def timed_async_stream(original: Callable[..., Any], begin: Begin, end: End, where: str) -> Any:
    """:func:`timed_stream` for an async generator function."""

    def measured(*args: Any, **kwargs: Any) -> Any:
        items = original(*args, **kwargs)
        context = _begin(begin, args, where)
        return items if context is None else _first_timed_async(items, context, end, where)

    measured.__wrapped__ = original  # type: ignore[attr-defined]
    return measured


async def _first_timed_async(items: Any, context: Any, end: End, where: str) -> Any:
    start = time.perf_counter()
    try:
        first = await items.__anext__()
    except StopAsyncIteration:
        _end(end, context, None, "", start, where)
        return
    except BaseException as exc:
        _end(end, context, None, type(exc).__name__, start, where)
        raise
    _end(end, context, None, "", start, where)
    try:
        yield first
        async for item in items:
            yield item
    finally:
        await items.aclose()  # as `yield from` would close it: the connection is freed


def timed_block(original: Callable[..., Any], begin: Begin, end: End, where: str) -> Any:
    """:func:`timed` for a method returning a context manager (a COPY): timed from entering
    it to leaving it; an exception leaving the block is the call's error."""

    @contextlib.contextmanager
    def measured(*args: Any, **kwargs: Any) -> Any:
        context = _begin(begin, args, where)
        start = time.perf_counter()
        try:
            with original(*args, **kwargs) as value:
                yield value
        except BaseException as exc:
            if context is not None:
                _end(end, context, None, type(exc).__name__, start, where)
            raise
        if context is not None:
            _end(end, context, None, "", start, where)

    measured.__wrapped__ = original  # type: ignore[attr-defined]
    return measured


def timed_async_block(original: Callable[..., Any], begin: Begin, end: End, where: str) -> Any:
    """:func:`timed_block` for a method returning an async context manager."""

    @contextlib.asynccontextmanager
    async def measured(*args: Any, **kwargs: Any) -> Any:
        context = _begin(begin, args, where)
        start = time.perf_counter()
        try:
            async with original(*args, **kwargs) as value:
                yield value
        except BaseException as exc:
            if context is not None:
                _end(end, context, None, type(exc).__name__, start, where)
            raise
        if context is not None:
            _end(end, context, None, "", start, where)

    measured.__wrapped__ = original  # type: ignore[attr-defined]
    return measured
