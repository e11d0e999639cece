"""Provider JSONL written in parts that each stay below a byte limit, cut only at line boundaries."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, BinaryIO

from service.core.outputs import part_names


class RollingJsonl:
    """Appends lines to the current part and starts a new one when the next line would not fit.

    Part names are given at `close`, when the number of parts is known, so one side that fits
    keeps the plain `train.jsonl` name."""

    def __init__(self, folder: Path, stem: str, max_bytes: int) -> None:
        self.folder = folder
        self.stem = stem
        self.max_bytes = max_bytes
        self.count = 0
        self._paths: list[Path] = []
        self._digests: list[Any] = []  # SHA-256 of each part, computed as it is written
        self._file: BinaryIO | None = None
        self._size = 0

    def write(self, line: bytes) -> None:
        if self._file is None or (self._size and self._size + len(line) > self.max_bytes):
            self._roll()
        self._append(line, 1)

    def write_lines(self, block: bytes, lines: int) -> None:
        """`lines` whole lines at once: one write when they fit the current part, else line by line."""
        if self._file is None and len(block) <= self.max_bytes:
            self._roll()
        if self._file is not None and self._size + len(block) <= self.max_bytes:
            self._append(block, lines)
            return
        for line in block.split(b"\n")[:-1]:  # lines end in \n only (a JSON string escapes \r)
            self.write(line + b"\n")

    def _append(self, data: bytes, lines: int) -> None:
        assert self._file is not None
        self._file.write(data)
        self._digests[-1].update(data)
        self._size += len(data)
        self.count += lines

    def _roll(self) -> None:
        if self._file is not None:
            self._file.close()
        path = self.folder / f"{self.stem}.part{len(self._paths):05d}"
        self._paths.append(path)
        self._digests.append(hashlib.sha256())
        self._file = path.open("wb")
        self._size = 0

    def close(self) -> list[tuple[str, Path, str]]:
        """The parts as (artifact name, path, SHA-256), in order; none when nothing was written."""
        if self._file is not None:
            self._file.close()
            self._file = None
        names = part_names(self.stem, len(self._paths))
        return [(n, p, d.hexdigest()) for n, p, d in zip(names, self._paths, self._digests, strict=True)]
