"""Model profiles per tenant: the uploaded tokenizer and chat template files, and their index.

Files live in the blob store under `profiles/{tenant}/{content_hash}/{file}` (content-addressed:
two names with the same files share them); the index is one Redis hash per tenant,
`tuneset:t:{tenant}:model-profiles`, name -> the record as JSON (hashes, sizes, rules), so a
tenant sees only its own names and one HSETNX decides a race between two creators.

`put` builds the ModelProfile from the files before storing anything, so a profile that is in
the index always loads. `load` goes through a bounded in-process LRU of loaded profiles keyed by
content hash (plus name and rules, which a profile carries): a big tokenizer.json is parsed once
per process, not once per example, request or shard.

Deleting: the name leaves the index at once, so new builds, inspections and validations refuse it
(`unknown_profile`). A build already running keeps working: its worker processes have the profile
in their LRU, and those that have not loaded it yet find it through the tenant's retired entries
(`load(..., retired_ok=True)`, which only workers use), whose files are kept for `retire_grace_s`
(a day by default) after the delete; past that, a later put or delete of the tenant removes the
files no live or retired entry still needs. A name deleted and created again while a build of the
old one runs gives that build's not-yet-started shards the new profile (their manifests name the
SHA-256 of the tokenizer and template they used).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import msgspec
import redis

from service.core.profiles import ModelProfile, ProfileError, TrainingRules, profile_from_files
from service.store.blobs import BlobStore
from service.store.state import P, now

TOKENIZER_SUFFIXES = (".json", ".model", ".tiktoken")  # tokenizer.json (HF) or tiktoken-format ranks
TEMPLATE_FILE = "chat_template.jinja"
CONFIG_FILE = "tokenizer_config.json"
RETIRE_GRACE_S = 24 * 3600  # how long a deleted profile's files stay loadable for running builds
CACHE_SIZE = 8  # loaded profiles kept per process (a tokenizer can take hundreds of MB)


class ProfileNotFound(KeyError):
    """The tenant has no profile of that name."""


class ProfileExists(Exception):
    """A different profile already has that name (replacing one needs a delete first)."""


class FileInfo(msgspec.Struct, frozen=True):
    filename: str
    size: int
    sha256: str


class ProfileRecord(msgspec.Struct, frozen=True):
    """What the index keeps of one profile: enough to list it and to load it again."""

    name: str
    content_hash: str
    tokenizer_kind: str
    tokenizer_sha256: str
    template_sha256: str
    vocab_size: int
    bos_token: str | None
    eos_token: str | None
    tiktoken_preset: str | None
    train_eot: bool
    train_on: Literal["all", "last"]
    mask_source: Literal["spans", "generation"]
    files: dict[str, FileInfo]  # role (tokenizer, chat_template, tokenizer_config) -> the stored file
    created_at: float

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files.values())

    @property
    def rules(self) -> TrainingRules:
        return TrainingRules(train_eot=self.train_eot, train_on=self.train_on, mask_source=self.mask_source)


class _Retired(msgspec.Struct, frozen=True):
    record: ProfileRecord
    until: float  # the files may be removed after this time


@dataclass(frozen=True)
class ProfileFiles:
    """The uploaded files by role; the tokenizer's file name tells its kind."""

    tokenizer: bytes
    tokenizer_filename: str
    chat_template: str | None = None
    tokenizer_config: bytes | None = None


def classify(files: dict[str, bytes]) -> ProfileFiles:
    """Files by name (`tokenizer.json` or `*.model` / `*.tiktoken`, `*.jinja`,
    `tokenizer_config.json`) into roles; raises ProfileError `profile_files_missing`."""
    tokenizer = [n for n in files if n != CONFIG_FILE and n.endswith(TOKENIZER_SUFFIXES)]
    templates = [n for n in files if n.endswith(".jinja")]
    unknown = sorted(set(files) - {*tokenizer, *templates, CONFIG_FILE})
    if len(tokenizer) != 1 or len(templates) > 1 or unknown:
        found = ", ".join(sorted(files)) or "no files"
        raise _files_error(
            f"a profile takes one tokenizer file (tokenizer.json, *.model or *.tiktoken), at most one "
            f"chat template (*.jinja) and at most one tokenizer_config.json; got {found}"
        )
    try:
        template = files[templates[0]].decode() if templates else None
    except UnicodeDecodeError as e:
        raise ProfileError("template_syntax", f"{templates[0]} is not UTF-8 text (byte {e.start})") from None
    return ProfileFiles(
        tokenizer=files[tokenizer[0]],
        tokenizer_filename=tokenizer[0],
        chat_template=template,
        tokenizer_config=files.get(CONFIG_FILE),
    )


def _files_error(message: str) -> ProfileError:
    return ProfileError("profile_files_missing", message)


def build_profile(
    name: str, files: ProfileFiles, tiktoken_preset: str | None, rules: TrainingRules
) -> ModelProfile:
    """Parse and check the files (CPU work: callers on an event loop run it in a thread)."""
    return profile_from_files(
        name=name,
        tokenizer=files.tokenizer,
        tokenizer_filename=files.tokenizer_filename,
        chat_template=files.chat_template,
        tokenizer_config=files.tokenizer_config,
        tiktoken_preset=tiktoken_preset,
        rules=rules,
    )


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ProfileCache:
    """A bounded LRU of loaded profiles, shared by the threads of one process. Two threads that
    want the same profile at once parse it once: the second waits for the first."""

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self.size = size
        self._items: OrderedDict[tuple[Any, ...], ModelProfile] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[tuple[Any, ...], threading.Lock] = {}
        self.loads = 0  # profiles parsed (not served from the cache), for tests and metrics

    def get_or_load(self, key: tuple[Any, ...], load: Callable[[], ModelProfile]) -> ModelProfile:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            gate = self._loading.setdefault(key, threading.Lock())
        with gate:
            try:
                with self._lock:
                    if key in self._items:
                        self._items.move_to_end(key)
                        return self._items[key]
                profile = load()
                self.add(key, profile)
                with self._lock:
                    self.loads += 1
                return profile
            finally:
                with self._lock:
                    self._loading.pop(key, None)

    def add(self, key: tuple[Any, ...], profile: ModelProfile) -> None:
        with self._lock:
            self._items[key] = profile
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


CACHE = ProfileCache()  # the process's cache: every ProfileStore of the process shares it


def _index(tenant: str) -> str:
    return P + f"t:{tenant}:model-profiles"


def _retired(tenant: str) -> str:
    return P + f"t:{tenant}:model-profiles:retired"


def _prefix(tenant: str, content_hash: str) -> str:
    return f"profiles/{tenant}/{content_hash}/"


def _cache_key(record: ProfileRecord) -> tuple[Any, ...]:
    """A loaded profile carries its name and rules besides the files the content hash covers."""
    return (record.content_hash, record.name, record.tiktoken_preset, record.rules)


_decode_record = msgspec.json.Decoder(ProfileRecord).decode
_decode_retired = msgspec.json.Decoder(_Retired).decode


@dataclass
class ProfileStore:
    r: redis.Redis
    blobs: BlobStore
    cache: ProfileCache = CACHE
    retire_grace_s: float = RETIRE_GRACE_S

    def put(
        self,
        tenant: str,
        name: str,
        files: dict[str, bytes],
        *,
        tiktoken_preset: str | None = None,
        rules: TrainingRules | None = None,
    ) -> tuple[ProfileRecord, bool]:
        """Check and store a profile; True when it was created, False when the same files and
        rules were already registered under that name (a retried upload changes nothing).

        Raises ProfileError (the files do not make a profile) or ProfileExists (a different
        profile has the name: delete it first)."""
        rules = rules or TrainingRules()
        parts = classify(files)
        profile = build_profile(name, parts, tiktoken_preset, rules)
        existing = self.get(tenant, name)
        if existing is not None:
            if existing.content_hash == profile.content_hash and existing.rules == rules:
                return existing, False
            raise ProfileExists(name)
        stored = {"tokenizer": (parts.tokenizer_filename, parts.tokenizer)}
        if parts.chat_template is not None:
            stored["chat_template"] = (TEMPLATE_FILE, parts.chat_template.encode())
        if parts.tokenizer_config is not None:
            stored["tokenizer_config"] = (CONFIG_FILE, parts.tokenizer_config)
        prefix = _prefix(tenant, profile.content_hash)
        for filename, data in stored.values():
            self.blobs.put(prefix + filename, data)
        record = ProfileRecord(
            name=name,
            content_hash=profile.content_hash,
            tokenizer_kind=profile.tokenizer.kind,
            tokenizer_sha256=profile.tokenizer_sha256,
            template_sha256=profile.template_sha256,
            vocab_size=profile.tokenizer.vocab_size,
            bos_token=profile.bos_token,
            eos_token=profile.eos_token,
            tiktoken_preset=tiktoken_preset,
            train_eot=rules.train_eot,
            train_on=rules.train_on,
            mask_source=rules.mask_source,
            files={
                role: FileInfo(filename=filename, size=len(data), sha256=_sha256(data))
                for role, (filename, data) in stored.items()
            },
            created_at=now(),
        )
        if not self.r.hsetnx(_index(tenant), name, msgspec.json.encode(record).decode()):
            raced = self.get(tenant, name)  # another request created it in between
            if raced is not None and raced.content_hash == record.content_hash and raced.rules == rules:
                return raced, False
            raise ProfileExists(name)
        self.cache.add(_cache_key(record), profile)  # parsed already: the first load is free
        self._sweep(tenant)
        return record, True

    def get(self, tenant: str, name: str) -> ProfileRecord | None:
        raw: str | None = self.r.hget(_index(tenant), name)  # type: ignore[assignment]
        return _decode_record(raw) if raw else None

    def list(self, tenant: str) -> list[ProfileRecord]:
        raw: dict[str, str] = self.r.hgetall(_index(tenant))  # type: ignore[assignment]
        return [_decode_record(raw[name]) for name in sorted(raw)]

    def delete(self, tenant: str, name: str) -> bool:
        """Forget the name at once; its files stay loadable by running builds for the grace period."""
        raw: str | None = self.r.hget(_index(tenant), name)  # type: ignore[assignment]
        if not raw:
            return False
        retired = _Retired(record=_decode_record(raw), until=time.time() + self.retire_grace_s)
        pipe = self.r.pipeline()
        pipe.hset(_retired(tenant), name, msgspec.json.encode(retired).decode())
        pipe.hdel(_index(tenant), name)
        pipe.execute()
        self._sweep(tenant)
        return True

    def load(self, tenant: str, name: str, *, retired_ok: bool = False) -> ModelProfile:
        """The loaded profile (from the process's LRU when there); raises ProfileNotFound. With
        `retired_ok` (workers of builds already running), a profile deleted within the grace
        period still loads."""
        record = self.get(tenant, name)
        if record is None and retired_ok:
            raw: str | None = self.r.hget(_retired(tenant), name)  # type: ignore[assignment]
            record = _decode_retired(raw).record if raw else None
        if record is None:
            raise ProfileNotFound(name)
        return self.load_record(tenant, record)

    def load_record(self, tenant: str, record: ProfileRecord) -> ModelProfile:
        return self.cache.get_or_load(_cache_key(record), lambda: self._parse(tenant, record))

    def _parse(self, tenant: str, record: ProfileRecord) -> ModelProfile:
        prefix = _prefix(tenant, record.content_hash)
        data = {role: self.blobs.get(prefix + info.filename) for role, info in record.files.items()}
        template = data.get("chat_template")
        files = ProfileFiles(
            tokenizer=data["tokenizer"],
            tokenizer_filename=record.files["tokenizer"].filename,
            chat_template=template.decode() if template is not None else None,
            tokenizer_config=data.get("tokenizer_config"),
        )
        return build_profile(record.name, files, record.tiktoken_preset, record.rules)

    def _sweep(self, tenant: str) -> int:
        """Remove the files of retired entries past their grace that nothing else still needs."""
        raw: dict[str, str] = self.r.hgetall(_retired(tenant))  # type: ignore[assignment]
        retired = {name: _decode_retired(value) for name, value in raw.items()}
        expired = {name for name, entry in retired.items() if entry.until < time.time()}
        if not expired:
            return 0
        needed = {r.content_hash for r in self.list(tenant)}
        needed |= {e.record.content_hash for n, e in retired.items() if n not in expired}
        removed = 0
        for name in sorted(expired):
            content_hash = retired[name].record.content_hash
            if content_hash not in needed:
                removed += self.blobs.delete_prefix(_prefix(tenant, content_hash))
        self.r.hdel(_retired(tenant), *expired)
        return removed
