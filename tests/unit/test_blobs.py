"""The local blob store: whole writes, folder-like prefixes, no escaping its root."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.store.blobs import BlobNotFound, LocalBlobStore


def test_put_get_and_prefixes_are_folders(tmp_path: Path) -> None:
    blobs = LocalBlobStore(tmp_path)
    for key in ("a/ds_1/b.jsonl", "a/ds_10/b.jsonl", "a/ds_1/c/d.jsonl"):
        blobs.put(key, key.encode())
    assert blobs.get("a/ds_1/b.jsonl") == b"a/ds_1/b.jsonl"
    assert blobs.list("a/ds_1") == ["a/ds_1/b.jsonl", "a/ds_1/c/d.jsonl"]
    assert blobs.list("a/ds_1/b.jsonl") == ["a/ds_1/b.jsonl"]  # an exact key is its own prefix
    assert blobs.delete_prefix("a/ds_1/b.jsonl") == 1
    assert blobs.delete_prefix("a/ds_1/") == 1
    assert blobs.list("a") == ["a/ds_10/b.jsonl"]  # the sibling survives
    with pytest.raises(BlobNotFound):
        blobs.get("a/ds_1/b.jsonl")


def test_put_file_and_chunks(tmp_path: Path) -> None:
    blobs = LocalBlobStore(tmp_path / "store")
    source = tmp_path / "big.bin"
    source.write_bytes(bytes(range(256)) * 10_000)
    blobs.put_file("x/big.bin", source)
    assert b"".join(blobs.open_chunks("x/big.bin")) == source.read_bytes()
    assert blobs.size("x/big.bin") == source.stat().st_size


@pytest.mark.parametrize("key", ["", "/etc/passwd", "a/../../x", "a//b", "./a"])
def test_keys_cannot_escape_the_root(tmp_path: Path, key: str) -> None:
    with pytest.raises(ValueError, match="invalid blob key"):
        LocalBlobStore(tmp_path).put(key, b"x")
