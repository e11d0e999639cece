"""What a worker does for the pod it runs in: a heartbeat its liveness probe reads, and the
shutdown budget its grace period is sized on.

The heartbeat is written by a consumer bootstep on the worker's own event-loop timer, so it stops
when the main process hangs, when its event loop stalls, or while it has lost the broker and is
reconnecting; a busy pool does not stop it (the steps run in the children). `python -m
workers.probe` fails when the file is older than its limit. Chosen over `celery inspect ping`,
which starts a whole Celery client per probe (~1 s of CPU, 100 MB) and answers through Redis,
so a Redis outage would fail every worker's probe at once and restart them all.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, ClassVar

from celery import bootsteps
from celery.signals import celeryd_init, worker_init

from service.settings import get_settings
from workers.app import app

HEARTBEAT_INTERVAL_S = 5.0


def write_heartbeat(path: Path) -> None:
    """The time now, written whole (a probe never reads half a file)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{time.time():.3f}\n")
    os.replace(tmp, path)


class Heartbeat(bootsteps.StartStopStep):  # type: ignore[misc]
    """Runs while the consumer consumes: started once connected, stopped on connection loss."""

    requires: ClassVar[set[str]] = {"celery.worker.consumer.tasks:Tasks"}

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.path = get_settings().worker_heartbeat_file
        self.tref: Any = None

    def start(self, parent: Any) -> None:
        if self.path is None:
            return
        path = self.path
        path.parent.mkdir(parents=True, exist_ok=True)
        write_heartbeat(path)
        self.tref = parent.timer.call_repeatedly(HEARTBEAT_INTERVAL_S, write_heartbeat, (path,), priority=10)

    def stop(self, parent: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None

    def shutdown(self, parent: Any) -> None:
        self.stop(parent)
        if self.path is not None:
            self.path.unlink(missing_ok=True)


app.steps["consumer"].add(Heartbeat)


@worker_init.connect  # type: ignore[untyped-decorator]
def _forget_old_heartbeat(**_: Any) -> None:
    """A heartbeat left by this container's previous run (the emptyDir outlives it) must not pass
    the startup probe for a worker that is not consuming yet."""
    path = get_settings().worker_heartbeat_file
    if path is not None:
        path.unlink(missing_ok=True)


@celeryd_init.connect  # type: ignore[untyped-decorator]
def _soft_shutdown(conf: Any = None, **_: Any) -> None:
    """With REMAP_SIGTERM=SIGQUIT (set in the pod), SIGTERM starts Celery's cold shutdown: running
    steps get TUNESET_WORKER_SOFT_SHUTDOWN_S to finish, then they are cancelled and, being
    acks_late with reject_on_worker_lost, handed back to the queue for another worker at once,
    instead of waiting for the broker's visibility timeout."""
    if conf is not None:
        conf.worker_soft_shutdown_timeout = get_settings().worker_soft_shutdown_s
