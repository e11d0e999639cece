"""Provider profiles per tenant, with their API key and webhook secret encrypted at rest.

A profile is stored once under `tuneset:provider:{id}` and indexed by (tenant, name). Records
read back for the API never carry the key, only whether one is set and its last four characters;
`credentials` is the one call that decrypts, and only workers call it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import redis

from service.store.secrets import MissingSecretKey, SecretBox
from service.store.state import P, new_id, now

PUBLIC_FIELDS = ("id", "name", "base_url", "kind", "api_version", "models", "created_at")


@dataclass
class Credentials:
    """What a worker needs to call the provider; never logged (the repr hides the secrets)."""

    base_url: str
    kind: str
    api_version: str | None
    api_key: str
    webhook_secret: str | None

    def __repr__(self) -> str:
        return f"Credentials(base_url={self.base_url!r}, kind={self.kind!r}, api_key=***)"


@dataclass
class ProviderStore:
    r: redis.Redis
    box: SecretBox | None  # None: profiles can be read but not created or decrypted

    def _need_box(self) -> SecretBox:
        if self.box is None:
            raise MissingSecretKey("TUNESET_SECRET_KEY is not set: provider API keys cannot be stored")
        return self.box

    def put(
        self,
        tenant: str,
        name: str,
        *,
        base_url: str,
        api_key: str,
        kind: str = "openai",
        api_version: str | None = None,
        models: list[str] | None = None,
        webhook_secret: str | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Create or replace the tenant's profile `name`; True when it was created. The id stays."""
        box = self._need_box()
        existing = self.r.hget(P + f"t:{tenant}:providers", name)
        provider_id = str(existing) if existing else new_id("prov")
        record = {
            "id": provider_id,
            "tenant": tenant,
            "name": name,
            "base_url": base_url,
            "kind": kind,
            "api_version": api_version or "",
            "models": json.dumps(models or []),
            "created_at": now(),
            "api_key": box.encrypt(api_key),
            "api_key_hint": api_key[-4:] if len(api_key) >= 8 else "",
            "webhook_secret": box.encrypt(webhook_secret) if webhook_secret else "",
        }
        pipe = self.r.pipeline()
        pipe.delete(P + f"provider:{provider_id}")
        pipe.hset(P + f"provider:{provider_id}", mapping=record)
        pipe.hset(P + f"t:{tenant}:providers", name, provider_id)
        pipe.execute()
        got = self.get(tenant, name)
        assert got is not None
        return got, existing is None

    def _raw(self, provider_id: str) -> dict[str, str]:
        raw: dict[str, str] = self.r.hgetall(P + f"provider:{provider_id}")  # type: ignore[assignment]
        return raw

    def _public(self, raw: dict[str, str]) -> dict[str, Any]:
        out: dict[str, Any] = {k: raw.get(k) for k in PUBLIC_FIELDS}
        out["api_version"] = raw.get("api_version") or None
        out["models"] = json.loads(raw.get("models") or "[]") or None
        out["created_at"] = float(raw.get("created_at") or 0)
        out["api_key_hint"] = raw.get("api_key_hint") or None
        out["webhook_secret_set"] = bool(raw.get("webhook_secret"))
        return out

    def get(self, tenant: str, name: str) -> dict[str, Any] | None:
        provider_id = self.r.hget(P + f"t:{tenant}:providers", name)
        if not provider_id:
            return None
        raw = self._raw(str(provider_id))
        return self._public(raw) if raw else None

    def by_id(self, provider_id: str) -> dict[str, Any] | None:
        """The profile (with its tenant) for the provider-webhook receiver, which has no bearer key."""
        raw = self._raw(provider_id)
        return {**self._public(raw), "tenant": raw["tenant"]} if raw else None

    def list(self, tenant: str) -> list[dict[str, Any]]:
        ids: dict[str, str] = self.r.hgetall(P + f"t:{tenant}:providers")  # type: ignore[assignment]
        return [self._public(raw) for name in sorted(ids) if (raw := self._raw(ids[name]))]

    def delete(self, tenant: str, name: str) -> bool:
        provider_id = self.r.hget(P + f"t:{tenant}:providers", name)
        if not provider_id:
            return False
        pipe = self.r.pipeline()
        pipe.delete(P + f"provider:{provider_id}")
        pipe.hdel(P + f"t:{tenant}:providers", name)
        pipe.execute()
        return True

    def credentials(self, provider_id: str) -> Credentials | None:
        raw = self._raw(provider_id)
        if not raw:
            return None
        box = self._need_box()
        return Credentials(
            base_url=raw["base_url"],
            kind=raw["kind"],
            api_version=raw.get("api_version") or None,
            api_key=box.decrypt(raw["api_key"]),
            webhook_secret=box.decrypt(raw["webhook_secret"]) if raw.get("webhook_secret") else None,
        )
