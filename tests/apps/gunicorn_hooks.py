"""gunicorn config calling sightline.init() from the hook named by SIGHTLINE_TEST_HOOK
(on_starting, post_fork or post_worker_init), as teams do who keep the app untouched."""

from __future__ import annotations

import os
from typing import Any

HOOK = os.environ.get("SIGHTLINE_TEST_HOOK", "")


def _init() -> None:
    import sightline

    sightline.init(service="hooks")


def on_starting(server: Any) -> None:
    if HOOK == "on_starting":
        _init()


def post_fork(server: Any, worker: Any) -> None:
    if HOOK == "post_fork":
        _init()


def post_worker_init(worker: Any) -> None:
    if HOOK == "post_worker_init":
        _init()
