"""Redis state: API keys, datasets, idempotency, and the connection the job lifecycle uses.

Bulk data never lives here (see `blobs`); jobs are `service.jobs` (reached as `State.jobs`),
which alone knows their keys and moves their status.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import redis

from service.jobs import keys as job_keys
from service.jobs.store import DEFAULT_JOB_RETENTION_S, TERMINAL, Jobs
from service.store import api_keys
from service.store.api_keys import hash_key
from service.store.ids import P, new_id, now
from service.store.redis_conn import sync_client

__all__ = ["DEFAULT_JOB_RETENTION_S", "TERMINAL", "P", "State", "hash_key", "new_id", "now"]


@dataclass
class State:
    r: redis.Redis
    job_retention_s: int = DEFAULT_JOB_RETENTION_S  # written into the jobs this State creates

    @classmethod
    def from_url(cls, url: str, job_retention_s: int = DEFAULT_JOB_RETENTION_S) -> State:
        return cls(
            sync_client(url, decode_responses=True, socket_timeout=5, socket_connect_timeout=5),
            job_retention_s,
        )

    @cached_property
    def jobs(self) -> Jobs:
        """The job lifecycle on this connection, creating jobs with this State's retention."""
        return Jobs(self.r, self.job_retention_s)

    def ping(self) -> bool:
        try:
            return bool(self.r.ping())
        except redis.RedisError:
            return False

    # -- API keys ---------------------------------------------------------------------------

    def create_key(self, tenant: str, *, admin: bool = False) -> str:
        """A new API key for `tenant`: returned once, only its SHA-256 is stored (`api_keys`)."""
        return api_keys.create(self.r, tenant, admin=admin)[0]

    def tenant_for(self, api_key: str) -> str | None:
        return api_keys.tenant_for(self.r, api_key)

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

    def list_ids(
        self, tenant: str, what: str, after: str | None, limit: int, newest_first: bool = False
    ) -> list[str]:
        """Ids in creation order (or newest first) after the cursor (ids sort by creation time)."""
        name = P + f"t:{tenant}:{what}"
        bound = f"({after}" if after else None
        ids: list[str]
        if newest_first:
            ids = self.r.zrevrangebylex(name, bound or "+", "-", start=0, num=limit)  # type: ignore[assignment]
        else:
            ids = self.r.zrangebylex(name, bound or "-", "+", start=0, num=limit)  # type: ignore[assignment]
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

    def delete_batch(self, dataset_id: str, batch_id: str) -> dict[str, Any] | None:
        """Take a batch out of its dataset (and its counts): the removed batch, None if absent.

        One script, so two deletes of the same batch cannot both subtract its counts."""
        for raw in self.r.lrange(P + f"ds:{dataset_id}:batches", 0, -1):  # type: ignore[union-attr]
            batch: dict[str, Any] = json.loads(raw)
            if batch.get("id") != batch_id:
                continue
            removed = self._delete_batch(
                keys=[P + f"ds:{dataset_id}:batches", P + f"ds:{dataset_id}"],
                args=[raw, int(batch["examples"]), int(batch["bytes"])],
            )
            return batch if removed else None
        return None

    @cached_property
    def _delete_batch(self) -> Any:
        return self.r.register_script(
            """
            if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end  -- the dataset was deleted
            if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
            redis.call('HINCRBY', KEYS[2], 'batches', -1)
            redis.call('HINCRBY', KEYS[2], 'examples', -tonumber(ARGV[2]))
            redis.call('HINCRBY', KEYS[2], 'bytes', -tonumber(ARGV[3]))
            return 1
            """
        )

    def delete_dataset(self, tenant: str, dataset_id: str) -> list[str]:
        """Forget the dataset; returns the ids of the jobs made from it, whose files must go too."""
        pipe = self.r.pipeline()
        pipe.smembers(job_keys.dataset_jobs_key(dataset_id))
        pipe.delete(
            P + f"ds:{dataset_id}", P + f"ds:{dataset_id}:batches", job_keys.dataset_jobs_key(dataset_id)
        )
        pipe.zrem(P + f"t:{tenant}:datasets", dataset_id)
        job_ids: set[str] = pipe.execute()[0]
        return sorted(job_ids)

    def dataset_job_ids(self, dataset_id: str) -> list[str]:
        """The ids of the jobs built from a dataset, in creation order."""
        ids: set[str] = self.r.smembers(job_keys.dataset_jobs_key(dataset_id))  # type: ignore[assignment]
        return sorted(ids)

    def dataset_exists(self, dataset_id: str) -> bool:
        return bool(self.r.exists(P + f"ds:{dataset_id}"))

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
        self.idempotency_forget(tenant, hash_key(key))

    def idempotency_forget(self, tenant: str, key_hash: str) -> None:
        """Free a key by its hash (what a stored batch keeps of the key it was pushed with)."""
        self.r.delete(P + f"idem:{tenant}:{key_hash}")
