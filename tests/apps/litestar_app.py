"""A Litestar app that knows nothing of Sightline: a router prefix, a mount, an error."""

from __future__ import annotations

from typing import Any

from litestar import Litestar, Router, asgi, get
from litestar.params import FromPath


@get("/health")
async def health() -> str:
    return "ok"


@get("/users/{uid:int}")
async def user(uid: FromPath[int]) -> dict[str, int]:
    return {"uid": uid}


@get("/items/{name:str}")
async def item(name: FromPath[str]) -> dict[str, str]:
    return {"item": name}


@get("/boom")
async def boom() -> None:
    raise RuntimeError("the handler failed")


@asgi("/files", is_mount=True, copy_scope=True)
async def files(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": scope["path"].encode()})


app = Litestar([health, user, boom, files, Router("/api/{version:str}", route_handlers=[item])])
