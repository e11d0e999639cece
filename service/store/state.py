"""Redis state: API keys, datasets, jobs (one hash each), job events (one stream each), idempotency.

Bulk data never lives here (see `blobs`). Job status changes go through one Lua script that
compares and sets, so concurrent workers and cancels agree: a job reaches exactly one terminal
state, and `started` / `finished` times are written by the transition that made them true.

Retention: Redis runs with `noeviction`, so nothing may be kept forever. The transition that
ends a job (succeeded, failed, cancelled) sets an expiry on its hash, its event stream and its
set of finished shards in the same atomic step; queued and running jobs never expire. The
retention is written into the job when it is created (`TUNESET_JOB_RETENTION_S`, 30 days by
default), so every process that ends it (API or worker) applies the same one. A tenant's job
index loses an expired id lazily: the listing that finds its record gone removes it.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal

import redis

Status = Literal["queued", "running", "succeeded", "failed", "cancelled"]
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
P = "tuneset:"
DEFAULT_JOB_RETENTION_S = 30 * 24 * 3600  # how long a finished job is kept (TUNESET_JOB_RETENTION_S)


_last_id_time = [0, 0]  # the last id's millisecond and its sequence number within it, in this process
_id_lock = threading.Lock()


def new_id(prefix: str) -> str:
    """Sortable by creation time (a millisecond prefix, then a sequence number, so ids made in
    the same millisecond by one process keep their order), unguessable (a random suffix)."""
    with _id_lock:
        ms = max(int(time.time() * 1000), _last_id_time[0])
        seq = _last_id_time[1] + 1 if ms == _last_id_time[0] else 0
        if seq > 0xFFFF:  # 65,536 ids in one millisecond: borrow the next one
            ms, seq = ms + 1, 0
        _last_id_time[:] = [ms, seq]
    return f"{prefix}_{ms:012x}{seq:04x}{secrets.token_hex(6)}"


def now() -> float:
    return round(time.time(), 3)


def hash_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


# KEYS[1] job hash, KEYS[2] the notification list, KEYS[3] the job's event stream, KEYS[4] its
# set of finished shards (sharded builds); ARGV:
# allowed-from statuses (comma separated), to, the job id, "1" when `to` is terminal, the
# retention (seconds) for a job created without one, then field/value pairs to set. A terminal
# transition queues the job for its webhooks and sets the expiry of its hash and events in the
# same atomic step, so every ending is announced once and no finished job is kept forever.
_TRANSITION = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return -1 end
for allowed in string.gmatch(ARGV[1], '[^,]+') do
  if status == allowed then
    redis.call('HSET', KEYS[1], 'status', ARGV[2])
    for i = 6, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
    if ARGV[4] == '1' then
      redis.call('LPUSH', KEYS[2], ARGV[3])
      local ttl = tonumber(redis.call('HGET', KEYS[1], 'retention_s')) or tonumber(ARGV[5])
      redis.call('EXPIRE', KEYS[1], ttl)
      redis.call('EXPIRE', KEYS[3], ttl)
      redis.call('EXPIRE', KEYS[4], ttl)
    end
    return 1
  end
end
return 0
"""


def job_key(job_id: str) -> str:
    """A job's hash."""
    return P + f"job:{job_id}"


def events_key(job_id: str) -> str:
    """A job's event stream (read by `State.events` here and `events.EventFeed` for many followers)."""
    return P + f"job:{job_id}:events"


NOTIFY = P + "notify"  # job ids that reached a terminal state, waiting for their webhooks
NOTIFY_WORKING = P + "notify:working"  # taken by a dispatcher, not yet turned into deliveries


@dataclass
class State:
    r: redis.Redis
    job_retention_s: int = DEFAULT_JOB_RETENTION_S  # written into the jobs this State creates

    @classmethod
    def from_url(cls, url: str, job_retention_s: int = DEFAULT_JOB_RETENTION_S) -> State:
        return cls(
            redis.Redis.from_url(url, decode_responses=True, socket_timeout=5, socket_connect_timeout=5),
            job_retention_s,
        )

    def ping(self) -> bool:
        try:
            return bool(self.r.ping())
        except redis.RedisError:
            return False

    # -- API keys ---------------------------------------------------------------------------

    def create_key(self, tenant: str) -> str:
        """A new API key for `tenant`: returned once, only its SHA-256 is stored."""
        key = "ts_" + secrets.token_urlsafe(32)
        self.r.hset(P + "keys", hash_key(key), tenant)
        return key

    def tenant_for(self, api_key: str) -> str | None:
        tenant: str | None = self.r.hget(P + "keys", hash_key(api_key))  # type: ignore[assignment]
        return tenant

    # -- datasets ---------------------------------------------------------------------------

    def create_dataset(self, tenant: str, name: str, kind: str, description: str | None) -> dict[str, Any]:
        ds = {
            "id": new_id("ds"),
            "tenant": tenant,
            "name": name,
            "kind": kind,
            "description": description or "",
            "created_at": now(),
            "batches": 0,
            "examples": 0,
            "bytes": 0,
        }
        pipe = self.r.pipeline()
        pipe.hset(P + f"ds:{ds['id']}", mapping=ds)
        pipe.zadd(P + f"t:{tenant}:datasets", {str(ds["id"]): 0})
        pipe.execute()
        return ds

    def get_dataset(self, tenant: str, dataset_id: str) -> dict[str, Any] | None:
        ds: dict[str, Any] = self.r.hgetall(P + f"ds:{dataset_id}")  # type: ignore[assignment]
        if not ds or ds.get("tenant") != tenant:
            return None  # another tenant's dataset does not exist for this one
        for field in ("batches", "examples", "bytes"):
            ds[field] = int(ds[field])
        ds["created_at"] = float(ds["created_at"])
        return ds

    def list_ids(self, tenant: str, what: str, after: str | None, limit: int) -> list[str]:
        """Ids in creation order after the cursor (ids sort by creation time)."""
        low = f"({after}" if after else "-"
        ids: list[str] = self.r.zrangebylex(P + f"t:{tenant}:{what}", low, "+", start=0, num=limit)  # type: ignore[assignment]
        return ids

    def add_batch(self, tenant: str, dataset_id: str, batch: dict[str, Any]) -> None:
        pipe = self.r.pipeline()
        pipe.rpush(P + f"ds:{dataset_id}:batches", json.dumps(batch))
        pipe.hincrby(P + f"ds:{dataset_id}", "batches", 1)
        pipe.hincrby(P + f"ds:{dataset_id}", "examples", int(batch["examples"]))
        pipe.hincrby(P + f"ds:{dataset_id}", "bytes", int(batch["bytes"]))
        pipe.execute()

    def batches(self, dataset_id: str) -> list[dict[str, Any]]:
        raw: list[str] = self.r.lrange(P + f"ds:{dataset_id}:batches", 0, -1)  # type: ignore[assignment]
        return [json.loads(b) for b in raw]

    def delete_dataset(self, tenant: str, dataset_id: str) -> list[str]:
        """Forget the dataset; returns the ids of the jobs made from it, whose files must go too."""
        pipe = self.r.pipeline()
        pipe.smembers(P + f"ds:{dataset_id}:jobs")
        pipe.delete(P + f"ds:{dataset_id}", P + f"ds:{dataset_id}:batches", P + f"ds:{dataset_id}:jobs")
        pipe.zrem(P + f"t:{tenant}:datasets", dataset_id)
        job_ids: set[str] = pipe.execute()[0]
        return sorted(job_ids)

    def dataset_exists(self, dataset_id: str) -> bool:
        return bool(self.r.exists(P + f"ds:{dataset_id}"))

    # -- jobs -------------------------------------------------------------------------------

    def create_job(
        self, tenant: str, kind: str, spec: dict[str, Any], job_id: str | None = None, stage: str = "queued"
    ) -> dict[str, Any]:
        """A queued job; give `job_id` (from `new_id("job")`) when other jobs' specs must name it first."""
        job_id = job_id or new_id("job")
        job = {
            "id": job_id,
            "tenant": tenant,
            "kind": kind,
            "status": "queued",
            "stage": stage,
            "done": 0,
            "total": 0,
            "created_at": now(),
            "spec": json.dumps(spec),
            "attempts": 0,
            "retention_s": self.job_retention_s,  # the expiry its terminal transition sets
        }
        pipe = self.r.pipeline()
        pipe.hset(job_key(job_id), mapping=job)
        pipe.zadd(P + f"t:{tenant}:jobs", {job_id: 0})
        if spec.get("dataset_id"):  # so deleting the dataset finds the files built from it
            pipe.sadd(P + f"ds:{spec['dataset_id']}:jobs", job_id)
        pipe.execute()
        self.event(job_id, "status", {"status": "queued"})
        return self.job(job_id) or job

    def job(self, job_id: str) -> dict[str, Any] | None:
        raw: dict[str, str] = self.r.hgetall(job_key(job_id))  # type: ignore[assignment]
        if "tenant" not in raw:  # gone (expired), or a late write's stub of an expired job
            return None
        job: dict[str, Any] = dict(raw)
        for field in ("done", "total", "attempts"):
            job[field] = int(raw.get(field, 0))
        for field in ("created_at", "started_at", "finished_at"):
            job[field] = float(raw[field]) if raw.get(field) else None
        for field in ("spec", "result", "error"):
            job[field] = json.loads(raw[field]) if raw.get(field) else None
        job["cancel_requested"] = raw.get("cancel_requested") == "1"
        return job

    def tenant_job(self, tenant: str, job_id: str) -> dict[str, Any] | None:
        job = self.job(job_id)
        return job if job and job["tenant"] == tenant else None

    def tenant_jobs(self, tenant: str, ids: list[str]) -> list[dict[str, Any]]:
        """The tenant's jobs of `ids` that still exist, in order; ids whose record has expired
        are removed from the tenant's index here (the lazy half of the retention policy)."""
        jobs = [self.tenant_job(tenant, i) for i in ids]
        gone = [i for i, job in zip(ids, jobs, strict=True) if job is None]  # the index is per tenant
        if gone:
            self.r.zrem(P + f"t:{tenant}:jobs", *gone)
        return [job for job in jobs if job is not None]

    def transition(self, job_id: str, allowed: set[str], to: str, **fields: Any) -> bool:
        """Compare-and-set the status; False when the job is not in an allowed status."""
        if to in TERMINAL:
            fields.setdefault("finished_at", now())
        if to == "running":
            fields.setdefault("started_at", now())
        terminal = "1" if to in TERMINAL else "0"
        argv: list[str] = [",".join(sorted(allowed)), to, job_id, terminal, str(self.job_retention_s)]
        for name, value in fields.items():
            argv += [name, value if isinstance(value, str) else json.dumps(value)]
        keys = (job_key(job_id), NOTIFY, events_key(job_id), P + f"job:{job_id}:shards_done")
        reply: Any = self.r.eval(_TRANSITION, len(keys), *keys, *argv)
        done: bool = reply == 1
        if done:
            self.event(
                job_id, "status", {"status": to, **({"error": fields["error"]} if "error" in fields else {})}
            )
        return done

    def take_notification(self, timeout_s: float) -> str | None:
        """A job id whose ending is still to be announced; kept aside until `notified`."""
        job_id: Any = self.r.blmove(NOTIFY, NOTIFY_WORKING, timeout_s, "RIGHT", "LEFT")  # type: ignore[arg-type]
        return str(job_id) if job_id else None

    def notified(self, job_id: str) -> None:
        self.r.lrem(NOTIFY_WORKING, 1, job_id)

    def requeue_unfinished_notifications(self) -> int:
        """After a dispatcher died mid-way: its taken ids go back (announcing is idempotent)."""
        moved = 0
        while self.r.lmove(NOTIFY_WORKING, NOTIFY, "RIGHT", "LEFT"):
            moved += 1
        return moved

    def update_result(self, job_id: str, **fields: Any) -> None:
        """Merge fields into a running job's result (provider file ids, fine-tuning status, ...)."""
        job = self.job(job_id) or {}
        result = {**(job.get("result") or {}), **fields}
        self.r.hset(job_key(job_id), "result", json.dumps(result))

    def forget_artifacts(self, job_id: str) -> None:
        """The job's files were deleted with its dataset: its result no longer lists them."""
        job = self.job(job_id) or {}
        if isinstance(job.get("result"), dict) and job["result"].get("artifacts"):
            self.update_result(job_id, artifacts=[], dataset_deleted=True)

    def progress(self, job_id: str, stage: str, done: int, total: int) -> None:
        self.r.hset(job_key(job_id), mapping={"stage": stage, "done": done, "total": total})
        self.event(job_id, "progress", {"stage": stage, "done": done, "total": total})

    def count_attempt(self, job_id: str) -> int:
        attempts: Any = self.r.hincrby(job_key(job_id), "attempts", 1)
        return int(attempts)

    def request_cancel(self, job_id: str) -> None:
        self.r.hset(job_key(job_id), "cancel_requested", "1")

    def cancel_requested(self, job_id: str) -> bool:
        return self.r.hget(job_key(job_id), "cancel_requested") == "1"

    # -- events -----------------------------------------------------------------------------

    def event(self, job_id: str, kind: str, data: dict[str, Any]) -> str:
        event_id: str = self.r.xadd(  # type: ignore[assignment]
            events_key(job_id),
            {"type": kind, "data": json.dumps(data)},
            maxlen=10_000,
            approximate=True,
        )
        return event_id

    def events(self, job_id: str, after: str = "0", block_ms: int = 0) -> list[tuple[str, str, str]]:
        """Events after `after` (a stream id), as (id, type, json data); blocks up to `block_ms`."""
        reply: Any = self.r.xread({events_key(job_id): after}, count=100, block=block_ms or None)
        out: list[tuple[str, str, str]] = []
        for _stream, entries in reply or []:
            for event_id, fields in entries:
                out.append((event_id, fields["type"], fields["data"]))
        return out

    # -- idempotency ------------------------------------------------------------------------

    def idempotency_begin(self, tenant: str, key: str, body_hash: str, ttl_s: int) -> dict[str, Any] | None:
        """None when this request is the first with the key (it now holds it); else the record."""
        name = P + f"idem:{tenant}:{hash_key(key)}"
        if self.r.set(name, json.dumps({"body": body_hash, "state": "in_flight"}), nx=True, ex=ttl_s):
            return None
        raw: str | None = self.r.get(name)  # type: ignore[assignment]
        return json.loads(raw) if raw else {"body": body_hash, "state": "in_flight"}

    def idempotency_finish(
        self,
        tenant: str,
        key: str,
        body_hash: str,
        status: int,
        response: Any,
        ttl_s: int,
        headers: dict[str, str] | None = None,
    ) -> None:
        record = {"body": body_hash, "state": "done", "status": status, "response": response}
        if headers:
            record["headers"] = headers
        self.r.set(P + f"idem:{tenant}:{hash_key(key)}", json.dumps(record), ex=ttl_s)

    def idempotency_abort(self, tenant: str, key: str) -> None:
        self.r.delete(P + f"idem:{tenant}:{hash_key(key)}")
