"""The two ways a model profile says no: at load time (bad files) and at render time (the template raised)."""

from __future__ import annotations

from typing import Literal

ProfileErrorCode = Literal[
    "template_syntax",
    "tokenizer_unloadable",
    "special_token_missing",
    "no_chat_template",
    "profile_too_large",
    "profile_files_missing",
]


class ProfileError(ValueError):
    """A profile's files cannot make a usable profile; `code` is stable, `message` names the file and rule."""

    def __init__(self, code: ProfileErrorCode, message: str) -> None:
        super().__init__(message)
        self.code: ProfileErrorCode = code
        self.message = message

    def __reduce__(self) -> tuple[type[ProfileError], tuple[str, str]]:  # picklable across Celery
        return (type(self), (self.code, self.message))


class TemplateRaised(Exception):
    """The chat template refused this conversation (its own `raise_exception`, a Jinja runtime error,
    or one of tuneset's guards against runaway templates). `message` is the template's own text."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __reduce__(self) -> tuple[type[TemplateRaised], tuple[str]]:
        return (type(self), (self.message,))
