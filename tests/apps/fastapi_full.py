"""A FastAPI app that knows nothing of Sightline, with every kind of route: its own /docs
and /openapi.json, add_route(), an included router with a prefix, mounted Starlette and
FastAPI apps."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

app = FastAPI()
router = APIRouter()
sub = FastAPI()


@app.get("/health")
def health() -> str:
    return "ok"


@router.get("/items/{item_id}")
def item(item_id: str) -> dict[str, str]:
    return {"item": item_id}


@sub.get("/things/{tid}")
def thing(tid: int) -> dict[str, int]:
    return {"thing": tid}


async def plain(request: Any) -> PlainTextResponse:
    return PlainTextResponse("plain " + "/".join(request.path_params.values()))


app.add_route("/plain/{name}", plain)
app.include_router(router, prefix="/api/v1")
app.mount("/sub/{tenant}", sub)
app.mount("/legacy", Starlette(routes=[Route("/pages/{page}", plain)]))
