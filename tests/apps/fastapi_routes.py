"""A FastAPI app with a router prefix, a mounted sub-app, an error and a stream."""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import APIRouter, FastAPI
from fastapi.responses import StreamingResponse


def build() -> FastAPI:
    app = FastAPI()
    router = APIRouter(prefix="/api/v1")
    sub = FastAPI()

    @app.get("/health")
    def health() -> str:
        return "ok"

    @app.get("/users/{uid}")
    async def user(uid: int) -> dict[str, int]:
        return {"uid": uid}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("the view failed")

    @app.get("/stream")
    def stream() -> StreamingResponse:
        def chunks() -> Iterator[bytes]:
            yield from (b"a", b"b", b"c")

        return StreamingResponse(chunks())

    @router.get("/items/{item_id}")
    def item(item_id: str) -> dict[str, str]:
        return {"item": item_id}

    @sub.get("/things/{tid}")
    def thing(tid: int) -> dict[str, int]:
        return {"thing": tid}

    app.include_router(router)
    app.mount("/sub", sub)
    return app
