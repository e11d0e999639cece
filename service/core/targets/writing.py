"""Converting a pipeline's output examples for one target, as the CLI's `convert --to` and
`validate --target` do (the workers do the same per line in `workers/target_output.py`)."""

from __future__ import annotations

from collections.abc import Callable

from service.core.conversation import Example, PreferenceExample, chat_of
from service.core.pipeline import OutputExample, Recipe, Summary
from service.core.problems import CODES, Action, Problem
from service.core.targets.base import Policy, Target


def policy_of(recipe: Recipe) -> Policy:
    """The recipe's action for a code, else the code's default."""

    def act(code: str) -> Action:
        return Action(recipe.policies.get(code) or CODES[code].default)

    return act


class TargetSink:
    """Takes each output example, converts it for `target`, and hands its lines to `write`."""

    def __init__(
        self, target: Target, recipe: Recipe, write: Callable[[bytes], object] | None = None
    ) -> None:
        self.target = target
        self.recipe = recipe
        self.policy = policy_of(recipe)
        self.write = write
        self.problems: list[Problem] = []
        self.lines = 0
        self.failed = 0

    def example_for(self, example: Example) -> Example:
        """A chat-only target gets a preference example's conversation (prompt and preferred reply)."""
        if isinstance(example, PreferenceExample) and "preference" not in self.target.kinds:
            return chat_of(example)
        return example

    def __call__(self, out: OutputExample) -> None:
        done = self.target.convert(
            self.example_for(out.example),
            line=out.line,
            policy=self.policy,
            model=self.recipe.model,
            tokens=out.tokens.billed,
        )
        self.problems += done.problems
        self.failed += done.status == "failed"
        for line in done.lines:
            self.lines += 1
            if self.write is not None:
                self.write(line)

    def finish(self, summary: Summary) -> None:
        """The file-level checks, then every problem into the summary (so its report says them)."""
        self.problems += self.target.file_problems(self.lines, self.policy)
        summary.add_problems(self.problems)

    @property
    def ok(self) -> bool:
        return not self.failed and not any(p.action == Action.FAIL.value for p in self.problems)
