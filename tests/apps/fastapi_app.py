"""The FastAPI test app, instrumented with one line, as uvicorn serves it in the tests."""

import sightline

sightline.init(service="fastapi-shop")

from .fastapi_routes import build  # noqa: E402

app = build()
