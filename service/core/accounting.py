"""Token accounting as the provider bills it, what is trained, default epochs and cost.

Billed tokens follow the OpenAI cookbook (`num_tokens_from_messages`, reproduced exactly on its
reference conversations): 3 tokens per message, the tokens of every string value (role,
content, name), 1 more when `name` is present, and 3 for the reply priming. The cookbook does
not cover tool traffic; tuneset counts a `tool_call_id` like a name (1 + its tokens) and each
tool call as 2 + the tokens of its name and arguments, an estimate; tool definitions add the cookbook's
`num_tokens_for_tools` overhead. Images are not counted (their cost depends on pixels the
file does not carry): the report says so.

Trained tokens are the tokens that carry loss: the content (and tool calls) of every assistant
message with weight 1, plus its end-of-turn token. The training view marks exactly these.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from typing import Any

import msgspec
import tiktoken

from service.core.conversation import ChatExample, Message, PreferenceExample, Tool, image_count, text_of
from service.core.encodings import CL100K_PATTERN, O200K_PATTERN, get_encoding
from service.core.models import ModelInfo
from service.core.tokens import CHUNK_CHARS, count_text

TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING = 3
END_OF_TURN = 1  # the one token that closes a message (<|end|> / <|im_end|>), part of the 3 above
TOKENS_PER_CALL = 2  # delimiters around a tool call's name and arguments (an estimate: not published)

# cookbook num_tokens_for_tools constants (func_init depends on the model family)
PROP_INIT, PROP_KEY, ENUM_INIT, ENUM_ITEM, FUNC_END = 3, 3, -3, 3, 12

TARGET_EPOCHS, MIN_TARGET_EXAMPLES, MAX_TARGET_EXAMPLES = 3, 100, 25000
MIN_DEFAULT_EPOCHS, MAX_DEFAULT_EPOCHS = 1, 25


@dataclass(frozen=True)
class MessageCount:
    billed: int
    trained: int


class ExampleTokens(msgspec.Struct):
    billed: int
    trained: int
    messages: int
    per_message: list[MessageCount] | None = None
    tools: int = 0
    images: int = 0


SYSTEM_CACHE_SIZE = 256

# Texts that neither start nor end with whitespace, joined with " \n", are split by the o200k
# and cl100k pre-tokenizers exactly where they were joined: no piece of either pattern grows
# over a space into a newline, and " \n" is a piece of its own. One tokenizer call then counts
# every text of a role, plus the separators' fixed count, which is exact and cheaper than a call
# per message on short messages. Other encodings' patterns are not analysed: a call per text.
JOIN = " \n"
_NO_SPECIAL: frozenset[str] = frozenset()
_JOINABLE_PATTERNS = (O200K_PATTERN, CL100K_PATTERN)


class Accountant:
    """Counts tokens for one encoding.

    Counts of roles, names and system prompts are cached: a dataset repeats one product's
    system prompt on every conversation, and re-tokenizing it would be most of the work.
    Nothing else is cached, so the cost of a file is the cost of its distinct text."""

    def __init__(self, encoding: str | tiktoken.Encoding, func_init: int = 7) -> None:
        self.enc = get_encoding(encoding) if isinstance(encoding, str) else encoding
        self.func_init = func_init
        self._small: dict[str, int] = {}
        self._system: dict[str, int] = {}
        self._core_encode = self.enc._core_bpe.encode_ordinary
        # The same ids as encode_ordinary when no special token is allowed, in a buffer of uint32
        # rather than a list of Python ints: on a few hundred tokens, a tenth cheaper.
        self._core_buffer = self.enc._core_bpe.encode_to_tiktoken_buffer
        self._join_tokens = (
            len(self.enc.encode_ordinary(JOIN)) if self.enc._pat_str in _JOINABLE_PATTERNS else None
        )
        # With `keep_ids`, the ids of each plain text `chat` tokenizes, for the last example only:
        # a build's token pass under a template of the same encoding takes them instead of
        # tokenizing the text again (`workers.template_documents.TemplateDocuments.reuse`).
        self.keep_ids = False
        self.kept: dict[str, array[int]] = {}

    @classmethod
    def for_model(cls, model: ModelInfo) -> Accountant:
        return cls(model.encoding, model.func_init)

    def count(self, text: str) -> int:
        return count_text(self.enc, text)

    def _small_count(self, text: str) -> int:
        n = self._small.get(text)
        if n is None:
            n = count_text(self.enc, text)
            if len(self._small) < 4096:
                self._small[text] = n
        return n

    def _system_count(self, text: str) -> int:
        n = self._system.get(text)
        if n is None:
            n = count_text(self.enc, text)
            if len(self._system) >= SYSTEM_CACHE_SIZE:
                self._system.clear()
            self._system[text] = n
        return n

    def _body(self, m: Message) -> int:
        """Tokens of what a message says: its text and its tool calls (not its role or name)."""
        content = m.content
        if content is None:
            body = 0
        elif isinstance(content, str):
            body = self._system_count(content) if m.role == "system" else count_text(self.enc, content)
        else:
            body = self.count(text_of(m))
        for call in m.tool_calls or ():
            body += (
                TOKENS_PER_CALL + self._small_count(call.function.name) + self.count(call.function.arguments)
            )
        if m.function_call is not None:
            fc = m.function_call
            body += TOKENS_PER_CALL + self._small_count(fc.name) + self.count(fc.arguments)
        return body

    def _name_tokens(self, m: Message) -> int:
        """A name, or a tool_call_id, costs 1 plus its tokens."""
        n = 0
        if m.name is not None:
            n += TOKENS_PER_NAME + self._small_count(m.name)
        if m.tool_call_id is not None:
            n += TOKENS_PER_NAME + self._small_count(m.tool_call_id)
        return n

    def message(self, m: Message) -> MessageCount:
        body = self._body(m)
        billed = TOKENS_PER_MESSAGE + self._small_count(m.role) + body + self._name_tokens(m)
        trained = body + END_OF_TURN if m.role == "assistant" and m.weight != 0 else 0
        return MessageCount(billed, trained)

    def _plain(self, text: str) -> int:
        """Tokens of a string of at most CHUNK_CHARS."""
        try:
            return len(self._core_encode(text))
        except UnicodeEncodeError:  # lone surrogates: the wrapper's own retry
            return len(self.enc.encode_ordinary(text))

    def _kept(self, text: str) -> int:
        """Tokens of a string of at most CHUNK_CHARS, its ids kept: `encode_text`'s ids of it, as
        int32 straight from the tokenizer's buffer (no list of Python ints: a build's token pass
        copies them into its arrays as they are, a fifth cheaper on short messages)."""
        ids: array[int] = array("i")
        try:
            ids.frombytes(memoryview(self._core_buffer(text, _NO_SPECIAL)).cast("B"))  # ids < 2**31
        except UnicodeEncodeError:
            ids.extend(self.enc.encode_ordinary(text))
        self.kept[text] = ids
        return len(ids)

    def _joined(self, texts: list[str]) -> int:
        """The tokens of stripped, non-empty texts of at most CHUNK_CHARS each, with one call (see JOIN)."""
        if len(texts) == 1:
            return self._plain(texts[0])
        try:
            ids = memoryview(self._core_buffer(JOIN.join(texts), _NO_SPECIAL))
        except UnicodeEncodeError:
            return sum(map(self._plain, texts))
        return ids.nbytes // ids.itemsize - (len(texts) - 1) * (self._join_tokens or 0)

    def tools(self, tools: list[Tool] | None, functions: Any = None) -> int:
        """The cookbook's `num_tokens_for_tools`, tolerant of missing descriptions and types."""
        defs = [t.function for t in tools or []] + list(functions or [])
        if not defs:
            return 0
        total = 0
        for f in defs:
            total += self.func_init
            desc = (f.description or "").removesuffix(".") if f.description else ""
            total += self.count(f"{f.name}:{desc}")
            props = (f.parameters or {}).get("properties") or {}
            if isinstance(props, dict) and props:
                total += PROP_INIT
                for key, raw in props.items():
                    total += PROP_KEY
                    spec = raw if isinstance(raw, dict) else {}
                    enum = spec.get("enum")
                    if isinstance(enum, list):
                        total += ENUM_INIT
                        for item in enum:
                            total += ENUM_ITEM + self.count(str(item))
                    p_desc = str(spec.get("description", "")).removesuffix(".")
                    total += self.count(f"{key}:{spec.get('type', '')}:{p_desc}")
        return total + FUNC_END

    def chat(self, example: ChatExample, *, detail: bool = False) -> ExampleTokens:
        """Billed and trained tokens; with `detail`, per message too (for truncation and windows)."""
        images = 0
        if detail:
            per = [self.message(m) for m in example.messages]
            billed = REPLY_PRIMING + sum(c.billed for c in per)
            trained = sum(c.trained for c in per)
            images = sum(image_count(m) for m in example.messages)
        else:  # the hot path of validation: `message` inlined, plain strings tokenized directly
            per = None
            billed = REPLY_PRIMING + TOKENS_PER_MESSAGE * len(example.messages)
            trained = 0
            small = self._small
            keep = self.keep_ids
            if keep:
                self.kept.clear()
            join = self._join_tokens is not None and not keep
            trained_texts: list[str] = []  # counted after the loop, in one call each (see JOIN)
            other_texts: list[str] = []
            for m in example.messages:
                content = m.content
                role = m.role
                weight = m.weight
                is_trained = role == "assistant" and (weight is None or weight != 0)
                if (
                    type(content) is str
                    and role != "system"
                    and m.tool_calls is None
                    and m.function_call is None
                    and len(content) <= CHUNK_CHARS
                ):
                    if join and content and content.strip() is content:
                        (trained_texts if is_trained else other_texts).append(content)
                        body = 0
                    elif keep:
                        body = self._kept(content)
                    else:
                        body = self._plain(content)
                else:
                    body = self._body(m)
                    if type(content) is list:
                        images += image_count(m)
                billed += body + (small.get(role) or self._small_count(role))
                if m.name is not None or m.tool_call_id is not None:
                    billed += self._name_tokens(m)
                if is_trained:
                    trained += body + END_OF_TURN
            if trained_texts:
                n = self._joined(trained_texts)
                billed += n
                trained += n
            if other_texts:
                billed += self._joined(other_texts)
        tools = self.tools(example.tools, example.functions) if example.tools or example.functions else 0
        return ExampleTokens(billed + tools, trained, len(example.messages), per, tools, images)

    def preference(self, example: PreferenceExample) -> ExampleTokens:
        """DPO billing is not published: the prompt once, plus both replies (both carry the loss)."""
        prompt = self.chat(example.input)
        replies = [self.message(m) for m in (*example.preferred_output, *example.non_preferred_output)]
        return ExampleTokens(
            prompt.billed + sum(r.billed for r in replies),
            sum(r.trained for r in replies),
            len(example.input.messages) + len(replies),
            None,
            prompt.tools,
            prompt.images,
        )

    def example(self, example: ChatExample | PreferenceExample, *, detail: bool = False) -> ExampleTokens:
        if isinstance(example, ChatExample):
            return self.chat(example, detail=detail)
        return self.preference(example)


def truncation_loss(tokens: ExampleTokens, limit: int) -> int:
    """Trained tokens the provider's truncation from the end would cut (needs `per_message`)."""
    if tokens.billed <= limit or tokens.per_message is None:
        return 0
    position = tokens.tools
    lost = 0
    for c in tokens.per_message:
        end = position + c.billed
        if end > limit and c.trained:
            lost += min(c.trained, end - limit)
        position = end
    return lost


def default_epochs(n_examples: int) -> int:
    """The provider's default epoch count for a training file of this size (the cookbook's heuristic)."""
    if n_examples <= 0:
        return 0
    if n_examples * TARGET_EPOCHS < MIN_TARGET_EXAMPLES:
        return min(MAX_DEFAULT_EPOCHS, MIN_TARGET_EXAMPLES // n_examples)
    if n_examples * TARGET_EPOCHS > MAX_TARGET_EXAMPLES:
        return max(MIN_DEFAULT_EPOCHS, MAX_TARGET_EXAMPLES // n_examples)
    return TARGET_EPOCHS


def billable_tokens(billed_per_example: list[int], limit: int) -> int:
    """Tokens charged per epoch: each example counts at most up to the model's limit."""
    return sum(min(limit, b) for b in billed_per_example)


def estimated_cost(billable: int, epochs: int, price_per_1m: float | None) -> float | None:
    if price_per_1m is None:
        return None
    return round(billable * epochs * price_per_1m / 1_000_000, 6)
