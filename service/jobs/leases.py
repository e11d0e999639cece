"""Leases on running job steps: a step whose worker vanished is found in seconds, not when the
broker's visibility timeout (hours) hands its message out again.

A worker takes a lease on each job step it holds (received, waiting for its ETA, or running) and
renews it every few seconds; a finished step's lease is released. A lease that was not renewed
in `ttl_s` belongs to a worker that died (SIGKILL, OOM, node loss) or is cut off from Redis, and
any reaper may claim it to send the step again. Layout: a sorted set of task ids by expiry
(`tuneset:leases`), and one hash per lease (`tuneset:lease:<task id>`) with the step (task name,
args, queue, ETA, retries) and its owner. Every change is one Lua script that reads the clock
of Redis itself (workers' clocks may disagree), so:
- a claim re-scores the lease `ttl_s` ahead and makes the claimer its owner in the same step:
  two reapers never claim the same step, and a reaper that dies before re-sending it lets the
  lease expire again for another one;
- renew and release act only for the lease's owner: a worker that was cut off and comes back
  does not steal back a lease that was claimed meanwhile.
The number of claims per job is counted with the claim, for the redelivery cap.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import msgspec
import redis
from redis.lock import Lock

LEASES = "tuneset:leases"  # task id -> expiry (Redis time, seconds)
LEASE = "tuneset:lease:"  # + task id: the lease's hash
REDELIVERIES = "tuneset:lease:redeliveries:"  # + job id: how often its steps were claimed

# The Redis clock, in seconds. TIME is non-deterministic: Redis 6 replicates such scripts by
# effects only once asked (7 always does, and keeps the call as a no-op).
_NOW = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
"""

# KEYS[1] the zset, KEYS[2] the lease hash; ARGV: task id, ttl, owner, job id, the step (JSON).
_TAKE = (
    _NOW
    + """
redis.call('HSET', KEYS[2], 'owner', ARGV[3], 'job_id', ARGV[4], 'step', ARGV[5])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
return 1
"""
)

# KEYS[1] the zset; ARGV: ttl, the hash prefix, then task id / owner pairs. Returns the ids of
# the pairs whose lease is now someone else's (claimed meanwhile); a lease gone is skipped.
_RENEW = (
    _NOW
    + """
local lost = {}
for i = 3, #ARGV, 2 do
  local owner = redis.call('HGET', ARGV[2] .. ARGV[i], 'owner')
  if owner == ARGV[i + 1] then
    redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[1]), ARGV[i])
  elseif owner then
    table.insert(lost, ARGV[i])
  end
end
return lost
"""
)

# KEYS[1] the zset, KEYS[2] the lease hash; ARGV: task id, owner. 1 when released.
_RELEASE = """
if redis.call('HGET', KEYS[2], 'owner') ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[1], ARGV[1])
return 1
"""

# KEYS[1] the zset; ARGV: how many at most, claimer, ttl, hash prefix, counter prefix, counter
# expiry. Returns step JSON / redelivery count pairs of the claimed leases.
_CLAIM = (
    _NOW
    + """
local out = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))) do
  local key = ARGV[4] .. id
  local step = redis.call('HGET', key, 'step')
  if step then
    redis.call('HSET', key, 'owner', ARGV[2])
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), id)
    local counter = ARGV[5] .. redis.call('HGET', key, 'job_id')
    local n = redis.call('INCR', counter)
    redis.call('EXPIRE', counter, tonumber(ARGV[6]))
    table.insert(out, step)
    table.insert(out, n)
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
"""
)


class Step(msgspec.Struct, frozen=True, kw_only=True):
    """What is needed to send a job step again: the task by name, its arguments and queue."""

    task_id: str
    task: str
    job_id: str
    args: list[Any] = msgspec.field(default_factory=list)
    kwargs: dict[str, Any] = msgspec.field(default_factory=dict)
    queue: str | None = None
    eta: str | None = None  # ISO 8601: a retry waiting for its time keeps it when sent again
    retries: int = 0


class Claimed(msgspec.Struct, frozen=True, kw_only=True):
    """An expired lease, now the claimer's: the step, and how often its job's steps were claimed."""

    step: Step
    redeliveries: int


class HeldLease(msgspec.Struct, frozen=True, kw_only=True):
    """A lease as stored (for operators and tests)."""

    step: Step
    owner: str
    expires_at: float


_encode = msgspec.json.Encoder().encode
_decode_step = msgspec.json.Decoder(Step).decode


class Leases:
    """The lease table in Redis; `ttl_s` is how long a lease lives without a renewal."""

    def __init__(self, r: redis.Redis, ttl_s: float, counter_ttl_s: int = 30 * 24 * 3600) -> None:
        self.r = r
        self.ttl_s = ttl_s
        self.counter_ttl_s = counter_ttl_s
        self._take = r.register_script(_TAKE)
        self._renew = r.register_script(_RENEW)
        self._release = r.register_script(_RELEASE)
        self._claim = r.register_script(_CLAIM)

    def take(self, step: Step, owner: str) -> None:
        """Hold `step` for `owner` (a later delivery of the same task id takes it over)."""
        self._take(
            keys=[LEASES, LEASE + step.task_id],
            args=[step.task_id, self.ttl_s, owner, step.job_id, _encode(step)],
        )

    def renew(self, held: dict[str, str]) -> list[str]:
        """Extend the leases of `held` (task id -> owner); returns the ids claimed by someone else."""
        if not held:
            return []
        pairs = [x for item in held.items() for x in item]
        lost: list[str] = self._renew(keys=[LEASES], args=[self.ttl_s, LEASE, *pairs])
        return [x.decode() if isinstance(x, bytes) else str(x) for x in lost]

    def release(self, task_id: str, owner: str) -> bool:
        """Drop the lease, if it is still `owner`'s."""
        return bool(self._release(keys=[LEASES, LEASE + task_id], args=[task_id, owner]))

    def claim_expired(self, claimer: str, limit: int = 100) -> list[Claimed]:
        """Claim up to `limit` expired leases for `claimer`: each becomes its lease for `ttl_s`
        (release it once the step is sent again, or let it expire for another claimer)."""
        reply: list[Any] = self._claim(
            keys=[LEASES],
            args=[limit, claimer, self.ttl_s, LEASE, REDELIVERIES, self.counter_ttl_s],
        )
        return [
            Claimed(step=_decode_step(reply[i]), redeliveries=int(reply[i + 1]))
            for i in range(0, len(reply), 2)
        ]

    def job_ids(self) -> set[str]:
        """The jobs with a lease on one of their steps (expired or not: the reaper handles those)."""
        ids = [i.decode() if isinstance(i, bytes) else str(i) for i in self.r.zrange(LEASES, 0, -1)]  # type: ignore[union-attr]
        pipe = self.r.pipeline(transaction=False)
        for task_id in ids:
            pipe.hget(LEASE + task_id, "job_id")
        return {j.decode() if isinstance(j, bytes) else str(j) for j in pipe.execute() if j}

    def count_redelivery(self, job_id: str) -> int:
        """One more redelivery of the job's steps not found through a lease; returns the count."""
        pipe = self.r.pipeline()
        pipe.incr(REDELIVERIES + job_id)
        pipe.expire(REDELIVERIES + job_id, self.counter_ttl_s)
        n, _ = pipe.execute()
        return int(n)

    def redeliveries(self, job_id: str) -> int:
        """How often the job's steps were claimed after their worker was lost."""
        return int(self.r.get(REDELIVERIES + job_id) or 0)  # type: ignore[arg-type]

    def held(self) -> list[HeldLease]:
        """Every lease, soonest expiry first."""
        out = []
        for task_id, expires in self.r.zrange(LEASES, 0, -1, withscores=True):  # type: ignore[union-attr]
            tid = task_id.decode() if isinstance(task_id, bytes) else str(task_id)
            raw: dict[Any, Any] = self.r.hgetall(LEASE + tid)  # type: ignore[assignment]
            fields = {(k.decode() if isinstance(k, bytes) else k): v for k, v in raw.items()}
            if "step" in fields:
                owner = fields["owner"]
                out.append(
                    HeldLease(
                        step=_decode_step(fields["step"]),
                        owner=owner.decode() if isinstance(owner, bytes) else str(owner),
                        expires_at=float(expires),
                    )
                )
        return out


@contextlib.contextmanager
def exclusive(r: redis.Redis, key: str, ttl_s: float) -> Iterator[bool]:
    """Hold the lock `key` while the block runs, renewed every third of `ttl_s`; yields False
    (holding nothing) when someone else holds it. For a side effect the provider cannot make
    conditional (an upload): a step sent again while the first run is still alive waits for it
    instead of doing it twice, and a holder that died frees the lock within `ttl_s`."""
    lock = Lock(r, key, timeout=ttl_s, blocking=False)
    if not lock.acquire():
        yield False
        return
    done = threading.Event()

    def renew() -> None:
        while not done.wait(ttl_s / 3):
            with contextlib.suppress(redis.RedisError):
                lock.reacquire()

    renewer = threading.Thread(target=renew, name=f"tuneset-lock-{key}", daemon=True)
    renewer.start()
    try:
        yield True
    finally:
        done.set()
        renewer.join()
        with contextlib.suppress(redis.RedisError, redis.exceptions.LockError):
            lock.release()
