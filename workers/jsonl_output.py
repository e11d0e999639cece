"""Provider JSONL written in parts that each stay below a byte limit, cut only at line boundaries."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

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
        self._file: BinaryIO | None = None
        self._size = 0

    def write(self, line: bytes) -> None:
        if self._file is None or (self._size and self._size + len(line) > self.max_bytes):
            self._roll()
        assert self._file is not None
        self._file.write(line)
        self._size += len(line)
        self.count += 1

    def _roll(self) -> None:
        if self._file is not None:
            self._file.close()
        path = self.folder / f"{self.stem}.part{len(self._paths):05d}"
        self._paths.append(path)
        self._file = path.open("wb")
        self._size = 0

    def close(self) -> list[tuple[str, Path]]:
        """The parts as (artifact name, path), in order; none when nothing was written."""
        if self._file is not None:
            self._file.close()
            self._file = None
        return list(zip(part_names(self.stem, len(self._paths)), self._paths, strict=True))
