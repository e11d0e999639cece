"""Blob stores: where batches and artifacts live (never in Redis).

A blob is written whole under a key (`tenant/dataset/batches/...`); writes go to a temporary
name first and are renamed into place, so a reader never sees half a blob. The local store is
the default; the S3 one is for workers on several machines, which share nothing else.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

CHUNK = 1 << 20


def job_prefix(tenant: str, job_id: str) -> str:
    """Where a job keeps its files (work files and artifacts), so one delete removes them all."""
    return f"{tenant}/jobs/{job_id}/"


class BlobNotFound(KeyError):
    """No blob under that key."""


class BlobStore(Protocol):
    def put(self, key: str, data: bytes) -> None: ...
    def put_file(self, key: str, path: Path, move: bool = False) -> None: ...
    def get(self, key: str) -> bytes: ...
    def open_chunks(self, key: str) -> Iterator[bytes]: ...
    def size(self, key: str) -> int: ...
    def exists(self, key: str) -> bool: ...
    def delete_prefix(self, prefix: str) -> int: ...
    def list(self, prefix: str) -> list[str]: ...


def _check_key(key: str) -> str:
    """Keys are relative paths without empty, `.` or `..` parts (a prefix may end with `/`)."""
    parts = key.removesuffix("/").split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid blob key {key!r}")
    return key


def _under(prefix: str, key: str) -> bool:
    """A prefix names a key or a folder: `a/ds_1` covers `a/ds_1` and `a/ds_1/...`, never `a/ds_10`."""
    if not prefix or prefix.endswith("/"):
        return key.startswith(prefix)
    return key == prefix or key.startswith(prefix + "/")


class LocalBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def put_file(self, key: str, path: Path, move: bool = False) -> None:
        """Store a file's bytes without holding them in memory (it is copied, then renamed into place).

        With `move`, the file is renamed into place when it is on the same file system (no copy);
        the caller gives it up either way."""
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        if move:
            try:
                os.replace(path, target)
                return
            except OSError:  # another file system: copy below
                pass
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=target.parent)
        os.close(fd)
        try:
            shutil.copyfile(path, tmp)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise BlobNotFound(key) from None

    def open_chunks(self, key: str) -> Iterator[bytes]:
        try:
            f = self._path(key).open("rb")
        except FileNotFoundError:
            raise BlobNotFound(key) from None
        with f:
            while chunk := f.read(CHUNK):
                yield chunk

    def size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            raise BlobNotFound(key) from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str) -> list[str]:
        base = self.root / prefix if prefix else self.root
        if base.is_file():
            return [prefix]
        if not base.exists():
            return []
        return sorted(
            str(p.relative_to(self.root))
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".tmp-")
        )

    def delete_prefix(self, prefix: str) -> int:
        keys = self.list(_check_key(prefix))
        for key in keys:
            with contextlib.suppress(FileNotFoundError):
                self._path(key).unlink()
        return len(keys)


class S3BlobStore:
    """An S3-compatible bucket (AWS, MinIO, moto's server) through boto3."""

    def __init__(self, bucket: str, client: Any) -> None:
        self.bucket = bucket
        self.client = client

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=_check_key(key), Body=data)

    def put_file(self, key: str, path: Path, move: bool = False) -> None:
        """A streamed (multipart when large) upload of a file (`move` changes nothing here)."""
        self.client.upload_file(str(path), self.bucket, _check_key(key))

    def get(self, key: str) -> bytes:
        try:
            body: bytes = self.client.get_object(Bucket=self.bucket, Key=_check_key(key))["Body"].read()
        except self.client.exceptions.NoSuchKey:
            raise BlobNotFound(key) from None
        return body

    def open_chunks(self, key: str) -> Iterator[bytes]:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=_check_key(key))["Body"]
        except self.client.exceptions.NoSuchKey:
            raise BlobNotFound(key) from None
        yield from body.iter_chunks(CHUNK)

    def size(self, key: str) -> int:
        try:
            size: int = self.client.head_object(Bucket=self.bucket, Key=_check_key(key))["ContentLength"]
        except self.client.exceptions.ClientError:
            raise BlobNotFound(key) from None
        return size

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except BlobNotFound:
            return False
        return True

    def list(self, prefix: str) -> list[str]:
        keys: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            keys += [item["Key"] for item in page.get("Contents", []) if _under(prefix, item["Key"])]
        return sorted(keys)

    def delete_prefix(self, prefix: str) -> int:
        keys = self.list(_check_key(prefix))
        for i in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[i : i + 1000]]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch})
        return len(keys)


def blob_store_from_settings(settings: Any) -> BlobStore:
    if settings.blob_backend == "s3":
        import boto3

        def secret(value: Any) -> str | None:
            return value.get_secret_value() if value is not None else None

        client = boto3.client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            region_name=settings.s3_region,
            aws_access_key_id=secret(settings.s3_access_key_id),
            aws_secret_access_key=secret(settings.s3_secret_access_key),
        )
        return S3BlobStore(settings.s3_bucket, client)
    return LocalBlobStore(settings.blob_root)
