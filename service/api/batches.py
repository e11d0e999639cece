"""Batch ingestion: POST /v1/datasets/{id}/batches; list them; DELETE one to undo a bad push.

The body is JSONL (`application/jsonl`, `application/x-ndjson`) or JSON `{"examples": [...]}`,
optionally gzip-encoded (decompressed under the same size cap as raw bodies). Every line is
decoded (`formats`) and linted (`lint`); a line is bad when it has a problem of the schema layer
(what the provider's own file check rejects: invalid JSON, wrong types, unknown keys, ...) or is
of the other kind than its dataset. By default one bad line rejects the batch (422, every
problem listed, nothing stored); `?on_invalid=skip` stores the good lines and lists the rest.
Stored batches are canonical JSONL of the converted examples, one blob per batch.

An `Idempotency-Key` makes a retry safe (`service.api.idempotency`); it is bound to the dataset,
the query and the raw body.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Request, Response, delete, get, post
from litestar.di import NamedDependency
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIType, Operation, RequestBody, Schema
from litestar.params import FromPath, QueryParameter, RawBody

from service.api import Services
from service.api.bodies import JSON_TYPE, is_json, media_type, unsupported
from service.api.errors import ApiProblem, not_found, problems
from service.api.idempotency import IdempotencyKey, idempotent
from service.api.schemas import (
    Batch,
    BatchCreated,
    BatchJson,
    BatchPage,
    FormatName,
    ProblemItem,
)
from service.core.conversation import ChatExample, PreferenceExample
from service.core.formats import (
    DECODE_ERRORS,
    Format,
    Record,
    convert_value,
    decode_reason,
    detect_format,
    parse_format,
    read_records,
)
from service.core.lint import lint
from service.core.problems import CODES
from service.store.state import hash_key, new_id, now
from service.times import rfc3339

JSONL_TYPES = frozenset({"application/jsonl", "application/x-ndjson", "application/jsonlines"})

_encoder = msgspec.json.Encoder()
_batch_json = msgspec.json.Decoder(BatchJson)


# -- bodies -----------------------------------------------------------------------------------


def decode_body(body: bytes, content_encoding: str | None, cap: int) -> bytes:
    """The body after its Content-Encoding (identity or gzip), at most `cap` bytes (else 413)."""
    encoding = (content_encoding or "identity").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "x-gzip"):
        raise ApiProblem(
            415, "unsupported-encoding", f"Content-Encoding {encoding!r} is not supported; use gzip or none"
        )
    out = bytearray()
    data = body
    try:
        while data:  # concatenated gzip members are one stream
            member = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
            out += member.decompress(data, cap + 1 - len(out))
            if len(out) > cap or member.unconsumed_tail:
                raise ApiProblem(413, "body-too-large", f"the decompressed body is larger than {cap} bytes")
            if not member.eof:
                raise ApiProblem(400, "invalid-gzip", "the gzip body is truncated")
            data = member.unused_data
    except zlib.error as e:
        raise ApiProblem(400, "invalid-gzip", f"the body is not valid gzip: {e}") from None
    return bytes(out)


@dataclass
class JsonlBody(Operation):
    """OpenAPI: the raw body is JSONL or `{"examples": [...]}`, not a decoded parameter."""

    def __post_init__(self) -> None:
        line = Schema(
            type=OpenAPIType.STRING, description="JSONL: one example per line, any supported format"
        )
        self.request_body = RequestBody(
            required=True,
            description='JSONL, one example per line, or JSON {"examples": [...]}; may be gzip-encoded.',
            content={
                "application/jsonl": OpenAPIMediaType(schema=line),
                "application/x-ndjson": OpenAPIMediaType(schema=line),
                JSON_TYPE: OpenAPIMediaType(
                    schema=Schema(
                        type=OpenAPIType.OBJECT,
                        properties={"examples": Schema(type=OpenAPIType.ARRAY, items=Schema())},
                        required=["examples"],
                    )
                ),
            },
        )


# -- checking ---------------------------------------------------------------------------------


@dataclass
class Checked:
    """A batch after checking: the canonical JSONL of its good examples and the bad lines' problems."""

    format: str | None = None
    good: list[bytes] = field(default_factory=list)
    bad_lines: int = 0
    problems: list[ProblemItem] = field(default_factory=list)


def _json_records(items: list[Any], fmt: Format | None, checked: Checked) -> Iterator[Record]:
    chosen: Format = fmt or next((f for f in map(detect_format, items[:100]) if f), None) or "openai"
    checked.format = chosen
    for line, obj in enumerate(items, 1):
        yield convert_value(obj, chosen, line)


def _kind_problem(example: ChatExample | PreferenceExample, kind: str, line: int) -> ProblemItem | None:
    if kind == "preference" and not isinstance(example, PreferenceExample):
        return ProblemItem(
            line,
            None,
            "invalid_preference",
            "a chat example in a preference dataset: each example needs input.messages, "
            "preferred_output and non_preferred_output",
        )
    if kind == "chat" and not isinstance(example, ChatExample):
        return ProblemItem(
            line,
            None,
            "missing_messages",
            "a preference example in a chat dataset: each example needs messages",
        )
    return None


def check(records: Iterable[Record], kind: str, checked: Checked) -> Checked:
    for record in records:
        example = record.example
        found = record.problems + lint(example, record.line) if example is not None else record.problems
        bad = [p for p in found if CODES[p.code].layer == "schema"]
        if example is None and not bad:
            bad = found
        items = [ProblemItem(p.line, p.message_index, p.code, p.message) for p in bad]
        if example is not None and not items:
            wrong = _kind_problem(example, kind, record.line)
            if wrong is not None:
                items = [wrong]
        if items or example is None:
            checked.bad_lines += 1
            checked.problems += items
            continue
        checked.good.append(_encoder.encode(example) + b"\n")
    return checked


def check_body(request: Request[Any, Any, Any], body: bytes, fmt: Format | None, kind: str) -> Checked:
    checked = Checked(format=fmt)
    kind_of_body = media_type(request)
    if is_json(kind_of_body):
        try:
            items = _batch_json.decode(body).examples
        except msgspec.ValidationError as e:
            raise ApiProblem(422, "invalid-request", f'a JSON batch is {{"examples": [...]}}: {e}') from None
        except DECODE_ERRORS as e:
            raise ApiProblem(400, "invalid-json", f"the body is not valid JSON: {decode_reason(e)}") from None
        return check(_json_records(items, fmt, checked), kind, checked)
    if kind_of_body in JSONL_TYPES:

        def detected(chosen: Format) -> None:
            checked.format = chosen

        return check(read_records(body.split(b"\n"), fmt, on_format=detected), kind, checked)
    raise unsupported(kind_of_body, "application/jsonl, application/x-ndjson or application/json")


def request_fingerprint(dataset_id: str, query: str, body: bytes) -> str:
    """What an Idempotency-Key is bound to: the dataset, the query and the raw body (SHA-256)."""
    return hashlib.sha256(f"{dataset_id}?{query}\n".encode() + body, usedforsecurity=False).hexdigest()


def format_param(value: FormatName | None) -> Format | None:
    """The named format; None (detect it) for auto or none. The schema admits no other value."""
    return parse_format(value)


# -- the controller ---------------------------------------------------------------------------

FormatQuery = Annotated[
    FormatName | None,
    QueryParameter(name="format", description="input format; auto or absent: detected from the examples"),
]


class BatchController(Controller):
    path = "/datasets/{dataset_id:str}/batches"
    tags = ("batches",)

    @post(
        operation_id="pushBatch",
        status_code=201,
        sync_to_thread=True,
        operation_class=JsonlBody,
        responses=problems(401, 404, 409, 413, 415, 422),
    )
    def push_batch(
        self,
        request: Request[Any, Any, Any],
        dataset_id: FromPath[str],
        body: RawBody,
        tenant: NamedDependency[str],
        services: NamedDependency[Services],
        fmt: FormatQuery = None,
        on_invalid: Annotated[
            Literal["reject", "skip"],
            QueryParameter(description="reject: any bad line refuses the batch; skip: store the good lines"),
        ] = "reject",
        idempotency_key: IdempotencyKey = None,
    ) -> Response[BatchCreated]:
        """Push examples into a dataset; every line is checked before anything is stored."""
        dataset = services.state.get_dataset(tenant, dataset_id)
        if dataset is None:
            raise not_found("dataset", dataset_id)
        fmt_value = format_param(fmt)
        return idempotent(
            services,
            tenant,
            idempotency_key,
            request_fingerprint(dataset_id, request.url.query, body),
            lambda: self._push(
                request, dataset, body, fmt_value, on_invalid, tenant, services, idempotency_key
            ),
            on_replay=services.metrics.batches.labels("replayed").inc,
        )

    def _push(
        self,
        request: Request[Any, Any, Any],
        dataset: dict[str, Any],
        body: bytes,
        fmt: Format | None,
        on_invalid: str,
        tenant: str,
        services: Services,
        idempotency_key: str | None,
    ) -> Response[BatchCreated]:
        raw = decode_body(body, request.headers.get("content-encoding"), services.settings.max_body_bytes)
        checked = check_body(request, raw, fmt, str(dataset["kind"]))
        if checked.bad_lines and on_invalid != "skip":
            services.metrics.batches.labels("rejected").inc()
            raise ApiProblem(
                422,
                "invalid-examples",
                f"{checked.bad_lines} of {checked.bad_lines + len(checked.good)} example(s) are invalid; "
                "nothing was stored (fix them, or push with ?on_invalid=skip)",
                errors=checked.problems,
            )
        if not checked.good:
            services.metrics.batches.labels("rejected").inc()
            raise ApiProblem(
                422,
                "empty-batch" if not checked.bad_lines else "invalid-examples",
                "the batch has no examples" if not checked.bad_lines else "no example of the batch is valid",
                errors=checked.problems or None,
            )
        batch_id = new_id("b")
        key = f"{tenant}/{dataset['id']}/batches/{batch_id}.jsonl"
        data = b"".join(checked.good)
        services.blobs.put(key, data)
        created_at = now()
        fmt_name = checked.format or "openai"
        services.state.add_batch(
            tenant,
            str(dataset["id"]),
            {
                "id": batch_id,
                "examples": len(checked.good),
                "bytes": len(data),
                "format": fmt_name,
                "created_at": created_at,
                "key": key,
                # so deleting the batch frees its key: the same push again stores it again
                **({"idempotency": hash_key(idempotency_key)} if idempotency_key else {}),
            },
        )
        services.metrics.batches.labels("stored").inc()
        services.metrics.batch_examples.inc(len(checked.good))
        services.metrics.batch_bytes.inc(len(data))
        return Response(
            BatchCreated(
                id=batch_id,
                dataset_id=str(dataset["id"]),
                examples=len(checked.good),
                skipped=checked.bad_lines,
                bytes=len(data),
                format=fmt_name,
                created_at=rfc3339(created_at),
                problems=checked.problems,
            ),
            status_code=201,
        )

    @get(operation_id="listBatches", sync_to_thread=True, responses=problems(401, 404))
    def list_batches(
        self, dataset_id: FromPath[str], tenant: NamedDependency[str], services: NamedDependency[Services]
    ) -> BatchPage:
        """The batches of a dataset, in push order (the order their lines are numbered in)."""
        if services.state.get_dataset(tenant, dataset_id) is None:
            raise not_found("dataset", dataset_id)
        return BatchPage(items=[batch_out(b) for b in services.state.batches(dataset_id)])

    @delete("/{batch_id:str}", operation_id="deleteBatch", sync_to_thread=True, responses=problems(401, 404))
    def delete_batch(
        self,
        dataset_id: FromPath[str],
        batch_id: FromPath[str],
        tenant: NamedDependency[str],
        services: NamedDependency[Services],
    ) -> None:
        """Undo a push: the batch's examples leave the dataset (and its counts) and its blob is deleted.

        Later builds no longer see them and the lines of later batches move up; builds already
        running keep what they planned (one that has yet to read this batch may fail). Jobs
        built before keep their artifacts. The Idempotency-Key it was pushed with is freed, so
        pushing the same batch again stores it again."""
        if services.state.get_dataset(tenant, dataset_id) is None:
            raise not_found("dataset", dataset_id)
        batch = services.state.delete_batch(dataset_id, batch_id)
        if batch is None:
            raise not_found("batch", batch_id)
        services.blobs.delete_prefix(str(batch["key"]))
        if batch.get("idempotency"):
            services.state.idempotency_forget(tenant, str(batch["idempotency"]))


def batch_out(batch: dict[str, Any]) -> Batch:
    return msgspec.convert({**batch, "created_at": rfc3339(batch["created_at"])}, Batch)
