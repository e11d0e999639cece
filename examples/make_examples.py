"""Writes the example files the README's commands use, from the real conversations in tests/data.

`chats.jsonl` holds the 30 MT-Bench two-turn conversations with GPT-4's reference answers, each
reshaped into one of the irregular forms real transcripts take (the README's `inspect` example is
line 1: system, user, assistant, assistant, user). `hh.jsonl` holds the same conversations as
Anthropic-HH `chosen`/`rejected` transcripts: the rejected side answers the last question with the
next conversation's answer. Run `python -m examples.make_examples` to write them again; a test
checks the committed files equal what this prints.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
DATA = HERE.parent / "tests" / "data"
SYSTEM = "You are a careful assistant. Show your reasoning, then give the answer."


def mtbench() -> list[list[dict[str, str]]]:
    """MT-Bench questions joined with GPT-4's reference answers, as user/assistant messages."""
    questions = {
        q["question_id"]: q["turns"]
        for q in map(json.loads, (DATA / "mtbench_questions.jsonl").read_text().splitlines())
    }
    out = []
    for line in (DATA / "mtbench_gpt4_reference_answers.jsonl").read_text().splitlines():
        answer = json.loads(line)
        messages = []
        for user, assistant in zip(
            questions[answer["question_id"]], answer["choices"][0]["turns"], strict=True
        ):
            messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        out.append(messages)
    return out


def irregular(i: int, m: list[dict[str, str]]) -> list[dict[str, str]]:
    """One of five shapes, in turn: the README's example, then regular, assistant-first, two users
    in a row, and ending on the user."""
    system = {"role": "system", "content": SYSTEM}
    u1, a1, u2, a2 = m
    shapes = [
        [system, u1, a1, a2, u2],  # two assistant turns in a row, ends on the user
        [system, u1, a1, u2, a2],
        [a1, u2, a2],  # starts with the assistant, no system prompt
        [system, u1, u2, a2],  # two user turns in a row
        [u1, a1, u2],  # ends on the user, no system prompt
    ]
    return shapes[i % len(shapes)]


def transcript(messages: list[dict[str, str]]) -> str:
    who = {"user": "Human", "assistant": "Assistant"}
    return "".join(f"\n\n{who[m['role']]}: {m['content']}" for m in messages)


def examples() -> dict[str, list[dict[str, Any]]]:
    convos = mtbench()
    chats = [{"messages": irregular(i, m)} for i, m in enumerate(convos)]
    hh = [
        {
            "chosen": transcript(m),
            "rejected": transcript([*m[:3], convos[(i + 1) % len(convos)][3]]),
        }
        for i, m in enumerate(convos)
    ]
    return {"chats.jsonl": chats, "hh.jsonl": hh}


def render(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def main() -> None:
    for name, rows in examples().items():
        (HERE / name).write_text(render(rows), encoding="utf-8")


if __name__ == "__main__":
    main()
