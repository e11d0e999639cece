"""Task names and their queues, defined once, and enqueueing by name.

The API never imports the workers: both sides agree on the names here. The worker decorators
(`workers.tasks`), the broker routes (`workers.app`), the sharded build's fan-out and every
`enqueue` read them from this module, so a task cannot be sent to a queue its worker does not
route it to.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any, Literal

import redis
from celery import Celery

from service.settings import Settings
from service.store.redis_conn import broker

BUILD_TASK = "tuneset.build"  # plan a build and fan it out into shards
SHARD_TASK = "tuneset.build_shard"  # one shard of a build
FINALIZE_TASK = "tuneset.build_finalize"  # merge a build's shards into its artifacts
UPLOAD_TASK = "tuneset.upload"  # send a build's files to a provider
FINE_TUNE_TASK = "tuneset.fine_tune"  # start a provider fine-tuning job
FINE_TUNE_POLL_TASK = "tuneset.fine_tune_poll"  # follow it to a terminal state
DELIVER_TASK = "tuneset.deliver"  # one webhook delivery attempt

Lane = Literal["cpu", "io"]
LANES: dict[str, Lane] = {
    BUILD_TASK: "cpu",
    SHARD_TASK: "cpu",
    FINALIZE_TASK: "cpu",
    UPLOAD_TASK: "io",
    FINE_TUNE_TASK: "io",
    FINE_TUNE_POLL_TASK: "io",
    DELIVER_TASK: "io",
}  # cpu: tokenizing and writing files; io: waiting on providers and webhook receivers


def queue_of(settings: Settings, task: str) -> str:
    """The queue `task` runs on (TUNESET_CPU_QUEUE or TUNESET_IO_QUEUE)."""
    return settings.io_queue if LANES[task] == "io" else settings.cpu_queue


def routes(settings: Settings) -> dict[str, dict[str, str]]:
    """Celery's `task_routes`: every task to its queue."""
    return {task: {"queue": queue_of(settings, task)} for task in LANES}


@cache
def _client(broker_url: str) -> Celery:
    url, options = broker(broker_url)
    app = Celery("tuneset-client", broker=url)
    app.conf.broker_connection_retry_on_startup = True
    app.conf.broker_transport_options = {"socket_timeout": 5, "socket_connect_timeout": 5, **options}
    return app


def enqueue(settings: Settings, task: str, args: list[Any], countdown: float | None = None) -> None:
    """Send `task` to its queue; call only after the state it acts on is committed."""
    _client(settings.redis_url).send_task(
        task, args=args, queue=queue_of(settings, task), countdown=countdown
    )


# -- what waits in the broker (kombu's Redis transport) -------------------------------------------

UNACKED = "unacked"  # kombu's hash of messages delivered to a worker and not yet acknowledged
_PRIORITY_SEP = "\x06\x16"  # kombu names a queue's priority lists `<queue>\x06\x16<priority>`
_PRIORITIES = (3, 6, 9)  # kombu's default priority steps above 0 (priority 0 is the queue itself)
_JOB_ID = re.compile(rb"job_[0-9a-f]{28}")
_CHUNK = 500


def broker_lists(settings: Settings) -> list[str]:
    """The Redis lists kombu keeps our queues' waiting messages in."""
    queues = sorted({settings.cpu_queue, settings.io_queue})
    return [*queues, *(f"{q}{_PRIORITY_SEP}{p}" for q in queues for p in _PRIORITIES)]


def jobs_in_broker(r: redis.Redis, settings: Settings, scan_limit: int) -> set[str] | None:
    """The job ids named by a message waiting in a queue or held unacknowledged by a worker, read
    from the raw messages (Celery writes the arguments in clear in `argsrepr`). None when there
    are more than `scan_limit` messages: then nobody can say which job has none."""
    lists = broker_lists(settings)
    pipe = r.pipeline(transaction=False)
    for name in lists:
        pipe.llen(name)
    pipe.hlen(UNACKED)
    *lengths, unacked = pipe.execute()
    if sum(lengths) + int(unacked) > scan_limit:
        return None
    found: set[str] = set()

    def collect(raw: Any) -> None:
        data = raw if isinstance(raw, bytes) else str(raw).encode()
        found.update(m.decode() for m in _JOB_ID.findall(data))

    for name, length in zip(lists, lengths, strict=True):
        for start in range(0, int(length), _CHUNK):
            for raw in r.lrange(name, start, start + _CHUNK - 1):  # type: ignore[union-attr]
                collect(raw)
    for _, raw in r.hscan_iter(UNACKED, count=_CHUNK):
        collect(raw)
    return found
