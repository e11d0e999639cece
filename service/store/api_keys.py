"""API keys: each maps to a tenant and may be an admin key; only their SHA-256 is stored.

`tuneset keys create --tenant T [--admin]` writes here directly (it needs Redis, so only an
operator can run it); an admin key then manages keys over the API (`/v1/keys`). A key's id is
derived from its hash (`key_` + 24 hex digits), so a key made before ids existed has one too and
can be listed and revoked like the others. Revoking deletes the hash: the next request with that
key is a 401.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from typing import Any

import msgspec
import redis

from service.store.ids import P, now

KEYS = P + "keys"  # sha256(key) -> tenant: what every request reads
META = P + "keys:meta"  # sha256(key) -> {"admin", "created_at", "hint"}
ID_DIGITS = 24


class KeyRecord(msgspec.Struct, frozen=True):
    id: str
    tenant: str
    admin: bool
    hint: str | None  # the key's last four characters
    created_at: float | None


def hash_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


def key_id(digest: str) -> str:
    return "key_" + digest[:ID_DIGITS]


def create(r: redis.Redis, tenant: str, *, admin: bool = False) -> tuple[str, KeyRecord]:
    """A new key for `tenant`: the key (shown once) and its record."""
    key = "ts_" + secrets.token_urlsafe(32)
    digest = hash_key(key)
    meta = {"admin": admin, "created_at": now(), "hint": key[-4:]}
    pipe = r.pipeline()
    pipe.hset(KEYS, digest, tenant)
    pipe.hset(META, digest, json.dumps(meta))
    pipe.execute()
    return key, _record(digest, tenant, json.dumps(meta))


def tenant_for(r: redis.Redis, api_key: str) -> str | None:
    tenant: str | None = r.hget(KEYS, hash_key(api_key))  # type: ignore[assignment]
    return tenant


def is_admin(r: redis.Redis, api_key: str) -> bool:
    raw: str | None = r.hget(META, hash_key(api_key))  # type: ignore[assignment]
    return bool(raw and json.loads(raw).get("admin"))


def list_keys(r: redis.Redis, tenant: str | None = None) -> list[KeyRecord]:
    """Every key (of `tenant`, when given), newest first; keys without a creation time last."""
    pipe = r.pipeline()
    pipe.hgetall(KEYS)
    pipe.hgetall(META)
    tenants, metas = pipe.execute()
    records = [
        _record(digest, owner, metas.get(digest))
        for digest, owner in tenants.items()
        if tenant is None or owner == tenant
    ]
    return sorted(records, key=lambda k: (-(k.created_at or 0), k.id))


def revoke(r: redis.Redis, ident: str) -> KeyRecord | None:
    """Delete the key with this id; its record, or None when there is none."""
    if not ident.startswith("key_") or len(ident) != 4 + ID_DIGITS:
        return None
    for digest, tenant in r.hscan_iter(KEYS, match=ident[4:] + "*"):
        meta: str | None = r.hget(META, digest)  # type: ignore[assignment]
        pipe = r.pipeline()
        pipe.hdel(KEYS, digest)
        pipe.hdel(META, digest)
        removed, _ = pipe.execute()
        return _record(digest, tenant, meta) if removed else None
    return None


def _record(digest: str, tenant: str, meta: str | None) -> KeyRecord:
    data: dict[str, Any] = json.loads(meta) if meta else {}
    created = data.get("created_at")
    return KeyRecord(
        id=key_id(digest),
        tenant=tenant,
        admin=bool(data.get("admin")),
        hint=data.get("hint"),
        created_at=float(created) if created is not None else None,
    )
