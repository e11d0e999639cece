"""Provider JSONL parts: each within the byte limit, cut only between lines, named once the count is known."""

from __future__ import annotations

import hashlib
import itertools
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from workers.jsonl_output import RollingJsonl


def _write(
    folder: Path, lines: list[bytes], max_bytes: int, blocks: list[int] | None = None
) -> list[tuple[str, Path]]:
    """Write `lines` one by one, or in blocks of the given numbers of lines (`write_lines`);
    check each part's SHA-256 and the line count, and give (name, path) per part."""
    out = RollingJsonl(folder, "train", max_bytes)
    if blocks is None:
        for line in lines:
            out.write(line)
    else:
        start = 0
        for n in blocks:
            if start < len(lines) and n:
                chunk = lines[start : start + n]
                out.write_lines(b"".join(chunk), len(chunk))
                start += len(chunk)
        for line in lines[start:]:
            out.write(line)
    assert out.count == len(lines)
    parts = out.close()
    for _name, path, sha256 in parts:
        assert hashlib.sha256(path.read_bytes()).hexdigest() == sha256
    return [(name, path) for name, path, _ in parts]


def test_a_side_that_fits_keeps_the_plain_name(tmp_path: Path) -> None:
    parts = _write(tmp_path, [b'{"a":1}\n', b'{"b":2}\n'], 1024)
    assert [name for name, _ in parts] == ["train.jsonl"]
    assert parts[0][1].read_bytes() == b'{"a":1}\n{"b":2}\n'


def test_nothing_written_gives_no_part(tmp_path: Path) -> None:
    assert _write(tmp_path, [], 1024) == []


def test_parts_are_named_with_their_count_and_a_long_line_gets_a_part_of_its_own(tmp_path: Path) -> None:
    lines = [b"x" * 9 + b"\n", b"y" * 30 + b"\n", b"z" * 4 + b"\n", b"w" * 4 + b"\n"]
    parts = _write(tmp_path, lines, 16)
    assert [name for name, _ in parts] == [
        "train-00000-of-00003.jsonl",
        "train-00001-of-00003.jsonl",
        "train-00002-of-00003.jsonl",
    ]
    assert [p.read_bytes() for _, p in parts] == [lines[0], lines[1], lines[2] + lines[3]]


@settings(max_examples=300, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=0, max_value=60), max_size=40),
    max_bytes=st.integers(min_value=1, max_value=100),
    blocks=st.none() | st.lists(st.integers(min_value=0, max_value=12), max_size=10),
)
def test_parts_keep_every_line_in_order_within_the_limit(
    sizes: list[int], max_bytes: int, blocks: list[int] | None
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        lines = [b"%d" % i + b"." * n + b"\n" for i, n in enumerate(sizes)]
        parts = _write(Path(folder), lines, max_bytes, blocks)
        data = [p.read_bytes() for _, p in parts]
        assert b"".join(data) == b"".join(lines)
        for chunk in data:
            assert chunk.endswith(b"\n")
            # within the limit, unless the part is one line that alone exceeds it
            assert len(chunk) <= max_bytes or chunk.count(b"\n") == 1
        if len(parts) > 1:  # no part could have taken the next part's first line
            for chunk, following in itertools.pairwise(data):
                assert len(chunk) + len(following.split(b"\n", 1)[0]) + 1 > max_bytes
