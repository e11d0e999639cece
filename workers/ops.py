"""Operations hooks of a worker, loaded by the Celery app's `include`: metrics (`workers.metrics`),
the heartbeat and shutdown budget (`workers.pod`) and JSON logs (`service.logs`), all through
Celery signals and bootsteps, none in the tasks themselves."""

from __future__ import annotations

from workers import metrics, pod

__all__ = ["metrics", "pod"]
