"""A model profile: a tokenizer, the model's own chat template and the rules for what carries loss."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
from dataclasses import dataclass, field
from typing import Any, Literal

import jinja2

from service.core.profiles.jinja_env import compile_template
from service.core.profiles.tokenizers import ProfileTokenizer


@dataclass(frozen=True)
class TrainingRules:
    train_eot: bool = True  # the end-of-turn token after trained content carries loss
    train_on: Literal["all", "last"] = "all"  # which assistant messages are trained (weight 0 always wins)
    mask_source: Literal["spans", "generation"] = "spans"  # "generation": the template's {% generation %}


@dataclass
class _Probes:
    """What rendering fixed probe conversations taught about a template (computed once per profile)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    values: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class ModelProfile:
    name: str
    tokenizer: ProfileTokenizer
    chat_template: str
    bos_token: str | None
    eos_token: str | None
    tokenizer_sha256: str
    template_sha256: str
    content_hash: str
    rules: TrainingRules = TrainingRules()
    # the named special tokens the template is given (bos_token, eos_token, pad_token, ...), as
    # transformers passes the tokenizer's special_tokens_map
    template_vars: dict[str, str] = field(default_factory=dict)
    tiktoken_preset: str | None = None
    tokenizer_config_sha256: str | None = None  # the added tokens it declares change tokenization
    _probes: _Probes = field(default_factory=_Probes, repr=False)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ModelProfile) and other.content_hash == self.content_hash

    def __hash__(self) -> int:
        return hash(self.content_hash)

    def with_rules(self, **changes: Any) -> ModelProfile:
        rules = dataclasses.replace(self.rules, **changes)
        return dataclasses.replace(
            self,
            rules=rules,
            content_hash=profile_hash(
                self.tokenizer_sha256,
                self.template_sha256,
                self.template_vars,
                self.tiktoken_preset,
                rules,
                self.tokenizer_config_sha256,
            ),
        )

    @property
    def compiled(self) -> jinja2.Template:
        return compile_template(self.chat_template, self.template_sha256)

    @property
    def encoding_label(self) -> str:
        return f"{self.tokenizer.kind}:{self.tokenizer_sha256[:12]}"


def profile_hash(
    tokenizer_sha256: str,
    template_sha256: str,
    template_vars: dict[str, str],
    tiktoken_preset: str | None,
    rules: TrainingRules,
    tokenizer_config_sha256: str | None = None,
) -> str:
    """Identifies a profile by what changes its output: the files, the special tokens, the rules."""
    payload = {
        "tokenizer_sha256": tokenizer_sha256,
        "template_sha256": template_sha256,
        "template_vars": template_vars,
        "tiktoken_preset": tiktoken_preset,
        "rules": dataclasses.asdict(rules),
        "tokenizer_config_sha256": tokenizer_config_sha256,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
