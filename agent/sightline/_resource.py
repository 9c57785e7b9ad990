"""Identity of this process: ``service.instance.id`` is unique per process, renewed after fork."""

from __future__ import annotations

import os
import uuid

_instance_id = str(uuid.uuid4())


def instance_id() -> str:
    return _instance_id


def _renew() -> None:
    global _instance_id
    _instance_id = str(uuid.uuid4())


# A pre-forking server (gunicorn --preload, Celery prefork) copies the parent's id into
# every worker; each worker is its own instance, so it gets a fresh one.
os.register_at_fork(after_in_child=_renew)
