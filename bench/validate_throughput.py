"""Validation throughput: tuneset against the tokenizer floor and the OpenAI cookbook data-prep loop.

    uv run python -m bench.validate_throughput [--mb N] [--quick]

One run builds two multi-turn chat JSONL files from the real turns in tests/data and, on each
file, measures (a) to (c):

- long messages: a product's system prompt and 2-10 whole real user/assistant pairs
  (ShareGPT, and 10 % long MT-Bench pairs); per-message overhead hides behind the tokenizer.
- short messages, like hh-rlhf conversations converted to chat: no system prompt and 3-12
  pairs of short turns. The turns are the same real messages cut into sentences (at `.!?`
  followed by whitespace, and at newlines); each role's sentences, in order, are grouped
  until a group reaches a length drawn from a lognormal distribution, so the median message
  is about 120 characters (printed). Here the per-message Python work is what counts.

(a) the tokenizer floor: tiktoken `encode_ordinary` over every message content (the file is
    decoded before the clock starts, so only encoding is timed);
(b) the OpenAI cookbook's `Chat_finetuning_data_prep.ipynb` loop, end to end from the file:
    `json.loads` per line, its format checks, `num_tokens_from_messages`,
    `num_assistant_tokens_from_messages`, the distributions and the cost estimate;
(c) `tuneset validate` on one core: `service.core.pipeline.run` over the open file, from
    opening the file to having the Report;
(d) linearity: tuneset's per-example work on an 80-turn and a 160-turn conversation;
(e) pathological input (1,000,000 repeated characters, special-token text) under a time budget.

Every throughput is the file size in bytes / 1e6 over the best of several runs. Targets:
(c) >= 0.8 x (a) on both corpora, (c) >= 1.2 x (b) on the long and >= 1.5 x (b) on the short
one, (d) <= 2.2. The process is pinned to one core when the platform allows it. Nothing here
asserts speed; it prints figures.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import multiprocessing
import os
import platform
import random
import re
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, TypeVar

import tiktoken

from service.core.encodings import get_encoding
from service.core.formats import read_records
from service.core.pipeline import Processor, Recipe, Report, run
from tests.conftest import mtbench_conversations, sharegpt_conversations

MODEL = "gpt-4o-mini"
ENCODING = "o200k_base"  # gpt-4o-mini's encoding, for the floor and the cookbook loop
SEED = 20240611
DEFAULT_MB = 30.0
QUICK_MB = 2.0
OUT_DIR = Path(__file__).parent / "out"  # git-ignored

MIN_PAIRS, MAX_PAIRS = 2, 10  # user/assistant pairs per example: 4-20 turns after the system prompt
P_MTBENCH = 0.1  # chance a pair is a (long) MT-Bench pair rather than a (short) ShareGPT one
LINEAR_PAIRS = 40  # the 80-turn conversation; the 160-turn one is the same pairs twice

TARGET_FLOOR = 0.8  # (c) >= 0.8 x (a)
TARGET_COOKBOOK = 1.2  # (c) >= 1.2 x (b) on the long-message corpus
TARGET_COOKBOOK_SHORT = 1.5  # (c) >= 1.5 x (b) on the short-message corpus
TARGET_LINEAR = 2.2  # t(160 turns) / t(80 turns)
PATHOLOGICAL_CHARS = 1_000_000
PATHOLOGICAL_BUDGET_S = 5.0  # per input, for `run` alone (the child's start-up is not counted)
CHILD_STARTUP_S = 120.0

# One shared system prompt per "product"; each example belongs to one product.
SYSTEM_PROMPTS = (
    "You are Aria, the support assistant for Northwind Bank's mobile app. Answer questions about "
    "accounts, cards and transfers clearly and briefly. Never ask for full card numbers, PINs or "
    "passwords. If a question needs a human, say so and offer to open a support ticket.",
    "You are a patient tutor for high-school and first-year university students. Explain your "
    "reasoning step by step, check the student's understanding with a short question at the end, "
    "and prefer worked examples over definitions.",
    "You are the in-editor coding assistant of Codeline IDE. Give correct, idiomatic code with a "
    "one-paragraph explanation. Point out bugs and security problems you notice, and say which "
    "language version your answer assumes.",
    "You are the concierge of Halcyon Travel. Help customers plan trips, compare options and "
    "understand booking conditions. Be warm but concise, state prices as estimates, and recommend "
    "checking entry requirements with official sources.",
    "You are a writing assistant for a marketing team. Match the tone the user asks for, keep "
    "claims factual, avoid superlatives the user cannot support, and offer two alternatives when "
    "asked for a headline or a tagline.",
)

T = TypeVar("T")
Pair = tuple[str, str]


# ---------------------------------------------------------------------------------------------
# Data


@dataclass
class DataInfo:
    path: Path
    size: int
    examples: int
    messages: int
    content_bytes: dict[str, int] = field(default_factory=dict)
    median_chars: float = 0.0  # median characters of a message's content


def turn_pairs(conversations: list[dict[str, Any]]) -> list[Pair]:
    """The distinct (user, assistant) turn pairs of real conversations, in first-seen order."""
    out: dict[Pair, None] = {}
    for convo in conversations:
        messages = convo["messages"]
        for user, assistant in zip(messages[0::2], messages[1::2], strict=True):
            if user["role"] == "user" and assistant["role"] == "assistant":
                out[(user["content"], assistant["content"])] = None
    return list(out)


def turn_pools() -> dict[str, list[Pair]]:
    return {"mtbench": turn_pairs(mtbench_conversations()), "sharegpt": turn_pairs(sharegpt_conversations())}


def draw_pairs(rng: random.Random, pools: dict[str, list[Pair]], n: int) -> list[tuple[str, int]]:
    """`n` distinct (source, index) picks: MT-Bench with probability P_MTBENCH, else ShareGPT."""
    picks: dict[tuple[str, int], None] = {}
    while len(picks) < n:
        source = "mtbench" if rng.random() < P_MTBENCH else "sharegpt"
        picks[(source, rng.randrange(len(pools[source])))] = None
    return list(picks)


def conversation(system: str, pairs: Sequence[Pair]) -> dict[str, Any]:
    messages = [{"role": "system", "content": system}]
    for user, assistant in pairs:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return {"messages": messages}


def generate(path: Path, target_bytes: int, seed: int = SEED) -> DataInfo:
    """Write distinct multi-turn examples built from real turns until the file has `target_bytes`."""
    rng = random.Random(seed)
    pools = turn_pools()
    seen: set[tuple[int, tuple[tuple[str, int], ...]]] = set()
    info = DataInfo(path, 0, 0, 0, {"system": 0, "mtbench": 0, "sharegpt": 0})
    lengths: list[int] = []
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        while info.size < target_bytes:
            product = rng.randrange(len(SYSTEM_PROMPTS))
            picks = tuple(draw_pairs(rng, pools, rng.randint(MIN_PAIRS, MAX_PAIRS)))
            if (product, picks) in seen:
                continue
            seen.add((product, picks))
            pairs = [pools[source][i] for source, i in picks]
            line = json.dumps(conversation(SYSTEM_PROMPTS[product], pairs), ensure_ascii=False).encode()
            f.write(line + b"\n")
            info.size += len(line) + 1
            info.examples += 1
            info.messages += 1 + 2 * len(pairs)
            info.content_bytes["system"] += len(SYSTEM_PROMPTS[product].encode())
            lengths.append(len(SYSTEM_PROMPTS[product]))
            for (source, _), (user, assistant) in zip(picks, pairs, strict=True):
                info.content_bytes[source] += len(user.encode()) + len(assistant.encode())
                lengths += [len(user), len(assistant)]
    info.median_chars = statistics.median(lengths) if lengths else 0.0
    return info


# The short-message corpus


SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+|\n+")
SHORT_MEDIAN_TARGET = 95.0  # lognormal median of a turn's target length; grouping overshoots it
SHORT_SIGMA = 0.7
SHORT_MIN_PAIRS, SHORT_MAX_PAIRS = 3, 12  # 6-24 short turns per example, no system prompt


def short_turns(rng: random.Random) -> dict[str, list[str]]:
    """Short user and assistant turns cut from the real messages: each role's sentences, in order,
    grouped greedily until a group reaches a length drawn from a lognormal distribution."""
    out: dict[str, dict[str, None]] = {"user": {}, "assistant": {}}
    for convos in (mtbench_conversations(), sharegpt_conversations()):
        for role, turns in out.items():
            group: list[str] = []
            target = rng.lognormvariate(math.log(SHORT_MEDIAN_TARGET), SHORT_SIGMA)
            for convo in convos:
                for m in convo["messages"]:
                    if m["role"] != role:
                        continue
                    for sentence in SENTENCE_BREAK.split(m["content"]):
                        if sentence.strip():
                            group.append(sentence.strip())
                        if group and len(" ".join(group)) >= target:
                            turns[" ".join(group)] = None
                            group = []
                            target = rng.lognormvariate(math.log(SHORT_MEDIAN_TARGET), SHORT_SIGMA)
    return {role: list(turns) for role, turns in out.items()}


def short_conversations(seed: int = SEED) -> Iterator[list[dict[str, str]]]:
    """Distinct hh-rlhf-like message lists (many short turns, no system prompt), without end,
    always in the same order for a seed: the short corpus of this benchmark and of `bench.token_build`."""
    rng = random.Random(seed + 2)
    turns = short_turns(rng)
    users, assistants = turns["user"], turns["assistant"]
    seen: set[tuple[tuple[int, int], ...]] = set()
    while True:
        n = rng.randint(SHORT_MIN_PAIRS, SHORT_MAX_PAIRS)
        picks = tuple((rng.randrange(len(users)), rng.randrange(len(assistants))) for _ in range(n))
        if picks in seen:
            continue
        seen.add(picks)
        messages: list[dict[str, str]] = []
        for u, a in picks:
            messages += [
                {"role": "user", "content": users[u]},
                {"role": "assistant", "content": assistants[a]},
            ]
        yield messages


def generate_short(path: Path, target_bytes: int, seed: int = SEED) -> DataInfo:
    """Distinct hh-rlhf-like examples (`short_conversations`) until `target_bytes`."""
    conversations = short_conversations(seed)
    info = DataInfo(path, 0, 0, 0, {"user": 0, "assistant": 0})
    lengths: list[int] = []
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        while info.size < target_bytes:
            messages = next(conversations)
            line = json.dumps({"messages": messages}, ensure_ascii=False).encode()
            f.write(line + b"\n")
            info.size += len(line) + 1
            info.examples += 1
            info.messages += len(messages)
            for m in messages:
                info.content_bytes[m["role"]] += len(m["content"].encode())
                lengths.append(len(m["content"]))
    info.median_chars = statistics.median(lengths) if lengths else 0.0
    return info


# ---------------------------------------------------------------------------------------------
# (a) the tokenizer floor


def load_contents(path: Path) -> list[str]:
    with path.open("rb") as f:
        return [m["content"] for line in f for m in json.loads(line)["messages"]]


def tokenizer_floor(contents: list[str], enc: tiktoken.Encoding) -> int:
    n = 0
    for text in contents:
        n += len(enc.encode_ordinary(text))
    return n


# ---------------------------------------------------------------------------------------------
# (b) the OpenAI cookbook loop (examples/Chat_finetuning_data_prep.ipynb, cells 2-6), kept as
# written there; only the numpy distribution summary is done with `statistics` (numpy is not a
# dependency) and nothing is printed.


def num_tokens_from_messages(
    messages: list[dict[str, Any]],
    encoding: tiktoken.Encoding,
    tokens_per_message: int = 3,
    tokens_per_name: int = 1,
) -> int:
    num_tokens = 0
    for message in messages:
        num_tokens += tokens_per_message
        for key, value in message.items():
            num_tokens += len(encoding.encode(value))
            if key == "name":
                num_tokens += tokens_per_name
    num_tokens += 3
    return num_tokens


def num_assistant_tokens_from_messages(messages: list[dict[str, Any]], encoding: tiktoken.Encoding) -> int:
    num_tokens = 0
    for message in messages:
        if message["role"] == "assistant":
            num_tokens += len(encoding.encode(message["content"]))
    return num_tokens


def distribution(values: list[int]) -> tuple[float, ...]:
    """The cookbook's print_distribution figures: min, max, mean, median, 0.1 and 0.9 quantiles."""
    deciles = statistics.quantiles(values, n=10, method="inclusive")  # numpy's default (linear)
    return (
        min(values),
        max(values),
        statistics.fmean(values),
        statistics.median(values),
        deciles[0],
        deciles[-1],
    )


@dataclass
class CookbookResult:
    examples: int
    format_errors: dict[str, int]
    n_missing_system: int
    n_missing_user: int
    distributions: dict[str, tuple[float, ...]]
    n_too_long: int
    billing_tokens: int
    n_epochs: int


def cookbook(data_path: Path, encoding: tiktoken.Encoding) -> CookbookResult:
    # Load the dataset
    with open(data_path, encoding="utf-8") as f:
        dataset = [json.loads(line) for line in f]

    # Format error checks
    format_errors: defaultdict[str, int] = defaultdict(int)
    for ex in dataset:
        if not isinstance(ex, dict):
            format_errors["data_type"] += 1
            continue
        messages = ex.get("messages", None)
        if not messages:
            format_errors["missing_messages_list"] += 1
            continue
        for message in messages:
            if "role" not in message or "content" not in message:
                format_errors["message_missing_key"] += 1
            if any(k not in ("role", "content", "name", "function_call", "weight") for k in message):
                format_errors["message_unrecognized_key"] += 1
            if message.get("role", None) not in ("system", "user", "assistant", "function"):
                format_errors["unrecognized_role"] += 1
            content = message.get("content", None)
            function_call = message.get("function_call", None)
            if (not content and not function_call) or not isinstance(content, str):
                format_errors["missing_content"] += 1
        if not any(message.get("role", None) == "assistant" for message in messages):
            format_errors["example_missing_assistant_message"] += 1

    # Warnings and tokens counts
    n_missing_system = 0
    n_missing_user = 0
    n_messages = []
    convo_lens = []
    assistant_message_lens = []
    for ex in dataset:
        messages = ex["messages"]
        if not any(message["role"] == "system" for message in messages):
            n_missing_system += 1
        if not any(message["role"] == "user" for message in messages):
            n_missing_user += 1
        n_messages.append(len(messages))
        convo_lens.append(num_tokens_from_messages(messages, encoding))
        assistant_message_lens.append(num_assistant_tokens_from_messages(messages, encoding))
    distributions = {
        "num_messages_per_example": distribution(n_messages),
        "num_total_tokens_per_example": distribution(convo_lens),
        "num_assistant_tokens_per_example": distribution(assistant_message_lens),
    }
    n_too_long = sum(length > 16385 for length in convo_lens)

    # Pricing and default n_epochs estimate
    max_tokens_per_example = 16385
    target_epochs, min_target_examples, max_target_examples = 3, 100, 25000
    min_default_epochs, max_default_epochs = 1, 25
    n_epochs = target_epochs
    n_train_examples = len(dataset)
    if n_train_examples * target_epochs < min_target_examples:
        n_epochs = min(max_default_epochs, min_target_examples // n_train_examples)
    elif n_train_examples * target_epochs > max_target_examples:
        n_epochs = max(min_default_epochs, max_target_examples // n_train_examples)
    n_billing_tokens_in_dataset = sum(min(max_tokens_per_example, length) for length in convo_lens)

    return CookbookResult(
        len(dataset),
        dict(format_errors),
        n_missing_system,
        n_missing_user,
        distributions,
        n_too_long,
        n_billing_tokens_in_dataset,
        n_epochs,
    )


# ---------------------------------------------------------------------------------------------
# (c) tuneset


def tuneset_validate(path: Path) -> Report:
    with path.open("rb") as f:
        return run(f, Recipe(model=MODEL))


# ---------------------------------------------------------------------------------------------
# (d) linearity


def per_example_seconds(line: bytes, repeats: int) -> float:
    """Best time of tuneset's per-example work (decode, checks, accounting, dedupe) on one line."""
    recipe = Recipe(model=MODEL)
    best = float("inf")
    for _ in range(repeats):
        processor = Processor(recipe)  # fresh, so the example is never a duplicate; not timed
        start = time.perf_counter()
        for record in read_records([line]):
            processor.process(record)
        best = min(best, time.perf_counter() - start)
    return best


def linearity_lines(seed: int = SEED) -> tuple[bytes, bytes]:
    """An 80-turn and a 160-turn conversation (plus a system prompt) from real turns."""
    rng = random.Random(seed + 1)
    pools = turn_pools()
    pairs = [pools[source][i] for source, i in draw_pairs(rng, pools, LINEAR_PAIRS)]
    system = SYSTEM_PROMPTS[0]
    short = json.dumps(conversation(system, pairs), ensure_ascii=False).encode()
    long = json.dumps(conversation(system, pairs + pairs), ensure_ascii=False).encode()
    return short, long


# ---------------------------------------------------------------------------------------------
# (e) pathological input, each in a child process so a hang or a tokenizer panic is contained


def pathological_lines() -> list[tuple[str, bytes]]:
    pools = turn_pools()
    user, assistant = pools["mtbench"][0]
    cases: list[tuple[str, bytes]] = []
    for ch in ("a", " ", "^", "\n"):
        value = conversation(SYSTEM_PROMPTS[2], [(ch * PATHOLOGICAL_CHARS, assistant)])
        cases.append((f"{PATHOLOGICAL_CHARS:,} x {ch!r}", json.dumps(value).encode()))
    leaked = f"{assistant}<|endoftext|>{user}"
    value = conversation(SYSTEM_PROMPTS[2], [(user, leaked)])
    cases.append(("'<|endoftext|>' in an answer", json.dumps(value).encode()))
    return cases


def _pathological_child(conn: Connection, line: bytes) -> None:
    try:
        get_encoding(ENCODING)
        run(
            [b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hi"}]}'],
            Recipe(model=MODEL),
        )
        conn.send("ready")
        start = time.perf_counter()
        report = run([line], Recipe(model=MODEL))
        conn.send((time.perf_counter() - start, sorted(report.problem_counts)))
    except BaseException as e:  # tiktoken panics surface as BaseException
        conn.send(f"{type(e).__name__}: {e}")
    finally:
        conn.close()


@dataclass
class PathologicalResult:
    seconds: float | None  # None: over budget or crashed
    codes: list[str]
    error: str | None = None


def run_pathological(line: bytes, budget: float) -> PathologicalResult:
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_pathological_child, args=(child, line), daemon=True)
    proc.start()
    child.close()
    try:
        if not parent.poll(CHILD_STARTUP_S):
            return PathologicalResult(None, [], "the child did not start")
        ready = parent.recv()
        if ready != "ready":
            return PathologicalResult(None, [], str(ready))
        if not parent.poll(budget):
            return PathologicalResult(None, [], f"over the {budget:.1f} s budget")
        answer = parent.recv()
        if isinstance(answer, str):
            return PathologicalResult(None, [], answer)
        seconds, codes = answer
        return PathologicalResult(float(seconds), list(codes))
    except EOFError:
        return PathologicalResult(None, [], f"the child died (exit code {proc.exitcode})")
    finally:
        parent.close()
        if proc.is_alive():
            proc.kill()
        proc.join()


# ---------------------------------------------------------------------------------------------
# Timing and reporting


def timed(fn: Callable[[], T]) -> tuple[float, float, T]:
    """Wall seconds and CPU seconds of one call. Every timed step runs on one thread, so its CPU
    time is what it costs one core; unlike wall time it leaves out the time a shared virtual
    machine gives to others (steal), which here moves single runs by ±10 %."""
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def pin_to_one_core() -> tuple[set[int] | None, str]:
    """Pin this process to one core; returns the previous affinity (to restore) and a description."""
    if not hasattr(os, "sched_setaffinity"):
        return None, "not pinned (no sched_setaffinity)"
    before = os.sched_getaffinity(0)
    core = min(before)
    os.sched_setaffinity(0, {core})
    return before, f"pinned to core {core}"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def bench(mb: float, repeats: int, linear_repeats: int, out_dir: Path) -> None:
    print("tuneset validate throughput benchmark")
    previous, pinned = pin_to_one_core()
    try:
        _bench(mb, repeats, linear_repeats, out_dir, pinned)
    finally:
        if previous is not None:
            os.sched_setaffinity(0, previous)


def measure(name: str, info: DataInfo, what: str, repeats: int, book_target: float) -> tuple[float, float]:
    """(a), (b) and (c) on one corpus, interleaved; prints the figures, returns (c)/(a) and (c)/(b)."""
    path = info.path
    megabytes = info.size / 1e6
    content = sum(info.content_bytes.values())
    shares = ", ".join(f"{k} {v / content:.0%}" for k, v in info.content_bytes.items())
    print()
    print(
        f"data: {name}: {path} ({info.size:,} bytes = {megabytes:.2f} MB): {info.examples:,} distinct "
        f"examples, {info.messages:,} messages ({info.messages / info.examples:.1f} per example: {what}); "
        f"median message {info.median_chars:g} characters; content bytes: {shares}"
    )
    enc = get_encoding(ENCODING)
    contents = load_contents(path)
    times: dict[str, list[float]] = {"a": [], "b": [], "c": []}  # CPU seconds
    walls: dict[str, list[float]] = {"a": [], "b": [], "c": []}
    floor_tokens = 0
    book: CookbookResult | None = None
    report: Report | None = None
    for _ in range(repeats):  # interleaved, so drift in the machine's speed hits all three alike
        w, t, floor_tokens = timed(lambda: tokenizer_floor(contents, enc))
        walls["a"].append(w)
        times["a"].append(t)
        w, t, book = timed(lambda: cookbook(path, enc))
        walls["b"].append(w)
        times["b"].append(t)
        w, t, report = timed(lambda: tuneset_validate(path))
        walls["c"].append(w)
        times["c"].append(t)
    assert book is not None
    assert report is not None
    speed = {k: megabytes / min(v) for k, v in times.items()}
    labels = {
        "a": "(a) tokenizer floor: encode_ordinary per content",
        "b": "(b) OpenAI cookbook data-prep loop",
        "c": "(c) tuneset validate: pipeline.run, one core",
    }
    print("MB/s from the best CPU time of the runs (CPU s); wall-clock MB/s from the best wall time")
    for k, label in labels.items():
        runs = ", ".join(f"{t:.2f}" for t in times[k])
        wall_speed = megabytes / min(walls[k])
        print(
            f"{label:<52} {speed[k]:8.2f} MB/s   best {min(times[k]):.3f} CPU s   (runs: {runs})   "
            f"wall {wall_speed:.2f} MB/s"
        )
    floor_ratio = speed["c"] / speed["a"]
    book_ratio = speed["c"] / speed["b"]
    wall_ratio = min(walls["a"]) / min(walls["c"])
    print(
        f"    (c)/(a) = {floor_ratio:.3f}   target >= {TARGET_FLOOR}   {verdict(floor_ratio >= TARGET_FLOOR)}"
        f"   (wall clock: {wall_ratio:.3f})"
    )
    book_ok = verdict(book_ratio >= book_target)
    print(f"    (c)/(b) = {book_ratio:.3f}   target >= {book_target}   {book_ok}")
    same = "agree" if report.tokens.billed_total == book.billing_tokens else "DIFFER"
    print(
        f"    check: billed tokens tuneset {report.tokens.billed_total:,} / cookbook {book.billing_tokens:,} "
        f"({same}); content tokens (a) {floor_tokens:,}; examples {report.examples:,} / {book.examples:,}"
    )
    print(
        f"    tuneset problems: {report.problem_counts or 'none'}; "
        f"cookbook format errors: {book.format_errors or 'none'}"
    )
    return floor_ratio, book_ratio


def _bench(mb: float, repeats: int, linear_repeats: int, out_dir: Path, pinned: str) -> None:
    print(
        f"environment: Python {platform.python_version()} ({platform.python_implementation()}), "
        f"tiktoken {tiktoken.__version__}, msgspec {version('msgspec')}, {platform.platform()}, "
        f"{os.cpu_count()} CPUs, {pinned}"
    )
    print(f"model: {MODEL} ({ENCODING}); MB = file bytes / 1e6; each of (a), (b), (c) best of {repeats} runs")
    long_info = generate(out_dir / f"chat_{mb:g}mb_seed{SEED}.jsonl", int(mb * 1e6))
    short_info = generate_short(out_dir / f"short_{mb:g}mb_seed{SEED}.jsonl", int(mb * 1e6))
    corpora = (
        (
            "long messages",
            long_info,
            f"a system prompt from {len(SYSTEM_PROMPTS)} products + {MIN_PAIRS}-{MAX_PAIRS} real "
            "user/assistant pairs",
            TARGET_COOKBOOK,
        ),
        (
            "short messages",
            short_info,
            f"{SHORT_MIN_PAIRS}-{SHORT_MAX_PAIRS} user/assistant pairs of sentence groups cut from the "
            "same real turns, no system prompt (hh-rlhf style)",
            TARGET_COOKBOOK_SHORT,
        ),
    )
    figures = [measure(name, info, what, repeats, target) for name, info, what, target in corpora]
    print()
    print("summary (CPU seconds, one core):")
    for (name, *_), (floor_ratio, book_ratio) in zip(corpora, figures, strict=True):
        print(f"    {name:<15} (c)/(a) = {floor_ratio:.3f}   (c)/(b) = {book_ratio:.3f}")

    short, long = linearity_lines()
    t80 = per_example_seconds(short, linear_repeats)
    t160 = per_example_seconds(long, linear_repeats)
    ratio = t160 / t80
    print()
    print(
        f"(d) linearity (read_records + Processor.process, best of {linear_repeats}): "
        f"80 turns {t80 * 1e3:.3f} ms ({len(short):,} bytes), 160 turns {t160 * 1e3:.3f} ms "
        f"({len(long):,} bytes, the same {LINEAR_PAIRS} pairs twice)"
    )
    print(f"    160/80 = {ratio:.3f}   target <= {TARGET_LINEAR}   {verdict(ratio <= TARGET_LINEAR)}")

    print()
    print(f"(e) pathological input: pipeline.run on one example, budget {PATHOLOGICAL_BUDGET_S:.1f} s each")
    for label, line in pathological_lines():
        result = run_pathological(line, PATHOLOGICAL_BUDGET_S)
        if result.seconds is None:
            print(f"    {label:<30} FAILED: {result.error}")
            continue
        within = verdict(result.seconds <= PATHOLOGICAL_BUDGET_S)
        extra = ""
        if "<|endoftext|>" in label:
            extra = (
                f"   special_token_text reported: {'yes' if 'special_token_text' in result.codes else 'NO'}"
            )
        print(f"    {label:<30} {result.seconds * 1e3:9.2f} ms   {within}   problems: {result.codes}{extra}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.validate_throughput", description="Validation throughput benchmark."
    )
    parser.add_argument(
        "--mb", type=float, help=f"data size in MB (default {DEFAULT_MB:g}; {QUICK_MB:g} with --quick)"
    )
    parser.add_argument("--quick", action="store_true", help="small data and fewer repeats, for CI")
    parser.add_argument(
        "--repeats", type=int, help="runs of each of (a), (b), (c) (default 3; 2 with --quick)"
    )
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="directory for the generated data")
    args = parser.parse_args(argv)
    mb = args.mb if args.mb is not None else (QUICK_MB if args.quick else DEFAULT_MB)
    repeats = max(2, args.repeats if args.repeats is not None else (2 if args.quick else 3))
    bench(mb, repeats, 10 if args.quick else 50, args.out)
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
