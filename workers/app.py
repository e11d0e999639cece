"""The Celery application: configuration that makes tasks survive dying workers.

`acks_late` + `reject_on_worker_lost` re-deliver a task whose worker died (measured here:
with `acks_late` alone killed tasks were lost); prefetch 1 keeps one task per process; the
broker's visibility timeout exceeds the hard time limit, so a healthy long task is never
handed to a second worker. `worker_cancel_long_running_tasks_on_connection_loss` stays off:
with it on, a Redis restart killed the worker (shared/reliability.md).
"""

from __future__ import annotations

from celery import Celery

from service.queue import routes
from service.settings import Settings, get_settings
from service.store.redis_conn import broker


def make_app(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    if settings.visibility_timeout_s <= settings.build_time_limit_s:
        raise ValueError("TUNESET_VISIBILITY_TIMEOUT_S must exceed TUNESET_BUILD_TIME_LIMIT_S")
    broker_url, broker_options = broker(settings.redis_url)
    app = Celery("tuneset", broker=broker_url, include=["workers.tasks", "workers.ops"])
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=settings.build_time_limit_s,
        # the soft limit leaves a tenth of the budget to record the failure before the hard kill
        task_soft_time_limit=max(1, settings.build_time_limit_s * 9 // 10),
        task_ignore_result=True,
        task_default_queue=settings.cpu_queue,
        task_routes=routes(settings),
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_s,
            "socket_timeout": 10,
            "socket_connect_timeout": 5,
            **broker_options,
        },
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_hijack_root_logger=False,
    )
    return app


app = make_app()
