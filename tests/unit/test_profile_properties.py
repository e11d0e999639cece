"""Properties of every model profile's training view, on generated conversations (hypothesis).

- The segments concatenate to exactly the tokenization of the whole rendered text (tuneset's own
  tokenizer and the family's reference tokenizer agree on it).
- Masks never cover a token of a non-assistant message, and the trained tokens of weight-0 messages
  are zero. This is checked without trusting tuneset's own segment labels: system, user and tool text is
  drawn from Greek letters, weight-0 assistant text from Cyrillic ones, and nothing else (no template,
  no weight-1 reply) writes either script; so a trained token whose characters include one is a token of
  a message that must not be trained.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.core.conversation import ChatExample
from service.core.profiles import profile_view
from tests.profile_refs import (
    FAMILY_KEYS,
    families,
    profile,
    reference_error,
    reference_ids,
    reference_tokenizer,
)

GREEK = "αβγδεζηθικλμνξοπρστυφχψω"
CYRILLIC = "абвгдежзийклмнопрстуфхцчшщ"
LATIN = "abcdefghijklmnopqrstuvwxyzABCXYZ0123456789.,!?'\"-*#:;()[]{}/_"
SPACE = " \n\t"

# every family's turn markers, so content that contains another family's (or its own) markers is covered
_MARKERS = sorted({m for f in families().values() for m in f.markers} | {"Human:", "[INST]", "</s>"})


def _text(alphabet: str) -> st.SearchStrategy[str]:
    piece = st.one_of(
        st.text(alphabet=alphabet + SPACE, min_size=1, max_size=12),
        st.text(alphabet=alphabet, min_size=1, max_size=6),
        st.sampled_from([" ", "\n", "\n\n", "  ", " \n"]),
    )
    return st.lists(piece, min_size=0, max_size=5).map("".join)


def _with_markers(alphabet: str) -> st.SearchStrategy[str]:
    return st.one_of(
        _text(alphabet),
        st.tuples(_text(alphabet), st.sampled_from(_MARKERS), _text(alphabet)).map("".join),
    )


def _message(role: str) -> st.SearchStrategy[dict[str, Any]]:
    if role == "assistant":
        trained = st.builds(
            lambda text, w: {"role": "assistant", "content": text, **({"weight": 1} if w else {})},
            _with_markers(LATIN),
            st.booleans(),
        )
        untrained = _with_markers(CYRILLIC).map(lambda t: {"role": "assistant", "content": t, "weight": 0})
        return st.one_of(trained, untrained)
    return _with_markers(GREEK).map(lambda t: {"role": role, "content": t})


@st.composite
def conversations(draw: st.DrawFn) -> ChatExample:
    """Mostly well-formed alternations, sometimes any role order (consecutive, leading, trailing)."""
    n = draw(st.integers(1, 6))
    if draw(st.booleans()):
        roles = [("user", "assistant")[i % 2] for i in range(n)]
        if draw(st.booleans()):
            roles = ["system", *roles]
    else:
        roles = draw(st.lists(st.sampled_from(["system", "user", "assistant"]), min_size=1, max_size=6))
    messages = [draw(_message(r)) for r in roles]
    return msgspec.convert({"messages": messages}, ChatExample)


def _token_chars(key: str, text: str) -> list[str]:
    """Each token's characters, from the reference tokenizer's offsets (a token holding part of a
    multi-byte character covers the whole character)."""
    enc = reference_tokenizer(families()[key]).backend_tokenizer.encode(text, add_special_tokens=False)
    assert enc.ids == reference_ids(families()[key], text)
    return [text[a:b] for a, b in enc.offsets]


PROPERTY_SETTINGS = settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)


@pytest.mark.parametrize("key", FAMILY_KEYS)
@PROPERTY_SETTINGS
@given(example=conversations())
def test_segments_concatenate_to_the_tokenization_of_the_rendered_text(
    key: str, example: ChatExample
) -> None:
    p = profile(key)
    result = profile_view(p, example)
    if result.view is None:  # the template refused: so does transformers
        assert any(x.code == "template_rejects_conversation" for x in result.findings)
        assert reference_error(families()[key], example) is not None
        return
    assert result.rendered is not None
    view = result.view
    assert "".join(s.text for s in view.segments) == result.rendered
    ids = view.token_ids()
    assert ids == p.tokenizer.encode(result.rendered)[0]
    assert ids == reference_ids(families()[key], result.rendered)
    for s in view.segments:
        if s.token_ids:
            assert s.text, s  # a segment's tokens come from its own text


@pytest.mark.parametrize("key", FAMILY_KEYS)
@PROPERTY_SETTINGS
@given(example=conversations())
def test_masks_never_cover_a_non_assistant_or_weight_zero_token(key: str, example: ChatExample) -> None:
    p = profile(key)
    result = profile_view(p, example)
    if result.view is None:
        return
    assert result.rendered is not None
    view = result.view
    chars = _token_chars(key, result.rendered)
    assert len(chars) == len(view.labels_mask())
    for i, (trained, text) in enumerate(zip(view.labels_mask(), chars, strict=True)):
        if trained:
            assert not set(text) & set(GREEK), f"token {i} {text!r} of a system/user message is trained"
            assert not set(text) & set(CYRILLIC), f"token {i} {text!r} of a weight-0 reply is trained"
    # and tuneset's own labels say the same
    for s in view.segments:
        if s.trained:
            assert s.message_index is not None
            m = example.messages[s.message_index]
            assert m.role == "assistant"
            assert m.weight != 0
            assert s.role == "assistant"


@st.composite
def echoing_conversations(draw: st.DrawFn) -> ChatExample:
    """Messages drawn from a small pool of texts, so the same text recurs in several messages and roles
    (a locator that searches for a message's text can pick the wrong occurrence)."""
    pool = draw(st.lists(_with_markers(LATIN + GREEK), min_size=1, max_size=3))
    n = draw(st.integers(2, 6))
    roles = [("user", "assistant")[i % 2] for i in range(n)]
    if draw(st.booleans()):
        roles = ["system", *roles]
    messages: list[dict[str, Any]] = []
    for r in roles:
        m: dict[str, Any] = {"role": r, "content": draw(st.sampled_from(pool))}
        if r == "assistant" and draw(st.integers(0, 3)) == 0:
            m["weight"] = 0
        messages.append(m)
    return msgspec.convert({"messages": messages}, ChatExample)


@pytest.mark.parametrize("key", FAMILY_KEYS)
@PROPERTY_SETTINGS
@given(example=echoing_conversations())
def test_masks_equal_the_training_templates_on_conversations_that_repeat_text(
    key: str, example: ChatExample
) -> None:
    """The reference mask comparison (test_profile_reference.check_masks, with its documented rules)
    on generated conversations whose messages repeat each other's text."""
    from tests.unit.test_profile_reference import check_masks

    f = families()[key]
    if reference_error(f, example) is not None:
        return
    check_masks(f, profile(key), example)
