"""Where a token-level output gets its training views: a built-in template or a tenant's profile.

`view_source(spec, tenant, load_profile)` answers one question per example: the exact training
view a self-hosted trainer will see, or None when the model's own template refuses the
conversation (the writer counts it as `unrenderable`, never crashes). The source also names
what a trainer must check before it trusts the tokens: the SHA-256 of the tokenizer file and of
the template. For a built-in template these are the SHA-256 of the encoding's rank file (the
uncompressed bytes, the hash tiktoken checks) and of the template's canonical JSON (sorted keys,
no spaces, UTF-8); for a profile, the profile's own `tokenizer_sha256` and `template_sha256`.
"""

from __future__ import annotations

import hashlib
import json
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from service.core.conversation import ChatExample
from service.core.encodings import BUILTIN_ENCODINGS
from service.core.packing import DEFAULT_TEMPLATE
from service.core.templates import ChatTemplate, get_template
from service.core.view import TrainingView, build_view

if TYPE_CHECKING:
    from service.core.accounting import Accountant
    from service.core.profiles import ModelProfile

ViewFn = Callable[[ChatExample], TrainingView | None]
LoadProfile = Callable[[str, str], "ModelProfile"]


class TokenSpec(Protocol):
    """What `PackedSpec` and `TokenizedSpec` share: exactly one of the two is set."""

    template: str | None
    profile: str | None


class SourceInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What the manifests say about where the tokens came from."""

    template: str | None
    profile: str | None
    encoding: str
    tokenizer_sha256: str
    template_sha256: str
    profile_hash: str | None = None  # the profile's content hash: what the shards must agree on


Document = tuple["array[int]", bytes, "array[int]"]  # int32 ids, trained mask, turn starts
DocumentFn = Callable[[ChatExample], Document | None]


@dataclass(frozen=True)
class TokenSource:
    """A callable view source that also says what it is (`info`) and gives the bare token
    document of an example (`document`), by the cheapest exact route it has."""

    view: ViewFn
    info: SourceInfo
    documents: DocumentFn | None = None
    reuse_ids: Callable[[Accountant], bool] | None = None

    def reuse(self, accountant: Accountant) -> bool:
        """Let `document` take the ids `accountant` kept for the example it last accounted,
        where they are exactly the ids it would compute (see `TemplateDocuments.reuse`)."""
        return self.reuse_ids is not None and self.reuse_ids(accountant)

    def __call__(self, example: ChatExample) -> TrainingView | None:
        return self.view(example)

    def document(self, example: ChatExample) -> Document | None:
        if self.documents is not None:
            return self.documents(example)
        view = self.view(example)
        return None if view is None else token_document(view)


def template_sha256(template: ChatTemplate) -> str:
    """SHA-256 of the template's canonical JSON: sorted keys, no spaces, UTF-8."""
    canonical = json.dumps(
        msgspec.to_builtins(template), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def template_source(name: str) -> TokenSource:
    template = get_template(name)
    info = SourceInfo(
        template=template.name,
        profile=None,
        encoding=template.encoding,
        tokenizer_sha256=BUILTIN_ENCODINGS[template.encoding].ranks.sha256,
        template_sha256=template_sha256(template),
    )
    from workers.template_documents import TemplateDocuments

    documents = TemplateDocuments(template)
    return TokenSource(lambda example: build_view(example, template), info, documents.doc, documents.reuse)


def profile_source(profile: ModelProfile) -> TokenSource:
    from service.core.profiles import profile_view  # only builds that name a profile need it

    info = SourceInfo(
        template=None,
        profile=profile.name,
        encoding=f"{profile.tokenizer.kind}:{profile.tokenizer_sha256[:12]}",
        tokenizer_sha256=profile.tokenizer_sha256,
        template_sha256=profile.template_sha256,
        profile_hash=profile.content_hash,
    )

    def view(example: ChatExample) -> TrainingView | None:
        return profile_view(profile, example).view

    return TokenSource(view, info)


def view_source(spec: TokenSpec, tenant: str, load_profile: LoadProfile) -> TokenSource:
    """The view of each example under the spec's template, or under the tenant's profile."""
    if spec.profile is not None:
        return profile_source(load_profile(tenant, spec.profile))
    return template_source(spec.template or DEFAULT_TEMPLATE)


def worker_profiles() -> LoadProfile:
    """The workers' profile loader (`workers.profiles.load_profile`), imported on first use."""
    import importlib

    module: Any = importlib.import_module("workers.profiles")
    loader: LoadProfile = module.load_profile
    return loader


def token_document(view: TrainingView) -> tuple[array[int], bytes, array[int]]:
    """(input_ids as int32, trained mask (one byte per token), turn starts) of a view: a turn
    starts wherever a segment's message_index differs from the previous segment's."""
    ids: array[int] = array("i")
    mask = bytearray()
    turns: array[int] = array("i")
    previous: int | None = None
    for segment in view.segments:  # the turn rule of `packing.document_from_view`, exactly
        tokens = segment.token_ids
        n = len(ids)
        if n and segment.message_index != previous and (not turns or turns[-1] != n):
            turns.append(n)
        previous = segment.message_index
        if tokens:
            ids.extend(tokens)
            mask += (b"\x01" if segment.trained else b"\x00") * len(tokens)
    return ids, bytes(mask), turns
