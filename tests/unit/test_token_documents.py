"""Token documents for the build's token outputs: exactly the training view's tokens, mask and turns.

The lean renderer (`workers.template_documents`) must give, for every built-in template and any
conversation, what `service.core.view.build_view` gives (the view itself is checked against
openai-harmony and the tokenizers in tests/unit/test_view.py and test_harmony.py). The source's
hashes are checked against the shipped rank files and the template's canonical JSON."""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import sys
from importlib import resources

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings

from service.core.accounting import Accountant
from service.core.conversation import ChatExample
from service.core.encodings import BUILTIN_ENCODINGS
from service.core.outputs import Outputs
from service.core.packing import document_from_view
from service.core.templates import BUILTIN_TEMPLATES, get_template
from service.core.view import build_view
from tests.conftest import mtbench_conversations, sharegpt_conversations
from tests.unit.test_view import conversations
from workers.template_documents import TemplateDocuments
from workers.token_source import template_source, token_document, view_source

TEMPLATES = sorted(BUILTIN_TEMPLATES)


def _as_lists(doc: tuple[object, bytes, object]) -> tuple[list[int], list[bool], list[int]]:
    ids, mask, turns = doc
    return list(ids), [b == 1 for b in mask], list(turns)  # type: ignore[call-overload]


def _expected(example: ChatExample, template: str) -> tuple[list[int], list[bool], list[int]]:
    view = build_view(example, get_template(template))
    ids, _, turns = document_from_view(view)
    return ids, view.labels_mask(), turns


@pytest.mark.parametrize("template", TEMPLATES)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(example=conversations())
def test_lean_documents_equal_the_view(template: str, example: ChatExample) -> None:
    docs = TemplateDocuments(get_template(template))
    assert _as_lists(docs.doc(example)) == _expected(example, template)
    assert _as_lists(token_document(build_view(example, get_template(template)))) == _expected(
        example, template
    )


@pytest.mark.parametrize("template", TEMPLATES)
def test_lean_documents_equal_the_view_on_real_conversations(template: str) -> None:
    docs = TemplateDocuments(get_template(template))
    convos = mtbench_conversations() + sharegpt_conversations()[:200]
    system = {"role": "system", "content": "You answer questions about our product, briefly and politely."}
    for convo in convos:
        for messages in (convo["messages"], [system, *convo["messages"]]):
            example = msgspec.convert({"messages": messages}, ChatExample)
            assert _as_lists(docs.doc(example)) == _expected(example, template)  # cached prompt too
    if template == "harmony":  # the common case went through the per-role frames, not piece by piece
        assert docs._frames
        assert None not in docs._frames.values()


def test_template_source_names_the_rank_file_and_the_template() -> None:
    source = template_source("harmony")
    ranks = BUILTIN_ENCODINGS["o200k_harmony"].ranks.filename
    data = gzip.decompress(resources.files("service.core.data").joinpath(ranks).read_bytes())
    assert source.info.tokenizer_sha256 == hashlib.sha256(data).hexdigest()
    canonical = json.dumps(
        msgspec.to_builtins(get_template("harmony")), sort_keys=True, separators=(",", ":")
    )
    assert source.info.template_sha256 == hashlib.sha256(canonical.encode()).hexdigest()
    assert (source.info.template, source.info.profile, source.info.encoding) == (
        "harmony",
        None,
        "o200k_harmony",
    )


def test_view_source_defaults_to_harmony_and_reaches_profiles() -> None:
    outputs = msgspec.convert({"packed": {}, "tokenized": {"profile": "mine"}}, Outputs)
    assert outputs.packed is not None
    assert outputs.tokenized is not None
    example = msgspec.convert({"messages": [{"role": "user", "content": "hi"}]}, ChatExample)
    source = view_source(outputs.packed, "acme", lambda tenant, name: pytest.fail("no profile"))
    assert source.info.template == "harmony"
    assert source(example) == build_view(example, get_template("harmony"))
    asked: list[tuple[str, str]] = []

    def load(tenant: str, name: str) -> object:
        asked.append((tenant, name))
        raise LookupError(name)

    with pytest.raises(LookupError):
        view_source(outputs.tokenized, "acme", load)  # type: ignore[arg-type]
    assert asked == [("acme", "mine")]


def test_a_spec_names_a_template_or_a_profile_not_both() -> None:
    with pytest.raises(msgspec.ValidationError, match="not both"):
        msgspec.convert({"tokenized": {"template": "chatml", "profile": "mine"}}, Outputs)
    assert msgspec.convert({"tokenized": {}}, Outputs).tokenized.template == "harmony"  # type: ignore[union-attr]


def _agree(template: str, encoding: str) -> bool:
    spec, model = BUILTIN_ENCODINGS[get_template(template).encoding], BUILTIN_ENCODINGS[encoding]
    return (spec.ranks, spec.pattern) == (model.ranks, model.pattern)


def _reusing(template: str, encoding: str) -> tuple[Accountant, TemplateDocuments]:
    accountant, docs = Accountant(encoding), TemplateDocuments(get_template(template))
    assert docs.reuse(accountant) is _agree(template, encoding)
    assert accountant.keep_ids is _agree(template, encoding)
    return accountant, docs


@pytest.mark.parametrize("encoding", ["o200k_base", "cl100k_base"])
@pytest.mark.parametrize("template", TEMPLATES)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(example=conversations())
def test_documents_from_the_accountants_ids_equal_the_view(
    template: str, encoding: str, example: ChatExample
) -> None:
    """A build's token pass takes the ids its accountant kept (when the encodings agree): the
    documents are still the view's, and the accountant's counts are those it gives without."""
    accountant, docs = _reusing(template, encoding)
    assert accountant.chat(example) == Accountant(encoding).chat(example)
    assert _as_lists(docs.doc(example)) == _expected(example, template)


@pytest.mark.parametrize("template", TEMPLATES)
def test_documents_from_the_accountants_ids_on_real_conversations(template: str) -> None:
    accountant, docs = _reusing(template, "o200k_base")
    plain = Accountant("o200k_base")
    convos = mtbench_conversations() + sharegpt_conversations()[:200]
    system = {"role": "system", "content": "You answer questions about our product, briefly and politely."}
    for convo in convos:
        for messages in (convo["messages"], [system, *convo["messages"]]):
            example = msgspec.convert({"messages": messages}, ChatExample)
            assert accountant.chat(example) == plain.chat(example)
            assert _as_lists(docs.doc(example)) == _expected(example, template)
    kept = accountant.kept  # only the last example's texts are held
    assert set(kept) <= {m.content for m in example.messages}
    assert bool(kept) is _agree(template, "o200k_base")


_FRESH_WORKER = """
import json, sys
import msgspec
from service.core import encodings
from service.core.accounting import Accountant
from service.core.conversation import ChatExample
from service.core.templates import get_template
from workers.template_documents import TemplateDocuments

accountant, docs = Accountant("o200k_base"), TemplateDocuments(get_template("harmony"))
reused = docs.reuse(accountant)
example = msgspec.convert(json.loads(sys.argv[1]), ChatExample)
accountant.chat(example)
ids, mask, turns = docs.doc(example)
print(json.dumps([reused, sorted(encodings._encoding_cache), list(ids), [b == 1 for b in mask], list(turns)]))
"""


def test_reusing_the_accountants_encoding_never_builds_the_templates() -> None:
    """In a fresh process (a fresh worker), a harmony build on an o200k_base accountant gives the
    view's document without building o200k_harmony (~0.5 s for its thousand special tokens)."""
    value = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is 2 + 2?"},
            {"role": "assistant", "content": "4."},
        ]
    }
    run = subprocess.run(
        [sys.executable, "-c", _FRESH_WORKER, json.dumps(value)], capture_output=True, text=True, check=True
    )
    reused, built, ids, mask, turns = json.loads(run.stdout)
    assert reused is True
    assert built == ["o200k_base"]
    assert (ids, mask, turns) == _expected(msgspec.convert(value, ChatExample), "harmony")
