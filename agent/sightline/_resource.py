"""Identity of this process: ``service.instance.id`` is unique per process, renewed after fork."""

from __future__ import annotations

import os
import socket
import uuid
from typing import TYPE_CHECKING

from opentelemetry.semconv.attributes import deployment_attributes, service_attributes

if TYPE_CHECKING:
    from ._settings import Settings

HOST_NAME = "host.name"
PROCESS_PID = "process.pid"

_instance_id = str(uuid.uuid4())


def instance_id() -> str:
    return _instance_id


def attributes(settings: Settings) -> dict[str, str | int]:
    """The resource of this process now: the same on spans and on ``target_info``."""
    result: dict[str, str | int] = dict(settings.resource_attributes)
    result[service_attributes.SERVICE_NAME] = settings.service
    if settings.service_version:
        result[service_attributes.SERVICE_VERSION] = settings.service_version
    if settings.environment:
        result[deployment_attributes.DEPLOYMENT_ENVIRONMENT_NAME] = settings.environment
    result[service_attributes.SERVICE_INSTANCE_ID] = _instance_id
    result[HOST_NAME] = socket.gethostname()
    result[PROCESS_PID] = os.getpid()
    return result


def _renew() -> None:
    global _instance_id
    _instance_id = str(uuid.uuid4())


# A pre-forking server (gunicorn --preload, Celery prefork) copies the parent's id into
# every worker; each worker is its own instance, so it gets a fresh one.
os.register_at_fork(after_in_child=_renew)
