"""A worker's log lines in JSON (TUNESET_LOG_FORMAT=json) carrying the job and tenant of the step
that wrote them (`service.logs`), set from Celery signals around every step."""

from __future__ import annotations

from typing import Any

import redis
from celery import Task
from celery.signals import after_setup_logger, after_setup_task_logger, task_prerun

from service import logs
from service.settings import get_settings
from workers.runtime import runtime


@after_setup_logger.connect  # type: ignore[untyped-decorator]
@after_setup_task_logger.connect  # type: ignore[untyped-decorator]
def _json_handlers(logger: Any = None, **_: Any) -> None:
    if get_settings().log_format == "json":
        logs.celery_logger_setup(logger)


_tenants: dict[str, str | None] = {}  # job id → tenant, for the steps this process runs


def _tenant_of(job_id: str) -> str | None:
    if job_id not in _tenants:
        try:
            tenant = runtime().jobs.tenant_of(job_id)
        except redis.RedisError:
            return None  # the step will meet the outage itself; its lines go without a tenant
        if len(_tenants) > 10_000:
            _tenants.clear()
        _tenants[job_id] = tenant
    return _tenants[job_id]


@task_prerun.connect  # type: ignore[untyped-decorator]
def _bind_step(task: Task, args: tuple[Any, ...] = (), **_: Any) -> None:
    """Kept until the next step binds its own, so the lines at the step's end carry it too."""
    job_id = args[0] if args and isinstance(args[0], str) and args[0].startswith("job_") else None
    logs.bind(job_id=job_id, tenant=_tenant_of(job_id) if job_id else None)
