"""What a training target is: one small protocol, and the machinery every target shares.

A target is one platform's file format and rules. It takes examples in tuneset's one
representation (`service.core.conversation`, after the recipe's fixes) and writes them as that
platform's JSONL lines. Whatever the platform cannot take or express is a problem with a code
(`service.core.problems`, layer `target`) and the recipe's policy for that code decides, as for
every other code: `keep` writes it as is (a warning's default), `fix` applies the code's fix
(keep as context, split, merge...), `drop` leaves the example out of this target's file, `fail`
fails it. A target never changes another target's output: each gets the same examples.

The numbers a target checks (limits, minimum and maximum examples, reserved strings) are facts
in `data/targets.toml`, with their sources; the format itself is the target's module.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any, ClassVar, Literal

import msgspec

from service.core.conversation import ChatExample, Example, Message, PreferenceExample
from service.core.problems import CODES, Action, Problem, problem

Kind = Literal["chat", "preference"]
Side = Literal["train", "validation"]
Status = Literal["ok", "dropped", "failed"]
Policy = Callable[[str], Action]

_json = msgspec.json.Encoder()


@dataclass(frozen=True)
class Facts:
    """One target's limits, as `data/targets.toml` states them (see its header for the meaning)."""

    platform: str
    min_examples: int
    max_examples: int | None
    max_tokens_per_example: int | None  # 0: the recipe model's own limit (the models table)
    max_tokens_per_model: dict[str, int]
    max_file_bytes: int | None
    encoding: str
    reserved_strings: tuple[str, ...]
    sources: tuple[str, ...]
    notes: tuple[str, ...]

    def token_limit(self, model: str) -> int | None:
        """The per-example limit for `model` (a base-model name prefix match, the longest wins);
        None when the platform states none or when it is the recipe model's own (checked by the
        pipeline's `over_token_limit`)."""
        base = model.removeprefix("ft:")
        matches = [k for k in self.max_tokens_per_model if base.startswith(k)]
        if matches:
            return self.max_tokens_per_model[max(matches, key=len)]
        return self.max_tokens_per_example or None


@cache
def all_facts() -> dict[str, Any]:
    text = resources.files("service.core.data").joinpath("targets.toml").read_text("utf-8")
    return tomllib.loads(text)


def facts_of(name: str) -> Facts:
    doc = all_facts()
    entry = doc["targets"][name]
    note = entry.get("encoding_note")
    return Facts(
        platform=str(entry["platform"]),
        min_examples=int(entry.get("min_examples", 1)),
        max_examples=int(entry["max_examples"]) if "max_examples" in entry else None,
        max_tokens_per_example=int(entry["max_tokens_per_example"])
        if "max_tokens_per_example" in entry
        else None,
        max_tokens_per_model={str(k): int(v) for k, v in entry.get("max_tokens_per_model", {}).items()},
        max_file_bytes=int(entry["max_file_bytes"]) if "max_file_bytes" in entry else None,
        encoding=str(entry.get("encoding", "utf-8")),
        reserved_strings=tuple(str(s) for s in entry.get("reserved_strings", ())),
        sources=tuple(str(s) for s in entry.get("sources", ())),
        notes=(str(note),) if note else (),
    )


@dataclass(frozen=True)
class Rule:
    """One rule a target checks, with the problem code it raises."""

    code: str
    says: str


class _Stop(Exception):
    def __init__(self, status: Status) -> None:
        self.status = status


@dataclass
class Converted:
    """What a target made of one example: its lines (none when dropped or failed; several when
    a fix split it) and the problems found, each with the action its policy took."""

    status: Status
    lines: list[bytes]
    problems: list[Problem]


@dataclass
class Context:
    """One example's conversion: where it is (line), the policies, and what was found."""

    line: int | None
    policy: Policy
    problems: list[Problem] = field(default_factory=list)

    def found(self, code: str, message: str, message_index: int | None = None) -> Action:
        """Record a problem; its policy's action is returned when it is keep or fix. Drop and fail
        end the conversion of this example."""
        p = problem(code, message, self.line, message_index)
        act = self.policy(code)
        if act not in CODES[code].actions:  # a policy the code does not allow: its default
            act = CODES[code].default
        p.action = act.value
        self.problems.append(p)
        if act is Action.DROP:
            raise _Stop("dropped")
        if act is Action.FAIL:
            raise _Stop("failed")
        return act


def part_names(stem: str, parts: int) -> list[str]:
    """`train.jsonl` for one part; `train-00000-of-00002.jsonl`, ... for several (the HF naming)."""
    if parts == 1:
        return [f"{stem}.jsonl"]
    return [f"{stem}-{i:05d}-of-{parts:05d}.jsonl" for i in range(parts)]


class Target:
    """The protocol, with what targets share. A target module subclasses it and sets the class
    attributes; `adapt` checks and repairs one example, `encode_chat` / `encode_preference`
    write one example as one JSONL line."""

    name: ClassVar[str]
    kinds: ClassVar[frozenset[Kind]]
    uploads: ClassVar[bool] = False  # its files go to a provider through the openai SDK
    provider_kind: ClassVar[str | None] = None  # the provider profile kind it is built for
    rules: ClassVar[tuple[Rule, ...]] = ()
    token_counting: ClassVar[str] = (
        "the recipe model's encoding (tiktoken), per OpenAI's billing rules: an estimate, the "
        "platform's own tokenizer is not public"
    )
    upload_hint: ClassVar[str] = ""  # how to upload the files by hand (the platform's CLI)

    @property
    def facts(self) -> Facts:
        return facts_of(self.name)

    def folder(self) -> str:
        """Where its files go among a build's artifacts: `together/train.jsonl`, ..."""
        return f"{self.name}/"

    def file_names(self, side: Side, parts: int) -> list[str]:
        return [self.folder() + n for n in part_names(side, parts)]

    def owns(self, artifact_name: str) -> bool:
        """Whether a build artifact of this name is one of this target's JSONL files."""
        rest = artifact_name.removeprefix(self.folder()) if self.folder() else artifact_name
        if self.folder() and rest == artifact_name:
            return False
        if "/" in rest or not rest.endswith(".jsonl"):
            return False
        return any(rest == f"{s}.jsonl" or rest.startswith(f"{s}-") for s in ("train", "validation"))

    def max_file_bytes(self, default: int) -> int:
        limit = self.facts.max_file_bytes
        return min(default, limit) if limit else default

    # -- conversion ------------------------------------------------------------------------

    def convert(
        self,
        example: Example,
        *,
        line: int | None,
        policy: Policy,
        model: str,
        tokens: int | None = None,
    ) -> Converted:
        """Check `example` against this target's rules, apply the policies, write its lines.

        `tokens` is the example's count under the recipe model's encoding, checked against the
        target's per-example limit (`target_over_token_limit`)."""
        ctx = Context(line, policy)
        try:
            limit = self.facts.token_limit(model)
            if limit is not None and tokens is not None and tokens > limit:
                ctx.found(
                    "target_over_token_limit",
                    f"the example has {tokens:,} tokens; {self.name} takes at most {limit:,} per example",
                )
            if isinstance(example, PreferenceExample):
                if "preference" not in self.kinds:
                    raise ValueError(f"target {self.name} takes no preference examples")
                pref = self.adapt_preference(example, ctx)
                lines = [self.encode_preference(pref)]
            else:
                if "chat" not in self.kinds:
                    raise ValueError(f"target {self.name} takes no chat examples")
                lines = [self.encode_chat(chat) for chat in self.adapt_chat(example, ctx)]
        except _Stop as stop:
            return Converted(stop.status, [], ctx.problems)
        return Converted("ok", [line_ + b"\n" for line_ in lines], ctx.problems)

    def adapt_chat(self, example: ChatExample, ctx: Context) -> list[ChatExample]:
        """The examples to write for one chat example (several when a fix splits it)."""
        return [example]

    def adapt_preference(self, example: PreferenceExample, ctx: Context) -> PreferenceExample:
        return example

    def encode_chat(self, example: ChatExample) -> bytes:
        return _json.encode(example)

    def encode_preference(self, example: PreferenceExample) -> bytes:
        return _json.encode(example)

    # -- the file as a whole ---------------------------------------------------------------

    def file_problems(self, examples: int, policy: Policy) -> list[Problem]:
        """`target_example_count` when the training file has fewer or more examples than allowed."""
        facts = self.facts
        message = None
        if examples < facts.min_examples:
            message = f"{self.name} needs at least {facts.min_examples:,} examples; the file has {examples:,}"
        elif facts.max_examples is not None and examples > facts.max_examples:
            message = f"{self.name} takes at most {facts.max_examples:,} examples; the file has {examples:,}"
        if message is None:
            return []
        p = problem("target_example_count", message)
        act = policy("target_example_count")
        p.action = (act if act in CODES["target_example_count"].actions else Action.FAIL).value
        return [p]


def messages_of(example: Example) -> list[Message]:
    if isinstance(example, ChatExample):
        return example.messages
    return [*example.input.messages, *example.preferred_output, *example.non_preferred_output]
