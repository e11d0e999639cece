"""Building a ModelProfile from the files a self-hosting team has: a HF model folder, or uploads.

Every refusal is a ProfileError naming the file and the rule: a template that does not parse, a
tokenizer file that does not load, a bos/eos token or a special token the template writes that
the vocabulary lacks, a file over its size limit, a missing file.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from service.core.profiles.errors import ProfileError
from service.core.profiles.jinja_env import compile_template, template_literals, template_sha256
from service.core.profiles.model import ModelProfile, TrainingRules, profile_hash
from service.core.profiles.tokenizers import (
    TIKTOKEN_PRESETS,
    HfTokenizer,
    ProfileTokenizer,
    TiktokenTokenizer,
    config_added_tokens,
    load_json,
    parse_rank_file,
    presets_for_rank_count,
    token_text,
)

PROFILE_FILE_MAX = 32 * 1024 * 1024  # bytes per tokenizer or tokenizer_config file
TEMPLATE_MAX = 256 * 1024  # bytes of chat template text

# The named special tokens transformers passes to every template (its special_tokens_map).
_NAMED_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# Spellings that are special tokens in every family that uses them: `<|eot_id|>`, `<｜User｜>`.
_SPECIAL_SHAPE = re.compile(r"<\|[^<>|\s]{1,64}\|>|<｜[^<>｜\s]{1,64}｜>")

_tok_lock = threading.Lock()
_tok_cache: OrderedDict[tuple[str, ...], ProfileTokenizer] = OrderedDict()
_TOK_CACHE_SIZE = 8


def _cached_tokenizer(key: tuple[str, ...], build: Any) -> ProfileTokenizer:
    with _tok_lock:
        hit = _tok_cache.get(key)
        if hit is not None:
            _tok_cache.move_to_end(key)
            return hit
    tok: ProfileTokenizer = build()
    with _tok_lock:
        _tok_cache[key] = tok
        while len(_tok_cache) > _TOK_CACHE_SIZE:
            _tok_cache.popitem(last=False)
    return tok


def _is_hf_file(filename: str, data: bytes) -> bool:
    lower = filename.lower()
    if lower.endswith(".json"):
        return True
    if lower.endswith((".model", ".tiktoken", ".tiktoken.gz", ".gz")):
        return False
    return data.lstrip()[:1] == b"{"


def _template_from_config(config: dict[str, Any]) -> str | None:
    value = config.get("chat_template")
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # [{name, template}, ...]: the "default" one, as transformers picks
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        chosen = named.get("default")
        return chosen if isinstance(chosen, str) else None
    return None


def _check_size(filename: str, data: bytes | str, limit: int) -> None:
    size = len(data.encode("utf-8")) if isinstance(data, str) else len(data)
    if size > limit:
        raise ProfileError("profile_too_large", f"{filename} is {size:,} bytes; the limit is {limit:,} bytes")


def _load_tokenizer(
    data: bytes, filename: str, sha: str, preset_name: str | None, config: dict[str, Any]
) -> tuple[ProfileTokenizer, str | None]:
    added = config_added_tokens(config)
    if _is_hf_file(filename, data):
        if preset_name is not None:
            raise ProfileError(
                "tokenizer_unloadable",
                f"tiktoken_preset {preset_name!r} applies to tiktoken rank files, not to {filename}",
            )
        key = ("hf", sha, *sorted(f"{c}:{s}" for _, c, s in added))

        def build_hf() -> ProfileTokenizer:
            tok = HfTokenizer.from_bytes(data, filename)
            tok.add_added_tokens((c, s) for _, c, s in added)
            return tok

        return _cached_tokenizer(key, build_hf), None
    ranks = parse_rank_file(data, filename)
    if preset_name is None:
        fits = presets_for_rank_count(len(ranks))
        if len(fits) != 1:
            which = f"presets {' and '.join(fits)} both fit" if fits else "no preset fits"
            raise ProfileError(
                "profile_files_missing",
                f"{filename} has {len(ranks):,} ranks and {which}: name its tiktoken_preset "
                f"({', '.join(TIKTOKEN_PRESETS)})",
            )
        preset_name = fits[0]
    preset = TIKTOKEN_PRESETS.get(preset_name)
    if preset is None:
        raise ProfileError(
            "tokenizer_unloadable",
            f"unknown tiktoken_preset {preset_name!r}; known: {', '.join(TIKTOKEN_PRESETS)}",
        )
    key = ("tiktoken", sha, preset.name, *sorted(f"{c}:{i}:{s}" for i, c, s in added))
    return _cached_tokenizer(key, lambda: TiktokenTokenizer(ranks, preset, added)), preset.name


def profile_from_files(
    *,
    name: str,
    tokenizer: bytes,
    tokenizer_filename: str,
    chat_template: str | None = None,
    tokenizer_config: bytes | None = None,
    tiktoken_preset: str | None = None,
    rules: TrainingRules = TrainingRules(),  # noqa: B008 - frozen, so a shared default is safe
) -> ModelProfile:
    """A profile from file contents (uploads, or a folder read by `load_hf_dir`)."""
    if not tokenizer:
        raise ProfileError("profile_files_missing", f"{tokenizer_filename or 'tokenizer'} is empty")
    _check_size(tokenizer_filename, tokenizer, PROFILE_FILE_MAX)
    config: dict[str, Any] = {}
    if tokenizer_config is not None:
        _check_size("tokenizer_config.json", tokenizer_config, PROFILE_FILE_MAX)
        config = load_json(tokenizer_config, "tokenizer_config.json")
    if chat_template is None:
        chat_template = _template_from_config(config)
    if chat_template is None:
        raise ProfileError(
            "no_chat_template",
            "no chat template: give chat_template.jinja, or a tokenizer_config.json with chat_template",
        )
    _check_size("chat template", chat_template, TEMPLATE_MAX)
    tpl_sha = template_sha256(chat_template)
    compile_template(chat_template, tpl_sha)  # template_syntax
    tok_sha = hashlib.sha256(tokenizer).hexdigest()
    config_sha = hashlib.sha256(tokenizer_config).hexdigest() if tokenizer_config is not None else None
    tok, preset_name = _load_tokenizer(tokenizer, tokenizer_filename, tok_sha, tiktoken_preset, config)

    template_vars: dict[str, str] = {}
    if preset_name is not None:
        preset = TIKTOKEN_PRESETS[preset_name]
        for key, value in (("bos_token", preset.bos_token), ("eos_token", preset.eos_token)):
            if value is not None:
                template_vars[key] = value
        template_vars.update(preset.extra)
    for key in _NAMED_TOKENS:
        if key in config:
            value = token_text(config[key])
            if value is None:
                template_vars.pop(key, None)
            else:
                template_vars[key] = value
    for key in ("bos_token", "eos_token"):
        value = template_vars.get(key)
        if value is not None and tok.token_to_id(value) is None:
            raise ProfileError(
                "special_token_missing",
                f"{key} {value!r} (tokenizer_config.json) is not in the vocabulary of {tokenizer_filename}",
            )
    missing = sorted(
        {
            m.group()
            for literal in template_literals(chat_template)
            for m in _SPECIAL_SHAPE.finditer(literal)
            if tok.token_to_id(m.group()) is None
        }
    )
    if missing:
        raise ProfileError(
            "special_token_missing",
            f"the chat template writes {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}, "
            f"not in the vocabulary of {tokenizer_filename}: is this the model's own tokenizer?",
        )
    return ModelProfile(
        name=name,
        tokenizer=tok,
        chat_template=chat_template,
        bos_token=template_vars.get("bos_token"),
        eos_token=template_vars.get("eos_token"),
        tokenizer_sha256=tok_sha,
        template_sha256=tpl_sha,
        content_hash=profile_hash(tok_sha, tpl_sha, template_vars, preset_name, rules, config_sha),
        rules=rules,
        template_vars=template_vars,
        tiktoken_preset=preset_name,
        tokenizer_config_sha256=config_sha,
    )


def load_hf_dir(
    path: str | Path,
    *,
    name: str | None = None,
    rules: TrainingRules = TrainingRules(),  # noqa: B008
) -> ModelProfile:
    """A profile from a local HF model folder: tokenizer.json (or a tiktoken-format tokenizer.model /
    *.tiktoken), tokenizer_config.json, chat_template.jinja (or chat_template.json)."""
    root = Path(path)
    if not root.is_dir():
        raise ProfileError("profile_files_missing", f"{root} is not a directory")
    candidates = [root / "tokenizer.json", root / "tokenizer.model", *sorted(root.glob("*.tiktoken"))]
    tok_file = next((p for p in candidates if p.is_file()), None)
    if tok_file is None:
        raise ProfileError(
            "profile_files_missing", f"{root} has no tokenizer.json, tokenizer.model or *.tiktoken file"
        )

    def read(p: Path, limit: int) -> bytes:
        size = p.stat().st_size
        if size > limit:
            raise ProfileError(
                "profile_too_large", f"{p.name} is {size:,} bytes; the limit is {limit:,} bytes"
            )
        return p.read_bytes()

    config_path = root / "tokenizer_config.json"
    config = read(config_path, PROFILE_FILE_MAX) if config_path.is_file() else None
    template: str | None = None
    if (root / "chat_template.jinja").is_file():
        template = read(root / "chat_template.jinja", TEMPLATE_MAX).decode("utf-8", errors="replace")
    elif (root / "chat_template.json").is_file():
        value = load_json(read(root / "chat_template.json", TEMPLATE_MAX), "chat_template.json")
        if isinstance(value.get("chat_template"), str):
            template = value["chat_template"]
    special_map = root / "special_tokens_map.json"
    if special_map.is_file():
        specials = load_json(read(special_map, PROFILE_FILE_MAX), "special_tokens_map.json")
        merged = load_json(config, "tokenizer_config.json") if config is not None else {}
        for key in ("bos_token", "eos_token"):
            if key not in merged and key in specials:
                merged[key] = specials[key]
        config = json.dumps(merged).encode()
    return profile_from_files(
        name=name or root.name,
        tokenizer=read(tok_file, PROFILE_FILE_MAX),
        tokenizer_filename=tok_file.name,
        chat_template=template,
        tokenizer_config=config,
        rules=rules,
    )
