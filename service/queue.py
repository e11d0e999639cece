"""Enqueue tasks by name: the API never imports the workers, only agrees on task names."""

from __future__ import annotations

from functools import cache
from typing import Any

from celery import Celery

from service.settings import Settings

BUILD_TASK = "tuneset.build"


@cache
def _client(broker_url: str) -> Celery:
    app = Celery("tuneset-client", broker=broker_url)
    app.conf.broker_connection_retry_on_startup = True
    app.conf.broker_transport_options = {"socket_timeout": 5, "socket_connect_timeout": 5}
    return app


def enqueue(settings: Settings, task: str, args: list[Any], queue: str | None = None) -> None:
    """Send `task` to the broker; call only after the state it acts on is committed."""
    _client(settings.redis_url).send_task(task, args=args, queue=queue or settings.cpu_queue)
