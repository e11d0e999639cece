"""The workers' composition root: settings, one Redis pool, the job lifecycle and one blob store
per process, made once at process start instead of per task.

`runtime()` builds it on first use and keeps it; every pool child builds its own after the fork
(`workers.tasks` resets it on `worker_process_init`): a Redis pool or an S3 client must not be
shared across a fork.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from service.jobs import Jobs
from service.settings import Settings, get_settings
from service.store.blobs import BlobStore, blob_store_from_settings
from service.store.state import State


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    state: State  # API keys, datasets, the Redis client every store here shares
    blobs: BlobStore

    @property
    def jobs(self) -> Jobs:
        return self.state.jobs

    @classmethod
    def build(cls, settings: Settings | None = None) -> Runtime:
        settings = settings or get_settings()
        return cls(settings, State.from_url(settings.redis_url), blob_store_from_settings(settings))


_current: list[Runtime] = []
_lock = threading.Lock()


def runtime() -> Runtime:
    """This process's runtime, built on first use."""
    with _lock:
        if not _current:
            _current.append(Runtime.build())
        return _current[0]


def reset_runtime() -> Runtime:
    """Build this process's runtime anew (a forked pool child must not use its parent's pool)."""
    with _lock:
        _current[:] = [Runtime.build()]
        return _current[0]
