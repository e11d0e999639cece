"""The web UI's token boxes: each token's text, so that together they spell the view's text even
where one character's bytes are cut across tokens; and where a login may send the browser next."""

from __future__ import annotations

import msgspec

from service.api.schemas import InspectView
from service.core.encodings import get_encoding
from service.core.example_view import view_for
from service.core.models import load_table
from service.ui.session import HOME, safe_next
from service.ui.tokens import view_tokens
from tests.conftest import chat, sharegpt_conversations


def _inspect_view(example: object, model: str | None = None, template: str | None = None) -> InspectView:
    view = view_for(msgspec.convert(example, type=type(chat(("user", "x")))), model, template, load_table())
    return InspectView(line=1, **msgspec.structs.asdict(view))


def test_token_texts_spell_the_segments_even_across_a_cut_character() -> None:
    text = "Ça va? 🤖 日本語のテキスト — ok"
    view = _inspect_view(
        {"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": text}]}
    )
    enc = get_encoding(view.encoding)
    cut = [t for s in view.segments for t in s.token_ids if not _whole(enc.decode_single_token_bytes(t))]
    assert cut  # the emoji and the CJK text are cut across byte tokens: the case this is about
    segments = view_tokens(view)
    assert [[t.id for t in s.tokens] for s in segments] == [s.token_ids for s in view.segments]
    assert "".join(t.text for s in segments for t in s.tokens) == "".join(s.text for s in view.segments)
    assert all("\ufffd" not in t.text for s in segments for t in s.tokens)
    # decoding each token alone would show replacement characters where a character is cut
    assert any("\ufffd" in enc.decode_single_token_bytes(t).decode("utf-8", "replace") for t in cut)


def _whole(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def test_special_tokens_are_marked_on_real_conversations() -> None:
    for example in sharegpt_conversations()[:50]:
        view = _inspect_view(example, template="chatml")
        segments = view_tokens(view)
        specials = {t.text for s in segments for t in s.tokens if t.special}
        assert specials == {"<|im_start|>", "<|im_end|>"}
        assert "".join(t.text for s in segments for t in s.tokens) == "".join(s.text for s in view.segments)


def test_after_login_only_a_page_of_the_ui() -> None:
    assert safe_next("/ui/jobs?status=running") == "/ui/jobs?status=running"
    for target in (
        None,
        "",
        "/v1/datasets",
        "https://evil.example/ui/",
        "//evil.example/ui/x",
        "/ui\\..\\x",
        "ui/jobs",
        "/ui/x\r\nSet-Cookie: a=b",
        "/ui/é",
        '/ui/" onload="x',
    ):
        assert safe_next(target) == HOME, target
