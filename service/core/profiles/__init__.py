"""Model profiles: any chat model's own tokenizer and chat template, rendered as the trainers render it,
with loss masks from character spans (not marker strings) and findings about irregular conversations."""

from service.core.profiles.errors import ProfileError, TemplateRaised
from service.core.profiles.loading import PROFILE_FILE_MAX, TEMPLATE_MAX, load_hf_dir, profile_from_files
from service.core.profiles.model import ModelProfile, TrainingRules
from service.core.profiles.rendering import Rendered, render_messages
from service.core.profiles.tokenizers import TIKTOKEN_PRESETS, ProfileTokenizer

__all__ = [
    "PROFILE_FILE_MAX",
    "TEMPLATE_MAX",
    "TIKTOKEN_PRESETS",
    "ModelProfile",
    "ProfileError",
    "ProfileTokenizer",
    "Rendered",
    "TemplateRaised",
    "TrainingRules",
    "load_hf_dir",
    "profile_from_files",
    "render_messages",
]
