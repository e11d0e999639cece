"""One example per assistant turn, for templates that rewrite history.

A template such as Qwen3's (reasoning stripped from earlier turns) or gpt-oss's (`<|return|>` on the
last turn, `<|end|>` on earlier ones) renders a turn differently once later turns follow it, so a
multi-turn example trains earlier turns on text the model never sees at inference. Splitting it
into prefixes, each ending at the turn it trains, renders every trained turn as the last one, as
inference does.
"""

from __future__ import annotations

import msgspec

from service.core.conversation import ChatExample


def expand_per_turn(example: ChatExample) -> list[ChatExample]:
    """One example per trained assistant turn: the prefix up to that turn, only that turn trained
    (weight 0 on the earlier assistant turns). Turns with weight 0 give no example."""
    out: list[ChatExample] = []
    messages = example.messages
    for k, m in enumerate(messages):
        if m.role != "assistant" or m.weight == 0:
            continue
        prefix = [
            msgspec.structs.replace(p, weight=0) if p.role == "assistant" and i < k else p
            for i, p in enumerate(messages[: k + 1])
        ]
        out.append(msgspec.structs.replace(example, messages=prefix))
    return out
