"""One example's training view for a provider model or a chat template: what the CLI's `view`
and the API's `/v1/inspect` both show, so it lives in the core they share."""

from __future__ import annotations

import msgspec

from service.core import pipeline
from service.core.accounting import Accountant
from service.core.conversation import ChatExample, PreferenceExample, chat_of
from service.core.models import ModelTable
from service.core.templates import get_template, provider_template
from service.core.view import TrainingView, build_view


def view_for(
    example: ChatExample | PreferenceExample,
    model: str | None,
    template: str | None,
    table: ModelTable,
    *,
    train_eot: bool = True,
) -> TrainingView:
    """The training view of one example (for DPO: the prompt and the preferred reply) for a
    provider model or a chat template; `train_eot=False` leaves end-of-turn tokens untrained."""
    chat = chat_of(example)
    if template is not None:
        chosen = get_template(template)
        if not train_eot:
            chosen = msgspec.structs.replace(chosen, name=f"{chosen.name}-no-eot", train_end=False)
        return build_view(chat, chosen)
    info = table.resolve(model or pipeline.DEFAULT_MODEL)
    billed = Accountant.for_model(info).chat(chat).billed  # the same scope as the view
    standin = provider_template(info.encoding)
    view = build_view(chat, standin, target=info.name, billed_tokens=billed)
    view.notes.append(
        f"{info.name} uses {info.encoding}; the provider's chat-format tokens are drawn as "
        f"{standin.encoding} stand-ins, so the token ids are {standin.encoding} ids"
    )
    if isinstance(example, PreferenceExample):
        view.notes.append("a preference example: shown and counted as its prompt with the preferred reply")
    return view
