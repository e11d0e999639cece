"""Model profiles: any chat model's own tokenizer and chat template, rendered as the trainers render it,
with loss masks from character spans (not marker strings) and findings about irregular conversations.

- `loading`: a profile from a HF folder or uploaded files (ProfileError codes for every refusal);
- `tokenizers`: HF tokenizer.json and tiktoken rank files (presets llama3, qwen2, qwen3, qwen3_5,
  o200k_harmony), with character offsets per token;
- `jinja_env` / `rendering`: the template rendered as transformers' apply_chat_template does, under
  a time and size budget (TemplateRaised);
- `attribution` / `profile_view`: every character attributed to a message and a part, mapped to
  tokens; the mask rule is documented in `profile_view`'s docstring;
- `per_turn`, `check`: expand_per_turn, and the fixed irregular conversations of `templates check`.

Cost: one render and one tokenization per example, plus one prefix render per trained turn that is
not the last for templates that probes show can rewrite history (Qwen3, gpt-oss).
"""

from service.core.profiles.check import CHECK_CASES, CheckRow, check_profile
from service.core.profiles.errors import ProfileError, TemplateRaised
from service.core.profiles.loading import PROFILE_FILE_MAX, TEMPLATE_MAX, load_hf_dir, profile_from_files
from service.core.profiles.model import ModelProfile, TrainingRules
from service.core.profiles.per_turn import expand_per_turn
from service.core.profiles.profile_view import Finding, ProfileResult, profile_view
from service.core.profiles.rendering import Rendered, render_messages
from service.core.profiles.tokenizers import TIKTOKEN_PRESETS, ProfileTokenizer

__all__ = [
    "CHECK_CASES",
    "PROFILE_FILE_MAX",
    "TEMPLATE_MAX",
    "TIKTOKEN_PRESETS",
    "CheckRow",
    "Finding",
    "ModelProfile",
    "ProfileError",
    "ProfileResult",
    "ProfileTokenizer",
    "Rendered",
    "TemplateRaised",
    "TrainingRules",
    "check_profile",
    "expand_per_turn",
    "load_hf_dir",
    "profile_from_files",
    "profile_view",
    "render_messages",
]
