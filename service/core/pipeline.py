"""Validate, repair and account examples under a recipe; the shared core of the CLI, API and workers.

`Processor.process` takes one decoded Record to its outcome: the problems (each with the
action its policy took), the changes fixes made, and the examples to write (none when
dropped or failed, several when split into windows or expanded per turn). `Summary` folds
outcomes into the report. Both stream: memory holds one example at a time plus per-example
token counts and 16-byte content hashes (for exact-duplicate detection).

With `Recipe.profile` (a model's own chat template and tokenizer), every chat example is also
rendered the way its trainer will render it: what that finds (the template raises, drops or
injects text, rewrites history, leaves the end-of-turn untrained) becomes problems with policies
like any other, and token counts, limits and windows are the profile's tokens.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal

import msgspec
import xxhash

from service.core.accounting import (
    REPLY_PRIMING,
    Accountant,
    ExampleTokens,
    billable_tokens,
    default_epochs,
    estimated_cost,
    truncation_loss,
)
from service.core.conversation import ChatExample, Example, Message, PreferenceExample, chat_of
from service.core.formats import Format, Record, read_records
from service.core.lint import lint
from service.core.models import ModelInfo, ModelTable, load_table
from service.core.problems import CODES, Action, Change, Problem, Severity, problem
from service.core.profile_stage import (
    finding_problem,
    special_in_content,
    special_pattern,
    special_strings,
    tokens_of,
    truncation_loss_of,
)
from service.core.profiles import Finding, ModelProfile, ProfileResult, expand_per_turn, profile_view
from service.core.repair import (
    Fixed,
    cut_at_role_marker,
    cut_at_special_string,
    drop_empty,
    drop_leading_assistant,
    drop_trailing,
    insert_system,
    merge_consecutive,
    move_system_first,
    normalize_text,
    remove_special_tokens,
    remove_weight_on_non_assistant,
    split_windows,
    train_last_only,
)
from service.core.split import SplitReport
from service.core.view import TrainingView

DEFAULT_MODEL = "gpt-4o-mini"
MAX_PROBLEM_SAMPLES = 20  # lines named per problem group
MAX_PROBLEM_MESSAGES = 5  # findings quoted (with their own message) per problem group


class PolicyError(ValueError):
    """A policy names an unknown code or an action that code does not allow."""


if TYPE_CHECKING:
    OptionalProfile = ModelProfile | None
else:  # msgspec (and the OpenAPI schemas built from it) cannot describe a profile: Any at run time
    OptionalProfile = Any


class Recipe(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What to do with a dataset. Every field is optional; defaults change nothing the provider accepts."""

    model: str = DEFAULT_MODEL
    format: Format | None = None
    policies: dict[str, Action] = {}
    system_prompt: str | None = None  # inserted by the `no_system_message` fix
    train_on: Literal["all", "last"] = "all"  # "last": weight 0 on every assistant turn but the final one
    # The model's own chat template and tokenizer, resolved by the CLI or the API (never decoded
    # from JSON): every chat example is rendered with it (see the module docstring). Not wire
    # data: a BuildInfo keeps only its name and content hash.
    profile: OptionalProfile = None


def parse_policies(items: Iterable[str]) -> dict[str, Action]:
    """`["consecutive_same_role=fix", ...]` as a policy map; PolicyError names what is wrong."""
    out: dict[str, Action] = {}
    for item in items:
        code, sep, action = item.partition("=")
        if not sep:
            raise PolicyError(f"policy {item!r} is not CODE=ACTION")
        out[code.strip()] = _action(code.strip(), action.strip())
    return out


def _action(code: str, action: str) -> Action:
    info = CODES.get(code)
    if info is None:
        raise PolicyError(f"unknown problem code {code!r}; see `tuneset codes`")
    try:
        act = Action(action)
    except ValueError:
        raise PolicyError(f"unknown action {action!r} for {code}; use keep, fix, drop or fail") from None
    if act not in info.actions:
        raise PolicyError(f"{code} allows {', '.join(a.value for a in info.actions)}, not {action}")
    return act


def check_recipe(recipe: Recipe) -> None:
    """PolicyError when a policy is unknown or not allowed; plain strings become Actions."""
    recipe.policies = {code: _action(code, str(act)) for code, act in recipe.policies.items()}
    if recipe.policies.get("no_system_message") == Action.FIX and not recipe.system_prompt:
        raise PolicyError("no_system_message=fix needs a system prompt to insert")


class OutputExample(msgspec.Struct):
    """One example to write. `window` numbers the outputs of one input line (windows, or the
    examples `expand_per_turn` made of it); None when the line gave one output. With a profile,
    `view` is the example as the profile renders it, so writers need not render it again."""

    line: int
    window: int | None
    example: Example
    tokens: ExampleTokens
    view: TrainingView | None = None


class Outcome(msgspec.Struct):
    line: int
    status: Literal["ok", "dropped", "failed"]
    problems: list[Problem]
    changes: list[Change]
    outputs: list[OutputExample]
    trained_before: int | None = None  # trained tokens before fixes, when fixes changed the example
    images: int = 0
    # trained tokens of what the fixes made of it (every window, before duplicates are dropped),
    # when fixes changed the example and it was kept: the "after" of `trained_before`
    trained_after: int | None = None


FixStep = Callable[[ChatExample, int | None], Fixed]

# The order fixes run in: in-place rewrites first, then the ones that drop, merge or move messages.
_CHAT_FIXES: list[tuple[str, FixStep]] = [
    ("weight_on_non_assistant", remove_weight_on_non_assistant),
    ("role_marker_in_content", cut_at_role_marker),  # before the text fixes: what it cuts needs none
    ("special_token_text", remove_special_tokens),
    ("unnormalized_text", normalize_text),
    ("empty_content", drop_empty),
    ("consecutive_same_role", merge_consecutive),
    ("system_not_first", move_system_first),
    ("assistant_first", drop_leading_assistant),
    ("trailing_non_assistant", drop_trailing),
]
_REPLY_FIXES: dict[str, FixStep] = {
    "role_marker_in_content": cut_at_role_marker,
    "special_token_text": remove_special_tokens,
    "unnormalized_text": normalize_text,
}


def apply_fixes(
    chat: ChatExample, line: int | None, steps: list[FixStep], offset: int = 0
) -> tuple[ChatExample, list[Change]]:
    """Run fixes in order; every change's message index refers to the example as it was given."""
    origin: list[int | None] = list(range(offset, offset + len(chat.messages)))
    changes: list[Change] = []
    for step in steps:
        chat, done, kept = step(chat, line)
        for c in done:
            if c.message_index is not None:
                c.message_index = origin[c.message_index]
        if kept is not None:
            origin = [None if k is None else origin[k] for k in kept]
        changes.extend(done)
    return chat, changes


# What `template_rejects_conversation=fix` does before rendering again: the role orders templates
# refuse (Gemma's strict alternation, a reply with no prompt, a prompt with no reply).
_ACCEPT_FIXES: list[FixStep] = [merge_consecutive, drop_leading_assistant, drop_trailing]

Status = Literal["ok", "dropped", "failed"]


class Processor:
    """Applies one recipe to examples, one at a time."""

    def __init__(self, recipe: Recipe, table: ModelTable | None = None) -> None:
        check_recipe(recipe)
        self.recipe = recipe
        self.model: ModelInfo = (table or load_table()).resolve(recipe.model)
        self.accountant = Accountant.for_model(self.model)
        self.profile: ModelProfile | None = recipe.profile
        self._specials = special_strings(recipe.profile) if recipe.profile is not None else ()
        self._special_re = special_pattern(self._specials)
        self.seen: dict[bytes, int] = {}
        self._key_buffer = bytearray()  # content_key's, reused for every example
        self._actions = {code: recipe.policies.get(code) or info.default for code, info in CODES.items()}
        self._fixes = {code for code, act in self._actions.items() if act is Action.FIX}
        if recipe.train_on == "last":
            self._fixes.add("train_on_last")

    def action(self, code: str) -> Action:
        return self._actions[code]

    @property
    def rewrites(self) -> bool:
        """Whether an output can differ from its example as decoded (a fix, windows, a profile's
        rendering into per-turn examples); if not, a line's outputs are its example or nothing."""
        return bool(self._fixes) or self.profile is not None or self.action("over_token_limit") is Action.FIX

    def _lint(self, example: Example, line: int) -> list[Problem]:
        """lint, and with a profile its control-token strings spelled in content."""
        problems = lint(example, line)
        if self._specials:
            reported = {p.message_index for p in problems if p.code == "role_marker_in_content"}
            messages = (
                example.messages
                if isinstance(example, ChatExample)
                else [*example.input.messages, *example.preferred_output, *example.non_preferred_output]
            )
            problems += special_in_content(messages, line, self._specials, reported)
        return problems

    def process(self, record: Record) -> Outcome:
        line = record.line
        example = record.example
        problems = (
            record.problems + self._lint(example, line) if example is not None else list(record.problems)
        )
        failed = dropped = False
        for p in problems:
            act = self._actions[p.code]
            if example is None and act is not Action.DROP:
                act = Action.FAIL  # nothing usable was decoded: no fix or keep can make it writable
            p.action = act.value
            failed = failed or act is Action.FAIL
            dropped = dropped or act is Action.DROP
        if failed:
            return Outcome(line, "failed", problems, [], [])
        if dropped or example is None:
            return Outcome(line, "dropped", problems, [], [])

        changes = [c for c in record.cleaned if c.code is not None and self._actions[c.code] is Action.FIX]
        fixed = example
        if self._fixes:
            fixed = self._fix(example, line, changes)
            if fixed != example and not self._recheck(fixed, line, problems):
                failed = any(p.action == "fail" for p in problems)
                return Outcome(line, "failed" if failed else "dropped", problems, changes, [])

        if self.profile is None:
            outputs = self._budget(fixed, line, problems, changes)
        else:
            rendered = self._render(fixed, line, problems, changes)
            if isinstance(rendered, str):
                before = self._trained(example) if changes else None
                return Outcome(line, rendered, problems, changes, [], before)
            outputs = []
            for ex, view in rendered:
                part = self._budget(ex, line, problems, changes, view)
                if part is None:
                    outputs = None
                    break
                outputs.extend(part)
            if outputs is not None and len(rendered) > 1:  # number the outputs of this line in order
                for k, out in enumerate(outputs):
                    out.window = k
        trained_before = self._trained(example) if changes else None
        if outputs is None:
            return Outcome(line, "failed", problems, changes, [], trained_before)
        images = outputs[0].tokens.images if outputs else 0
        trained_after = sum(o.tokens.trained for o in outputs) if changes and outputs else None
        outputs, dup_failed = self._dedupe(outputs, line, problems)
        status: Status = "failed" if dup_failed else "ok" if outputs else "dropped"
        return Outcome(line, status, problems, changes, outputs, trained_before, images, trained_after)

    def _trained(self, example: Example) -> int:
        """Trained tokens of an example as given; with a profile, as it renders (0 when it cannot)."""
        if self.profile is None:
            return self.accountant.example(example).trained
        view = profile_view(self.profile, chat_of(example)).view
        return view.trained_tokens if view is not None else 0

    def _recheck(self, fixed: Example, line: int, problems: list[Problem]) -> bool:
        """Lint what the fixes made: a fix can leave an example the provider would still reject
        (dropping the only assistant turn, emptying a text). What is new, or still fails, is
        reported "after fixes"; False when the example cannot be written."""
        reported = {p.code for p in problems}
        ok = True
        for q in self._lint(fixed, line):
            act = self._actions[q.code]
            if act is Action.FIX:  # the one round of fixes did not resolve it
                act = Action.FAIL if q.severity == "error" else Action.KEEP
            if act is Action.KEEP and q.code in reported:
                continue
            q.message = f"after fixes, {q.message}"
            q.action = act.value
            problems.append(q)
            ok = ok and act is Action.KEEP
        return ok

    def _fix(self, example: Example, line: int, changes: list[Change]) -> Example:
        """Every fix the recipe asks for, in a fixed order; fixes with nothing to do change nothing."""
        pattern = self._special_re

        def cut_specials(chat: ChatExample, line: int | None) -> Fixed:
            assert pattern is not None
            return cut_at_special_string(chat, line, pattern)

        def with_specials(fixes: list[tuple[str, FixStep]]) -> list[FixStep]:
            steps: list[FixStep] = []
            for code, fix in fixes:
                if code in self._fixes:
                    steps.append(fix)
                    if code == "role_marker_in_content" and pattern is not None:
                        steps.append(cut_specials)  # the profile's control tokens, spelled in content
            return steps

        steps = with_specials(_CHAT_FIXES)
        prompt = self.recipe.system_prompt
        if "no_system_message" in self._fixes and prompt:
            steps.append(lambda chat, line: insert_system(chat, line, prompt))
        if isinstance(example, ChatExample):
            if self.recipe.train_on == "last":
                steps.append(train_last_only)
            fixed, done = apply_fixes(example, line, steps)
            changes.extend(done)
            return fixed
        # a preference example: the prompt gets every fix, each reply the text fixes
        chat, done = apply_fixes(example.input, line, steps)
        changes.extend(done)
        offset = len(example.input.messages)
        reply_steps = with_specials(list(_REPLY_FIXES.items()))
        replies: list[list[Message]] = []
        for reply in (example.preferred_output, example.non_preferred_output):
            fixed_reply, done = apply_fixes(ChatExample(messages=reply), line, reply_steps, offset)
            changes.extend(done)
            replies.append(fixed_reply.messages)
        return PreferenceExample(chat, replies[0], replies[1])

    # -- with a model profile --------------------------------------------------------------------

    def _render(
        self, example: Example, line: int, problems: list[Problem], changes: list[Change]
    ) -> list[tuple[Example, TrainingView]] | Status:
        """The example as the profile renders it (several, when expanded per turn), its findings
        added to `problems` with their policies' actions; or what became of it when it cannot be
        written ("failed" or "dropped")."""
        assert self.profile is not None
        result = profile_view(self.profile, chat_of(example))
        if result.view is None:
            accepted = self._accept(example, result.findings, line, problems, changes)
            if isinstance(accepted, str):
                return accepted
            example, result = accepted
        status: Status = "ok"
        expand = False
        for f in result.findings:
            p = finding_problem(f, line)
            act = self._actions[f.code]
            if act is Action.FIX and not isinstance(example, ChatExample):
                act = Action.KEEP  # a preference example is not split into turns
            p.action = act.value
            problems.append(p)
            if act is Action.FAIL:
                status = "failed"
            elif act is Action.DROP and status == "ok":
                status = "dropped"
            expand = expand or (act is Action.FIX and f.code == "template_rewrites_history")
        if status != "ok":
            return status
        assert result.view is not None
        if not expand or not isinstance(example, ChatExample):
            return [(example, result.view)]
        return self._expand(example, line, problems, changes, {f.code for f in result.findings})

    def _accept(
        self,
        example: Example,
        findings: list[Finding],
        line: int,
        problems: list[Problem],
        changes: list[Change],
    ) -> tuple[ChatExample, ProfileResult] | Status:
        """The template raised: report it with the template's own message, and under `fix` merge,
        drop and render again, keeping the example only if the template then accepts it."""
        assert self.profile is not None
        p = _rejection(findings, line)
        act = self._actions["template_rejects_conversation"]
        p.action = act.value
        problems.append(p)
        if act is Action.DROP:
            return "dropped"
        if act is Action.FAIL:
            return "failed"
        if not isinstance(example, ChatExample):
            p.action = Action.FAIL.value
            p.message += " (a preference example is not reordered: its replies must follow its prompt)"
            return "failed"
        fixed, done = apply_fixes(example, line, _ACCEPT_FIXES)
        again = profile_view(self.profile, fixed) if done else None
        if again is None or again.view is None:
            q = _rejection(again.findings if again is not None else findings, line)
            if done:
                q.message = f"after fixes ({', '.join(sorted({c.kind for c in done}))}), {q.message}"
            else:
                q.message = (
                    f"no fix applies (no same-role run, leading assistant or trailing user): {q.message}"
                )
            q.action = Action.FAIL.value
            problems.append(q)
            return "failed"
        for c in done:
            c.code = "template_rejects_conversation"
        changes.extend(done)
        if not self._recheck(fixed, line, problems):
            return "failed" if any(q.action == "fail" for q in problems) else "dropped"
        return fixed, again

    def _expand(
        self,
        example: ChatExample,
        line: int,
        problems: list[Problem],
        changes: list[Change],
        reported: set[str],
    ) -> list[tuple[Example, TrainingView]] | Status:
        """`template_rewrites_history=fix`: one example per assistant turn, each the conversation up
        to that turn with that turn alone trained, rendered as inference would see it."""
        assert self.profile is not None
        parts = expand_per_turn(example)
        out: list[tuple[Example, TrainingView]] = []
        for k, part in enumerate(parts):
            result = profile_view(self.profile, part)
            if result.view is None:
                q = _rejection(result.findings, line)
                q.message = f"after expand_per_turn, turn {k + 1} of {len(parts)}: {q.message}"
                q.action = Action.FAIL.value
                problems.append(q)
                return "failed"
            for f in result.findings:
                if f.code in reported and f.code != "template_rewrites_history":
                    continue  # already reported on the whole conversation
                q = finding_problem(f, line)
                act = self._actions[f.code]
                if act is Action.FIX:  # the one round of fixes did not resolve it
                    act = Action.KEEP
                q.message = f"after expand_per_turn, turn {k + 1} of {len(parts)}: {q.message}"
                q.action = act.value
                problems.append(q)
                reported.add(f.code)
                if act is not Action.KEEP:
                    return "failed" if act is Action.FAIL else "dropped"
            out.append((part, result.view))
        if not out:
            return "dropped"
        changes.append(
            Change(
                "expand_per_turn",
                "template_rewrites_history",
                line,
                None,
                f"expanded into {len(out)} example(s), one per trained assistant turn, each the "
                "conversation up to that turn with only that turn trained",
            )
        )
        return out

    def _budget(
        self,
        example: Example,
        line: int,
        problems: list[Problem],
        changes: list[Change],
        view: TrainingView | None = None,
    ) -> list[OutputExample] | None:
        """The example against the model's per-example limit; `view`: as a profile renders it, so
        the profile's tokens are what counts."""
        limit = self.model.max_tokens
        tokens = self.accountant.example(example) if view is None else tokens_of(view, chat_of(example))
        if tokens.billed <= limit:
            return [OutputExample(line, None, example, tokens, view)]
        if view is None:
            tokens = self.accountant.example(example, detail=True)
            lost = truncation_loss(tokens, limit)
            what = f"the example has {tokens.billed} tokens, over {self.model.name}'s limit of {limit}"
        else:
            assert self.profile is not None
            lost = truncation_loss_of(view, limit)
            what = (
                f"the example has {tokens.billed} tokens as {self.profile.name} renders it, over the "
                f"limit of {limit} ({self.model.name}'s)"
            )
        p = problem(
            "over_token_limit",
            f"{what}; truncation from the end would lose {lost} of its {tokens.trained} trained tokens",
            line,
        )
        p.action = self._actions["over_token_limit"].value
        problems.append(p)
        if p.action == "fail":
            return None
        if p.action == "drop":
            return []
        if p.action == "fix" and not isinstance(example, ChatExample):
            p.action = "keep"  # windows are for chat examples; a DPO example is sent as it is
        if p.action == "keep" or not isinstance(example, ChatExample) or tokens.per_message is None:
            return [OutputExample(line, None, example, tokens, view)]
        fixed_cost = REPLY_PRIMING + tokens.tools if view is None else tokens.tools
        windows, done = split_windows(
            example, line, [c.billed for c in tokens.per_message], fixed_cost, limit
        )
        changes.extend(done)
        if view is None:
            return [
                OutputExample(line, w, window, self.accountant.example(window))
                for w, window in enumerate(windows)
            ]
        assert self.profile is not None
        out: list[OutputExample] = []
        for w, window in enumerate(windows):
            result = profile_view(self.profile, window)
            if result.view is None:
                q = _rejection(result.findings, line)
                q.message = f"after over_token_limit's windows, window {w + 1}: {q.message}"
                q.action = Action.FAIL.value
                problems.append(q)
                return None
            out.append(OutputExample(line, w, window, tokens_of(result.view, window), result.view))
        return out

    def _dedupe(
        self, outputs: list[OutputExample], line: int, problems: list[Problem]
    ) -> tuple[list[OutputExample], bool]:
        """The outputs that are not exact duplicates of earlier ones (by content hash); True: fail."""
        kept: list[OutputExample] = []
        for out in outputs:
            digest = content_key(out.example, self._key_buffer)
            first = self.seen.get(digest)
            if first is None:
                self.seen[digest] = line
                kept.append(out)
                continue
            p = problem("duplicate_example", f"the example duplicates line {first}", line)
            p.action = self._actions["duplicate_example"].value
            problems.append(p)
            if p.action == "fail":
                return [], True
            if p.action == "keep":
                kept.append(out)
        return kept, False


_key_encoder = msgspec.json.Encoder()


def _rejection(findings: list[Finding], line: int) -> Problem:
    """The template's refusal as a problem, in its own words."""
    f = next((f for f in findings if f.code == "template_rejects_conversation"), None)
    if f is None:
        return problem(
            "template_rejects_conversation", "the chat template cannot render the conversation", line
        )
    return finding_problem(f, line)


def content_key(example: Example, buffer: bytearray | None = None) -> bytes:
    """A 128-bit key of an example's normalized content (its canonical JSON): equal for exact
    duplicates, whatever the whitespace or key order of the lines they came from. xxh3-128 is
    not cryptographic, but accidental collisions are what matter here, and it is ten times
    cheaper than SHA-256 at a hash per example. With `buffer` (one caller's, reused) the JSON
    is encoded into it rather than into a new bytes object: the same key, at half the cost."""
    if buffer is None:
        return xxhash.xxh3_128_digest(_key_encoder.encode(example))
    _key_encoder.encode_into(example, buffer)
    return xxhash.xxh3_128_digest(buffer)


class Stats(msgspec.Struct):
    min: float
    p10: float
    median: float
    mean: float
    p90: float
    max: float


def stats(values: list[int]) -> Stats | None:
    if not values:
        return None
    ordered = sorted(values)

    def q(f: float) -> float:
        return float(ordered[min(len(ordered) - 1, int(f * (len(ordered) - 1) + 0.5))])

    return Stats(
        float(ordered[0]),
        q(0.1),
        float(statistics.median(ordered)),
        round(statistics.fmean(ordered), 2),
        q(0.9),
        float(ordered[-1]),
    )


class Histogram(msgspec.Struct):
    """Counts of values in bins `[edges[i], edges[i + 1])`: one more edge than counts."""

    edges: list[float]
    counts: list[int]


def _nice_width(raw: float) -> int:
    """The smallest of 1, 2, 5, 10, 20, 50, ... that is at least `raw`."""
    scale = 1
    while True:
        for step in (1, 2, 5):
            if step * scale >= raw:
                return step * scale
        scale *= 10


def histogram(values: Sequence[int], bins: int = 30) -> Histogram:
    """At most `bins` bins of equal integer width (1, 2 or 5 times a power of ten), the first
    edge a multiple of the width, so axis labels are round numbers. Empty values: no bins."""
    if not values:
        return Histogram([], [])
    lo, hi = min(values), max(values)
    width = _nice_width((hi - lo + 1) / max(1, bins))
    while True:
        start = math.floor(lo / width) * width
        n = (hi - start) // width + 1
        if n <= max(1, bins):
            break
        width = _nice_width(width + 1)
    counts = [0] * n
    for v in values:
        counts[(v - start) // width] += 1
    return Histogram([float(start + i * width) for i in range(n + 1)], counts)


class TokenTotals(msgspec.Struct):
    billed_total: int
    trained_total: int
    billable_total: int  # per epoch: each example capped at the model's limit
    billed_per_example: Stats | None
    trained_per_example: Stats | None
    messages_per_example: Stats | None


class ExampleDetail(msgspec.Struct):
    line: int
    window: int | None
    status: str
    billed_tokens: int
    trained_tokens: int


class ProblemSample(msgspec.Struct):
    """One finding of a group: `line` is the example's 1-based line (None: about the file),
    `message_index` the 0-based index of its message (None: about the whole example)."""

    line: int | None
    message_index: int | None
    message: str


class ProblemGroup(msgspec.Struct):
    """Every finding of one code that its policy handled the same way, counted once: a file with
    2,000 examples without a system message gets one entry, not 2,000. The full list of
    findings is the report's `problems_detail`, given with `per_example`."""

    code: str
    severity: Severity
    action: str | None  # what the policy did: keep | fix | drop | fail
    count: int
    message: str  # the first finding's
    lines: list[int]  # the 1-based lines of its first findings (at most MAX_PROBLEM_SAMPLES), as found
    samples: list[ProblemSample]  # the first MAX_PROBLEM_MESSAGES findings, each with its message


class ProblemGroups:
    """Findings folded into their groups as they arrive, so what a run keeps of them is bounded
    by the number of codes, not of examples (every finding is kept only for `problems_detail`)."""

    def __init__(self) -> None:
        self._by: dict[tuple[str, str | None], ProblemGroup] = {}

    def add(self, p: Problem) -> None:
        g = self._by.get((p.code, p.action))
        if g is None:
            g = self._by[(p.code, p.action)] = ProblemGroup(
                p.code, p.severity, p.action, 0, p.message, [], []
            )
        g.count += 1
        if p.line is not None and len(g.lines) < MAX_PROBLEM_SAMPLES and p.line not in g.lines[-1:]:
            g.lines.append(p.line)
        if len(g.samples) < MAX_PROBLEM_MESSAGES:
            g.samples.append(ProblemSample(p.line, p.message_index, p.message))

    def failing(self) -> bool:
        """Some finding's policy is fail."""
        return any(action == "fail" for _code, action in self._by)

    def sorted(self, extra: Iterable[Problem] = ()) -> list[ProblemGroup]:
        """The groups with `extra` folded in, errors first, then by code; copies, so these groups
        go on folding unchanged."""
        out = ProblemGroups()
        out._by = {
            k: msgspec.structs.replace(g, lines=list(g.lines), samples=list(g.samples))
            for k, g in self._by.items()
        }
        for p in extra:
            out.add(p)
        return sorted(out._by.values(), key=lambda g: (g.severity != "error", g.code, g.action or ""))


def group_problems(problems: Iterable[Problem]) -> list[ProblemGroup]:
    """Findings grouped by (code, action): errors first, then by code."""
    groups = ProblemGroups()
    for p in problems:
        groups.add(p)
    return groups.sorted()


class FixEffect(msgspec.Struct):
    """What the fixes did to trained tokens, measured on the same examples: those the fixes
    changed and kept, before and after fixing (every window of an example split into windows),
    before duplicates are dropped and before any train/validation split."""

    examples: int
    trained_before: int
    trained_after: int


class BuildInfo(msgspec.Struct, kw_only=True):
    """Where a build's report comes from: the job, its dataset, its recipe and when it was asked for."""

    job_id: str
    dataset_id: str
    created_at: str  # the job's creation, ISO 8601 UTC: the same on every redelivery of the finalize
    recipe: Recipe
    profile: str | None = None  # the recipe's model profile, as "name@content_hash"

    def __post_init__(self) -> None:
        # A profile is files, not wire data: the build names it, and its recipe is kept without it.
        if self.recipe.profile is not None:
            self.profile = profile_ref(self.recipe.profile)
            self.recipe = msgspec.structs.replace(self.recipe, profile=None)


def profile_ref(profile: ModelProfile) -> str:
    """How a report names a profile: its name and the content hash that identifies it."""
    return f"{profile.name}@{profile.content_hash}"


class Report(msgspec.Struct):
    """`problems` groups the findings (see ProblemGroup); `problems_detail` lists every one, with
    `per_example`. The token totals and `examples_out` are those of the training file; a build
    with a validation split says in `split` what went where."""

    ok: bool
    format: str | None
    model: str
    examples: int
    examples_out: int
    examples_ok: int
    examples_dropped: int
    examples_failed: int
    problems: list[ProblemGroup]
    problem_counts: dict[str, int]
    tokens: TokenTotals
    default_epochs: int
    estimated_cost_usd: float | None
    price_per_1m: float | None
    fixes: dict[str, int]
    changes: list[Change]
    fix_effect: FixEffect
    notes: list[str]
    examples_detail: list[ExampleDetail] | None = None
    problems_detail: list[Problem] | None = None
    split: SplitReport | None = None
    build: BuildInfo | None = None
    # with a model profile, "name@content_hash": tokens are the profile's and nothing is billed
    profile: str | None = None


class Summary:
    """Folds outcomes into a Report."""

    def __init__(self, processor: Processor, *, per_example: bool = False) -> None:
        self.processor = processor
        self.per_example = per_example
        self.n = self.n_ok = self.n_dropped = self.n_failed = 0
        self.groups = ProblemGroups()
        self.problems: list[Problem] = []  # every finding, kept only with per_example
        self.counts: Counter[str] = Counter()
        self.changes: list[Change] = []
        self.fixes: Counter[str] = Counter()
        self.billed: list[int] = []
        self.trained: list[int] = []
        self.messages: list[int] = []
        self.fixed = FixEffect(0, 0, 0)
        self.detail: list[ExampleDetail] = []
        self.images = 0
        self.format: str | None = None

    def add(self, outcome: Outcome) -> None:
        self.n += 1
        if outcome.status == "ok":
            self.n_ok += 1
        elif outcome.status == "dropped":
            self.n_dropped += 1
        else:
            self.n_failed += 1
        if outcome.problems:
            self.add_problems(outcome.problems)
        if outcome.changes:
            self.changes.extend(outcome.changes)
            self.fixes.update(c.kind for c in outcome.changes)
        add_fix_effect(self.fixed, outcome)
        self.images += outcome.images
        for out in outcome.outputs:
            self.billed.append(out.tokens.billed)
            self.trained.append(out.tokens.trained)
            self.messages.append(out.tokens.messages)
            if self.per_example:
                self.detail.append(
                    ExampleDetail(out.line, out.window, "ok", out.tokens.billed, out.tokens.trained)
                )
        if self.per_example and not outcome.outputs:
            self.detail.append(ExampleDetail(outcome.line, None, outcome.status, 0, 0))

    def add_problems(self, problems: list[Problem]) -> None:
        counts, add = self.counts, self.groups.add
        for p in problems:  # one loop, no generator: most examples have a finding or two
            counts[p.code] += 1
            add(p)
        if self.per_example:
            self.problems.extend(problems)

    def histograms(self, bins: int = 30) -> dict[str, Histogram]:
        """Histograms of billed and trained tokens per output example, for the report's plots."""
        return {"billed": histogram(self.billed, bins), "trained": histogram(self.trained, bins)}

    def report(self, *, split: SplitReport | None = None, build: BuildInfo | None = None) -> Report:
        model = self.processor.model
        profile = self.processor.profile
        n_out = len(self.billed)
        file_problems: list[Problem] = []  # about the file as a whole, found only now
        if n_out < model.min_examples and profile is None:  # a provider's rule; a profile trains anywhere
            p = problem(
                "too_few_examples",
                f"the file would have {n_out} example(s), but {model.name} needs at least "
                f"{model.min_examples}",
            )
            p.action = self.processor.action("too_few_examples").value
            file_problems.append(p)
            self.counts["too_few_examples"] += 1
        epochs = default_epochs(n_out)
        billable = billable_tokens(self.billed, model.max_tokens)
        notes = []
        if self.images:
            notes.append(f"{self.images} image(s): image tokens are not counted (they depend on pixel sizes)")
        price = model.price_per_1m
        if profile is not None:
            price = None
            notes.append(
                f"tokens are {profile.name}'s ({profile.tokenizer.kind} tokenizer, template "
                f"{profile.template_sha256[:12]}): every token of the rendered sequence counts, nothing "
                "is billed; the limit is " + f"{model.name}'s {model.max_tokens:,}"
            )
            if n_out != self.n_ok:
                notes.append(f"{self.n_ok:,} example(s) kept became {n_out:,} output example(s)")
        return Report(
            ok=not (self.groups.failing() or any(p.action == "fail" for p in file_problems)),
            format=self.format,
            model=model.name,
            examples=self.n,
            examples_out=n_out,
            examples_ok=self.n_ok,
            examples_dropped=self.n_dropped,
            examples_failed=self.n_failed,
            problems=self.groups.sorted(file_problems),
            problem_counts=dict(sorted(self.counts.items())),
            tokens=TokenTotals(
                billed_total=sum(self.billed),
                trained_total=sum(self.trained),
                billable_total=billable,
                billed_per_example=stats(self.billed),
                trained_per_example=stats(self.trained),
                messages_per_example=stats(self.messages),
            ),
            default_epochs=epochs,
            estimated_cost_usd=estimated_cost(billable, epochs, price),
            price_per_1m=price,
            fixes=dict(sorted(self.fixes.items())),
            changes=self.changes,
            fix_effect=msgspec.structs.replace(self.fixed),
            notes=notes,
            examples_detail=self.detail if self.per_example else None,
            problems_detail=[*self.problems, *file_problems] if self.per_example else None,
            split=split,
            build=build,
            profile=profile_ref(profile) if profile is not None else None,
        )


def add_fix_effect(effect: FixEffect, outcome: Outcome) -> None:
    """Count an outcome in `effect` when fixes changed it and it was kept."""
    if outcome.trained_before is not None and outcome.trained_after is not None:
        effect.examples += 1
        effect.trained_before += outcome.trained_before
        effect.trained_after += outcome.trained_after


def run(
    lines: Iterable[bytes],
    recipe: Recipe,
    *,
    per_example: bool = False,
    sink: Callable[[OutputExample], None] | None = None,
    table: ModelTable | None = None,
) -> Report:
    """Validate (and with `sink`, write) a whole input under one recipe."""
    return summarize(lines, recipe, per_example=per_example, sink=sink, table=table).report()


def summarize(
    lines: Iterable[bytes],
    recipe: Recipe,
    *,
    per_example: bool = False,
    sink: Callable[[OutputExample], None] | None = None,
    table: ModelTable | None = None,
) -> Summary:
    """`run`, but the Summary itself: its report and its histograms."""
    processor = Processor(recipe, table)
    summary = Summary(processor, per_example=per_example)

    def detected(fmt: Format) -> None:
        summary.format = fmt

    process = processor.process
    add = summary.add
    for record in read_records(lines, recipe.format, on_format=detected):
        outcome = process(record)
        add(outcome)
        if sink is not None:
            for out in outcome.outputs:
                sink(out)
    return summary
