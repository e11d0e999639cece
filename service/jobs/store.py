"""Job records in Redis and the state machine that moves them: the one owner of a job's keys.

A job is one hash (its spec, status, stage, progress, result, error), one event stream and an
entry in its tenant's index. Status changes are named operations (`start`, `succeed`, `fail`,
`cancel`, `request_cancel`); each is one Lua compare-and-set, so concurrent workers and cancels
agree: a job reaches exactly one terminal state, and `started_at` / `finished_at` are written by
the operation that made them true. No caller names a status it moves from.

Retention: Redis runs with `noeviction`, so nothing may be kept forever. The operation that
ends a job (succeeded, failed, cancelled) sets an expiry on its hash, its event stream and its
set of finished shards in the same atomic step, and queues the job for its webhooks; queued and
running jobs never expire. The retention is written into the job when it is created
(`TUNESET_JOB_RETENTION_S`, 30 days by default), so every process that ends it (API or worker)
applies the same one. A tenant's index loses an expired id lazily: the listing that finds its
record gone removes it.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Any, Literal

import msgspec
import redis

from service.jobs import keys
from service.jobs.errors import Code, JobError
from service.jobs.leases import exclusive
from service.jobs.specs import JobSpec, decode_spec, encode_spec, kind_of
from service.metrics import record_job_transition
from service.store.ids import new_id, now

Status = Literal["queued", "running", "succeeded", "failed", "cancelled"]
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
DEFAULT_JOB_RETENTION_S = 30 * 24 * 3600  # how long a finished job is kept (TUNESET_JOB_RETENTION_S)

_QUEUED = frozenset({"queued"})
_RUNNING = frozenset({"running"})
_LIVE = frozenset({"queued", "running"})

# KEYS[1] job hash, KEYS[2] the notification list, KEYS[3] the job's event stream, KEYS[4] its
# set of finished shards, KEYS[5] the index of live jobs (a job leaves it as it ends); ARGV:
# allowed-from statuses (comma separated), to, the job id, "1" when `to` is terminal, the
# retention (seconds) for a job created without one, the status event's data (JSON), then
# field/value pairs. The status event is written by the same script, so no reader
# ever sees a job's new status without its event (nor a killed worker leave one without the other).
# Returns the job's kind (a string) when it moved, 0 when its status did not allow it, -1 when gone.
_TRANSITION = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return -1 end
for allowed in string.gmatch(ARGV[1], '[^,]+') do
  if status == allowed then
    redis.call('HSET', KEYS[1], 'status', ARGV[2])
    for i = 7, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', '10000', '*', 'type', 'status', 'data', ARGV[6])
    if ARGV[4] == '1' then
      redis.call('LPUSH', KEYS[2], ARGV[3])
      redis.call('ZREM', KEYS[5], ARGV[3])
      local ttl = tonumber(redis.call('HGET', KEYS[1], 'retention_s')) or tonumber(ARGV[5])
      redis.call('EXPIRE', KEYS[1], ttl)
      redis.call('EXPIRE', KEYS[3], ttl)
      redis.call('EXPIRE', KEYS[4], ttl)
    end
    return redis.call('HGET', KEYS[1], 'kind') or ''
  end
end
return 0
"""

# KEYS[1] done set, KEYS[2] job hash; ARGV: shard index, its examples. Returns how many are done.
_COMPLETE_SHARD = """
if redis.call('SADD', KEYS[1], ARGV[1]) == 1 then
  redis.call('HINCRBY', KEYS[2], 'done', ARGV[2])
end
return redis.call('SCARD', KEYS[1])
"""


def spec_of(job: dict[str, Any]) -> JobSpec:
    """A job record's spec, decoded as its kind's Struct."""
    return decode_spec(str(job["kind"]), job.get("spec"))


# The index of live jobs is scored by the Redis clock (workers' clocks may disagree).
_SEEN = """
if redis.replicate_commands then redis.replicate_commands() end
local now = tonumber(redis.call('TIME')[1])
for i = 2, #ARGV do
  if ARGV[1] == 'XX' then
    redis.call('ZADD', KEYS[1], 'XX', now, ARGV[i])
  else
    redis.call('ZADD', KEYS[1], now, ARGV[i])
  end
end
return #ARGV - 1
"""
_UNSEEN = """
if redis.replicate_commands then redis.replicate_commands() end
local now = tonumber(redis.call('TIME')[1])
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]), 'LIMIT', 0, tonumber(ARGV[2]))
"""


@dataclass
class Jobs:
    r: redis.Redis
    retention_s: int = DEFAULT_JOB_RETENTION_S  # written into the jobs created here

    def __post_init__(self) -> None:
        self._seen = self.r.register_script(_SEEN)
        self._unseen = self.r.register_script(_UNSEEN)

    # -- records ----------------------------------------------------------------------------

    def create(
        self, tenant: str, spec: JobSpec, *, job_id: str | None = None, stage: str = "queued"
    ) -> dict[str, Any]:
        """A queued job; give `job_id` (from `new_job_id()`) when other jobs' specs must name it
        first, and `stage="waiting"` for a job that waits for another (see `chain`)."""
        job_id = job_id or new_job_id()
        job = {
            "id": job_id,
            "tenant": tenant,
            "kind": kind_of(spec),
            "status": "queued",
            "stage": stage,
            "done": 0,
            "total": 0,
            "created_at": now(),
            "spec": encode_spec(spec),
            "attempts": 0,
            "retention_s": self.retention_s,  # the expiry its terminal transition sets
        }
        pipe = self.r.pipeline()
        pipe.hset(keys.job_key(job_id), mapping=job)
        pipe.zadd(keys.tenant_jobs_key(tenant), {job_id: 0})
        dataset_id = getattr(spec, "dataset_id", None)
        if dataset_id:  # so deleting the dataset finds the files built from it
            pipe.sadd(keys.dataset_jobs_key(dataset_id), job_id)
        # the record and its first event in one MULTI: a job is never seen without its "queued"
        pipe.xadd(keys.events_key(job_id), {"type": "status", "data": _encode({"status": "queued"})})
        pipe.execute()
        record_job_transition(str(job["kind"]), "queued")
        return self.get(job_id) or job

    def get(self, job_id: str) -> dict[str, Any] | None:
        raw: dict[str, str] = self.r.hgetall(keys.job_key(job_id))  # type: ignore[assignment]
        if "tenant" not in raw:  # gone (expired), or a late write's stub of an expired job
            return None
        job: dict[str, Any] = dict(raw)
        for field in ("done", "total", "attempts"):
            job[field] = int(raw.get(field, 0))
        for field in ("created_at", "started_at", "finished_at"):
            job[field] = float(raw[field]) if raw.get(field) else None
        for field in ("spec", "result", "error"):
            job[field] = json.loads(raw[field]) if raw.get(field) else None
        if isinstance(job["spec"], dict):
            job["spec"].pop("kind", None)  # the record names its kind once
        job["cancel_requested"] = raw.get("cancel_requested") == "1"
        return job

    def tenant_of(self, job_id: str) -> str | None:
        """The job's tenant alone (one field, for log lines), None when the job is gone."""
        tenant: str | None = self.r.hget(keys.job_key(job_id), "tenant")  # type: ignore[assignment]
        return tenant

    def tenant_job(self, tenant: str, job_id: str) -> dict[str, Any] | None:
        job = self.get(job_id)
        return job if job and job["tenant"] == tenant else None

    def tenant_jobs(self, tenant: str, ids: list[str]) -> list[dict[str, Any]]:
        """The tenant's jobs of `ids` that still exist, in order; ids whose record has expired
        are removed from the tenant's index here (the lazy half of the retention policy)."""
        jobs = [self.tenant_job(tenant, i) for i in ids]
        gone = [i for i, job in zip(ids, jobs, strict=True) if job is None]  # the index is per tenant
        if gone:
            self.r.zrem(keys.tenant_jobs_key(tenant), *gone)
        return [job for job in jobs if job is not None]

    # -- the state machine ------------------------------------------------------------------

    def start(self, job_id: str, stage: str) -> bool:
        """queued → running; False when another worker started it first, or it has ended."""
        return self._move(job_id, _QUEUED, "running", stage=stage)

    def progress(self, job_id: str, stage: str, done: int, total: int) -> None:
        self.r.hset(keys.job_key(job_id), mapping={"stage": stage, "done": done, "total": total})
        self.event(job_id, "progress", {"stage": stage, "done": done, "total": total})

    def succeed(self, job_id: str, result: dict[str, Any]) -> bool:
        """running → succeeded with its result."""
        return self._move(job_id, _RUNNING, "succeeded", stage="done", result=result)

    def fail(self, job_id: str, code: Code, message: str, *, result: dict[str, Any] | None = None) -> bool:
        """queued or running → failed with `{code, message}` (and what it had, in `result`)."""
        fields: dict[str, Any] = {"error": JobError(str(code), message)}
        if result is not None:
            fields["result"] = result
        return self._move(job_id, _LIVE, "failed", stage="failed", **fields)

    def cancel(
        self, job_id: str, *, result: dict[str, Any] | None = None, error: JobError | None = None
    ) -> bool:
        """queued or running → cancelled (a worker honouring a request, or a chain's follower
        whose predecessor was cancelled: then `error` says so)."""
        fields: dict[str, Any] = {}
        if result is not None:
            fields["result"] = result
        if error is not None:
            fields["error"] = error
        return self._move(job_id, _LIVE, "cancelled", stage="cancelled", **fields)

    def request_cancel(self, job_id: str) -> bool:
        """Ask the job to stop: a queued one is cancelled now (True), a running one by its worker
        at its next check (`cancel_requested`)."""
        self.r.hset(keys.job_key(job_id), "cancel_requested", "1")
        return self._move(job_id, _QUEUED, "cancelled", stage="cancelled")

    def cancel_requested(self, job_id: str) -> bool:
        return self.r.hget(keys.job_key(job_id), "cancel_requested") == "1"

    # -- the index of live jobs, for the orphan sweep (service/jobs/orphans.py) ----------------

    def mark_sent(self, job_id: str) -> None:
        """The job's first step is about to be sent: from now on some step of it is in flight
        until it ends (the sweep checks that). Call before enqueueing, so no sweep can miss it."""
        self._seen(keys=[keys.LIVE], args=["", job_id])

    def seen_in_flight(self, job_ids: list[str]) -> None:
        """These live jobs were seen with a step in flight (now, by the Redis clock)."""
        if job_ids:
            self._seen(keys=[keys.LIVE], args=["XX", *job_ids])  # an ended job stays out

    def unseen_since(self, age_s: float, limit: int) -> list[str]:
        """Live jobs not seen in flight for `age_s` seconds, oldest first, at most `limit`."""
        ids: list[str] = self._unseen(keys=[keys.LIVE], args=[age_s, limit])
        return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]

    def forget_live(self, job_ids: list[str]) -> None:
        """Drop ids from the index (their jobs ended or expired before the index learnt it)."""
        if job_ids:
            self.r.zrem(keys.LIVE, *job_ids)

    def _move(self, job_id: str, allowed: frozenset[str], to: Status, **fields: Any) -> bool:
        """Compare-and-set the status; False when the job is not in an allowed status."""
        terminal = to in TERMINAL
        if terminal:
            fields.setdefault("finished_at", now())
        if to == "running":
            fields.setdefault("started_at", now())
        argv: list[str] = [
            ",".join(sorted(allowed)),
            to,
            job_id,
            "1" if terminal else "0",
            str(self.retention_s),
        ]
        event: dict[str, Any] = {"status": to}
        if "error" in fields:
            event["error"] = fields["error"]
        argv.append(_encode(event))
        for name, value in fields.items():
            argv += [name, value if isinstance(value, str) else _encode(value)]
        script_keys = (
            keys.job_key(job_id),
            keys.NOTIFY,
            keys.events_key(job_id),
            keys.shards_done_key(job_id),
            keys.LIVE,
        )
        reply: Any = self.r.eval(_TRANSITION, len(script_keys), *script_keys, *argv)
        if isinstance(reply, bytes):  # a client without decode_responses
            reply = reply.decode()
        moved = isinstance(reply, str)
        if moved:
            record_job_transition(reply, to)
        return moved

    # -- what a running step records --------------------------------------------------------

    def update_result(self, job_id: str, **fields: Any) -> None:
        """Merge fields into a running job's result (provider file ids, fine-tuning status, ...)."""
        job = self.get(job_id) or {}
        result = {**(job.get("result") or {}), **fields}
        self.r.hset(keys.job_key(job_id), "result", json.dumps(result))

    def forget_artifacts(self, job_id: str) -> None:
        """The job's files were deleted with its dataset: its result no longer lists them."""
        job = self.get(job_id) or {}
        if isinstance(job.get("result"), dict) and job["result"].get("artifacts"):
            self.update_result(job_id, artifacts=[], dataset_deleted=True)

    def count_attempt(self, job_id: str) -> int:
        """One more start of the job's step; returns how many there were."""
        attempts: Any = self.r.hincrby(keys.job_key(job_id), "attempts", 1)
        return int(attempts)

    def count_shard_attempt(self, job_id: str, index: int) -> int:
        """One more start of shard `index` of a build; returns how many there were."""
        attempts: Any = self.r.hincrby(keys.job_key(job_id), f"shard_attempts:{index}", 1)
        return int(attempts)

    def set_shards(self, job_id: str, shards: int, *, total: int) -> None:
        """The build's plan: its shard count and its examples (kept when a plan is sent again)."""
        self.r.hset(keys.job_key(job_id), mapping={"shards": str(shards), "total": str(total)})

    def complete_shard(self, job_id: str, index: int, examples: int) -> int:
        """Record a shard as done (its examples count once however often it is redelivered);
        returns how many shards are done."""
        script_keys = (keys.shards_done_key(job_id), keys.job_key(job_id))
        done: Any = self.r.eval(_COMPLETE_SHARD, 2, *script_keys, str(index), str(examples))
        return int(done)

    def provider_job(self, job_id: str) -> str | None:
        """The provider's fine-tuning job id, once this job created it."""
        value: Any = self.r.hget(keys.job_key(job_id), "provider_job_id")
        return str(value) if value else None

    def creating_provider_job(self, job_id: str, ttl_s: float) -> contextlib.AbstractContextManager[bool]:
        """Hold the lock on creating the job's provider fine-tuning job (True) or learn that a live
        run of the step holds it (False): two runs at once would both find none and create two."""
        return exclusive(self.r, keys.job_key(job_id) + ":creating", ttl_s)

    def record_provider_job(self, job_id: str, provider_id: str, provider_job_id: str) -> None:
        pipe = self.r.pipeline()
        pipe.hset(keys.job_key(job_id), "provider_job_id", provider_job_id)
        pipe.set(keys.provider_job_key(provider_id, provider_job_id), job_id)
        pipe.execute()

    def job_of_provider_job(self, provider_id: str, provider_job_id: str) -> str | None:
        """The tuneset job that created the provider's fine-tuning job (for its webhooks)."""
        value: Any = self.r.get(keys.provider_job_key(provider_id, provider_job_id))
        return str(value) if value else None

    def uploaded_file(self, build_job: str, provider_id: str, side: str) -> str | None:
        value: Any = self.r.hget(keys.upload_key(build_job, provider_id, side), "file_id")
        return str(value) if value else None

    def uploading(
        self, build_job: str, provider_id: str, side: str, ttl_s: float
    ) -> contextlib.AbstractContextManager[bool]:
        """Hold the lock on uploading this side (True) or learn that a live run holds it (False)."""
        return exclusive(self.r, keys.upload_key(build_job, provider_id, side) + ":creating", ttl_s)

    def record_upload(
        self, build_job: str, provider_id: str, side: str, file_id: str, filename: str, size: int
    ) -> None:
        record = keys.upload_key(build_job, provider_id, side)
        self.r.hset(record, mapping={"file_id": file_id, "filename": filename, "bytes": size})

    # -- events -----------------------------------------------------------------------------

    def event(self, job_id: str, kind: str, data: dict[str, Any]) -> str:
        event_id: str = self.r.xadd(  # type: ignore[assignment]
            keys.events_key(job_id),
            {"type": kind, "data": _encode(data)},
            maxlen=10_000,
            approximate=True,
        )
        return event_id

    def events(self, job_id: str, after: str = "0", block_ms: int = 0) -> list[tuple[str, str, str]]:
        """Events after `after` (a stream id), as (id, type, json data); blocks up to `block_ms`."""
        reply: Any = self.r.xread({keys.events_key(job_id): after}, count=100, block=block_ms or None)
        out: list[tuple[str, str, str]] = []
        for _stream, entries in reply or []:
            for event_id, fields in entries:
                out.append((event_id, fields["type"], fields["data"]))
        return out

    # -- endings waiting to be announced ----------------------------------------------------

    def take_notification(self, timeout_s: float) -> str | None:
        """A job id whose ending is still to be announced; kept aside until `notified`."""
        job_id: Any = self.r.blmove(keys.NOTIFY, keys.NOTIFY_WORKING, timeout_s, "RIGHT", "LEFT")  # type: ignore[arg-type]
        return str(job_id) if job_id else None

    def notified(self, job_id: str) -> None:
        self.r.lrem(keys.NOTIFY_WORKING, 1, job_id)

    def requeue_unfinished_notifications(self) -> int:
        """After a dispatcher died mid-way: its taken ids go back (announcing is idempotent)."""
        moved = 0
        while self.r.lmove(keys.NOTIFY_WORKING, keys.NOTIFY, "RIGHT", "LEFT"):
            moved += 1
        return moved


def new_job_id() -> str:
    return new_id("job")


def _encode(value: Any) -> str:
    """JSON as `json.dumps` writes it (what stored jobs and events have always held), Structs included."""
    return json.dumps(msgspec.to_builtins(value))
