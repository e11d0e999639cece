"""One set of JSONL files per training target of a build (`outputs.targets`, `openai_jsonl`).

The shards write every kept example once, in OpenAI's shape (the one representation). At the
finalize each line goes to its side (train, validation) in every selected target: `openai`
copies the bytes as they are (what builds always wrote), every other target converts the line
with its module in `service.core.targets` and may report problems, split or leave it out, as
the recipe's policies for the `target_*` codes say. Files are cut into parts below the target's
file-size limit.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import msgspec

from service.core.conversation import ChatExample, Example, PreferenceExample
from service.core.pipeline import group_problems
from service.core.problems import Action, Problem
from service.core.targets import registry
from service.core.targets.base import Policy, Side, Target
from workers.jsonl_output import RollingJsonl

SIDES: tuple[Side, ...] = ("train", "validation")
_chat = msgspec.json.Decoder(ChatExample)
_preference = msgspec.json.Decoder(PreferenceExample)


class TargetFiles:
    """One target's writers (train and validation) and what its conversion found."""

    def __init__(self, target: Target, work: Path, max_bytes: int, preference: bool) -> None:
        self.target = target
        folder = work / f"target-{target.name}"
        folder.mkdir(parents=True, exist_ok=True)
        limit = target.max_file_bytes(max_bytes)
        self.sides: dict[str, RollingJsonl] = {side: RollingJsonl(folder, side, limit) for side in SIDES}
        self.decode = _preference.decode if preference else _chat.decode
        self.problems: list[Problem] = []
        self.status: Counter[str] = Counter()

    @property
    def copies(self) -> bool:
        return self.target.name == registry.DEFAULT  # openai: the shard's bytes as they are

    def write(
        self, side: str, line: bytes, tokens: int | None, where: int, policy: Policy, model: str
    ) -> None:
        writer = self.sides[side]
        if self.copies:
            writer.write(line)
            return
        example: Example = self.decode(line)
        done = self.target.convert(example, line=where, policy=policy, model=model, tokens=tokens)
        self.status[done.status] += 1
        self.problems.extend(done.problems)
        for out in done.lines:
            writer.write(out)

    def close(self, policy: Policy) -> tuple[list[tuple[str, Path, str, str]], dict[str, Any]]:
        """The files as (artifact name, path, SHA-256, side), and the target's summary for the job."""
        files: list[tuple[str, Path, str, str]] = []
        counts: dict[str, int] = {}
        for side in SIDES:
            writer = self.sides[side]
            parts = writer.close()
            counts[side] = writer.count
            names = self.target.file_names(side, len(parts))
            files += [
                (name, path, digest, side) for name, (_, path, digest) in zip(names, parts, strict=True)
            ]
        if not self.copies:
            self.problems += self.target.file_problems(counts["train"], policy)
        summary = {
            "examples": counts["train"],
            "validation_examples": counts["validation"],
            "dropped": self.status["dropped"],
            "failed": self.status["failed"],
            "uploads": self.target.uploads,
            "problems": msgspec.to_builtins(group_problems(self.problems)),
        }
        return files, summary

    @property
    def failing(self) -> list[str]:
        return sorted({p.code for p in self.problems if p.action == Action.FAIL.value})
