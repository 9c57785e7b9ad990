"""A Quart app that knows nothing of Sightline: a blueprint prefix and an error."""

from __future__ import annotations

from quart import Blueprint, Quart

app = Quart(__name__)
api = Blueprint("api", __name__, url_prefix="/api")


@app.route("/health")
async def health() -> str:
    return "ok"


@app.route("/users/<int:uid>")
async def user(uid: int) -> dict[str, int]:
    return {"uid": uid}


@app.route("/boom")
async def boom() -> str:
    raise RuntimeError("the view failed")


@api.route("/items/<name>")
async def item(name: str) -> dict[str, str]:
    return {"item": name}


app.register_blueprint(api)
