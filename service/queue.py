"""Enqueue tasks by name: the API never imports the workers, only agrees on task names."""

from __future__ import annotations

from functools import cache
from typing import Any

from celery import Celery

from service.settings import Settings

BUILD_TASK = "tuneset.build"
UPLOAD_TASK = "tuneset.upload"  # the io queue: send a build's files to a provider
FINE_TUNE_TASK = "tuneset.fine_tune"  # the io queue: start a provider fine-tuning job
FINE_TUNE_POLL_TASK = "tuneset.fine_tune_poll"  # the io queue: follow it to a terminal state
DELIVER_TASK = "tuneset.deliver"  # the io queue: one webhook delivery attempt


@cache
def _client(broker_url: str) -> Celery:
    app = Celery("tuneset-client", broker=broker_url)
    app.conf.broker_connection_retry_on_startup = True
    app.conf.broker_transport_options = {"socket_timeout": 5, "socket_connect_timeout": 5}
    return app


def enqueue(settings: Settings, task: str, args: list[Any], queue: str | None = None) -> None:
    """Send `task` to the broker; call only after the state it acts on is committed."""
    _client(settings.redis_url).send_task(task, args=args, queue=queue or settings.cpu_queue)
