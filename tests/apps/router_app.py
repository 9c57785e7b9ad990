"""Apps with a router of their own (no framework): ASGI ``app``, the same wrapped with a
``route_of`` (``named``), and a WSGI twin (``wsgi_app``). They know nothing of Sightline
unless wrapped."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

REASONS = {200: "OK", 204: "No Content", 404: "Not Found"}


def _answer(path: str) -> tuple[int, bytes]:
    parts = path.strip("/").split("/")
    if parts == ["health"]:
        return 204, b""
    if len(parts) == 2 and parts[0] == "items":
        return 200, f"item {parts[1]}".encode()
    return 404, b"no such page"


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    status, body = _answer(scope["path"])
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": body})


def wsgi_app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    status, body = _answer(environ["PATH_INFO"])
    start_response(f"{status} {REASONS[status]}", [])
    return [body]


def route_of(scope: dict[str, Any]) -> str | None:
    parts = scope["path"].strip("/").split("/")
    if parts == ["health"]:
        return "/health"
    return "/items/{id}" if len(parts) == 2 and parts[0] == "items" else None


def _named() -> Any:
    import sightline

    return sightline.instrument_app(app, route_of=route_of)


named = _named()
