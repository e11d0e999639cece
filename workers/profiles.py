"""Model profiles for workers: `load_profile(tenant, name)`, the loader token outputs take.

One ProfileStore per worker process on the worker's Redis and blob store, made on first use; the
loaded profiles stay in the process's LRU (by content hash), so every shard after the first that
a process runs with the same profile parses nothing. A profile deleted while its build runs
still loads here for a day (see `service.store.profiles`), so the build finishes with it.
"""

from __future__ import annotations

import threading

from service.core.profiles import ModelProfile
from service.store.profiles import ProfileStore
from workers.runtime import runtime

_store: list[ProfileStore] = []
_lock = threading.Lock()


def profile_store() -> ProfileStore:
    with _lock:
        if not _store:
            rt = runtime()  # the process's Redis pool and blob store
            _store.append(ProfileStore(rt.state.r, rt.blobs))
        return _store[0]


def load_profile(tenant: str, name: str) -> ModelProfile:
    """The tenant's profile `name`, loaded (raises `service.store.profiles.ProfileNotFound`)."""
    return profile_store().load(tenant, name, retired_ok=True)
