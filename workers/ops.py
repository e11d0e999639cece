"""Operations hooks of a worker, loaded by the Celery app's `include`: metrics (`workers.metrics`),
the heartbeat and shutdown budget (`workers.pod`), JSON logs carrying each step's job and tenant
(`workers.log_context`); all through Celery signals and bootsteps, none in the tasks themselves."""

from __future__ import annotations

from workers import log_context, metrics, pod

__all__ = ["log_context", "metrics", "pod"]
