"""Model profiles: any chat model's own tokenizer and chat template, rendered as the trainers render it,
with loss masks from character spans (not marker strings) and findings about irregular conversations."""

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
