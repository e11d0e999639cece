"""A sharded build: plan → shard tasks on every worker → one finalize, safe to redeliver at every step.

- plan: cut the dataset's stored lines into shards of `shard_size` (a large batch becomes
  several shards), store the plan, enqueue one task per shard.
- shard: process its lines with the core and write its outputs, then its summary, then a
  completion marker, in that order. A redelivered shard finds the marker and only reports
  completion again. Completion is recorded in a Redis set; whoever sees the set complete
  enqueues the finalize (more than once is harmless).
- finalize: fold the summaries in shard order, drop cross-shard duplicates by content key,
  write the final artifacts in a fixed order, record their SHA-256, and remove the work files.

Everything written depends only on the batches and the recipe, never on timing or on which
worker ran what, so the same build gives byte-identical artifacts with 1 or 10 workers; the
reports also name their build (job id, creation date), and differ from job to job in that alone.
Cancel is honoured at every shard and at the finalize; a cancelled build leaves no final
artifacts.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from array import array
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from service.core import shards
from service.core.conversation import chat_of
from service.core.dedupe import find_duplicates, signature
from service.core.formats import Format, read_records
from service.core.models import extend, load_table
from service.core.outputs import JsonlOutput, Outputs, PackedSpec, TokenizedSpec
from service.core.packing import Planner
from service.core.pipeline import BuildInfo, OutputExample, Processor, Summary
from service.core.problems import Action, Problem, problem
from service.core.report_html import render_html
from service.core.split import SplitError, SplitReport, SplitSide, SplitSpec, assign
from service.core.targets import registry
from service.jobs import BuildSpec, ErrorCode
from service.queue import FINALIZE_TASK, SHARD_TASK, enqueue
from service.store.blobs import BlobStore
from service.times import rfc3339
from workers.context import JobContext
from workers.packed_output import PackedWriter, PieceRefs, manifest_bytes, stream_groups
from workers.resilience import best_effort, until_recorded
from workers.target_output import TargetFiles
from workers.token_source import LoadProfile, SourceInfo, TokenSource, TokenSpec, view_source, worker_profiles
from workers.token_spill import ShardDocs, SpillReader, SpillWriter, spill_keys
from workers.tokenized_output import SIDES, TokenizedWriter
from workers.tokenized_output import manifest_of as tokenized_manifest

MAX_ATTEMPTS = 3  # a shard that keeps killing its worker fails the build instead of looping
_json = msgspec.json.Encoder()


def _processor(spec: BuildSpec, cls: type[Processor] = Processor) -> Processor:
    return cls(spec.recipe, extend(load_table(), spec.models) if spec.models else None)


def plan_build(job_id: str) -> None:
    ctx = JobContext(job_id)
    if not ctx.live or ctx.cancel_if_asked():
        return
    started = ctx.start("planning")
    spec = ctx.build
    plan: list[dict[str, Any]] = []
    offset = 0
    for batch in ctx.state.batches(spec.dataset_id):
        n = int(batch["examples"])
        for start in range(0, n, spec.shard_size):
            end = min(n, start + spec.shard_size)
            plan.append({"key": batch["key"], "start": start, "end": end, "offset": offset + start})
        offset += n
    ctx.blobs.put(ctx.key("work/plan.json"), json.dumps(plan).encode())
    ctx.jobs.set_shards(job_id, len(plan), total=offset)
    if started:  # a plan sent again must not reset the count of examples its shards have done
        ctx.jobs.progress(job_id, "shards", 0, offset)
    if not plan:
        enqueue(ctx.settings, FINALIZE_TASK, [job_id])
    for index in range(len(plan)):
        enqueue(ctx.settings, SHARD_TASK, [job_id, index])


def _kind_format(ctx: JobContext, spec: BuildSpec) -> Format:
    dataset = ctx.state.get_dataset(ctx.tenant, spec.dataset_id) or {}
    return "preference" if dataset.get("kind") == "preference" else "openai"


def _shard_lines(ctx: JobContext, shard: dict[str, Any]) -> list[bytes]:
    lines = ctx.blobs.get(shard["key"]).split(b"\n")
    return [line + b"\n" for line in lines[shard["start"] : shard["end"]]]


class _ShardProcessor(Processor):
    """Duplicates are decided across the whole dataset at the finalize, not within a shard."""

    def _dedupe(
        self, outputs: list[OutputExample], line: int, problems: list[Problem]
    ) -> tuple[list[OutputExample], bool]:
        return outputs, False


def run_shard(job_id: str, index: int) -> None:
    ctx = JobContext(job_id)
    if not ctx.live or ctx.cancel_if_asked():
        return
    plan = json.loads(ctx.blobs.get(ctx.key("work/plan.json")))
    shard = plan[index]
    marker = ctx.key(f"work/shard-{index:05d}.done")
    if not ctx.blobs.exists(marker):  # a finished shard sent again is no attempt
        if ctx.jobs.count_shard_attempt(job_id, index) > MAX_ATTEMPTS:
            ctx.fail(ErrorCode.too_many_attempts, f"shard {index} failed {MAX_ATTEMPTS} times")
            return
        spec = ctx.build
        fmt = _kind_format(ctx, spec)
        processor = _processor(spec, _ShardProcessor)
        part = shards.ShardSummary(index=index, format=fmt)
        out: list[bytes] = []
        tags = token_tags(spec.outputs)
        try:
            sources: dict[str, TokenSource] = {
                tag: view_source(token_spec, ctx.tenant, _profiles())
                for tag, token_spec in _unique(tags).items()
            }
        except (LookupError, ValueError) as e:  # the profile was deleted, or its files no longer load
            ctx.fail(ErrorCode.profile_unavailable, f"the build's model profile cannot be loaded: {e}")
            return
        changed = _changed_profile(spec, sources)
        if changed is not None:
            ctx.fail(ErrorCode.profile_changed, changed)
            return
        scratch = ctx.settings.data_dir / "tmp"  # beside a local blob store: spill files move, not copy
        scratch.mkdir(parents=True, exist_ok=True)
        spill_dir = Path(tempfile.mkdtemp(prefix=f"tuneset-shard-{index:05d}-", dir=scratch))
        spills = {tag: SpillWriter(source.info, spill_dir / tag) for tag, source in sources.items()}
        for source in sources.values():  # the accountant has just encoded each output example's texts
            source.reuse(processor.accountant)
        try:
            lines = _shard_lines(ctx, shard)
            offset = shard["offset"]
            for record in read_records(lines, fmt):
                record.line += offset  # line numbers run on across the dataset's batches, in push order
                for p in record.problems:
                    p.line = record.line
                outcome = processor.process(record)
                shards.add_outcome(part, outcome)
                if spec.dedupe is not None and spec.dedupe.near:
                    for row, o in zip(
                        part.rows[len(part.rows) - len(outcome.outputs) :], outcome.outputs, strict=True
                    ):
                        row.sig = signature(o.example, spec.dedupe.num_perm)
                for o in outcome.outputs:
                    example = o.example if fmt == "preference" else chat_of(o.example)
                    line = _json.encode(example)
                    out.append(line + b"\n")
                    if spills:  # the token document this example becomes in the token-level outputs
                        chat, digest = chat_of(o.example), hashlib.sha256(line).digest()
                        for tag, spill in spills.items():
                            spill.add(sources[tag].document(chat), digest)
            ctx.blobs.put(ctx.key(f"work/shard-{index:05d}.jsonl"), b"".join(out))
            for tag, spill in spills.items():
                tok, idx = spill_keys(ctx.key("work/"), index, tag)
                path, idx_bytes = spill.finish()
                ctx.blobs.put_file(tok, path, move=True)
                ctx.blobs.put(idx, idx_bytes)
        finally:
            shutil.rmtree(spill_dir, ignore_errors=True)
        del spills
        ctx.blobs.put(ctx.key(f"work/shard-{index:05d}.summary"), shards.encode(part))
        ctx.blobs.put(marker, b"")
        if ctx.cancel_if_asked():  # cancelled while this shard ran: leave nothing behind
            return
    examples = shard["end"] - shard["start"]
    completed = until_recorded(lambda: ctx.jobs.complete_shard(job_id, index, examples))
    job = ctx.jobs.get(job_id) or {}
    best_effort(
        lambda: ctx.jobs.event(
            job_id,
            "progress",
            {
                "stage": "shards",
                "done": job.get("done", 0),
                "total": job.get("total", 0),
                "shards_done": completed,
                "shards": len(plan),
            },
        )
    )
    if completed == len(plan):
        enqueue(ctx.settings, FINALIZE_TASK, [job_id])


def _lines_of(data: bytes) -> Iterator[bytes]:
    for line in data.split(b"\n"):
        if line:
            yield line + b"\n"


def _duplicates(spec: BuildSpec, processor: Processor, rows: list[shards.Row]) -> dict[int, Problem]:
    """Which rows (by position in dataset order) are duplicates, each with the problem it reports.

    With a `dedupe` recipe option, exact (and near) duplicates are dropped; without one, exact
    duplicates follow the `duplicate_example` policy (a warning by default)."""
    out: dict[int, Problem] = {}
    if spec.dedupe is not None:
        sigs = [row.sig for row in rows] if spec.dedupe.near else None
        for d in find_duplicates([row.key for row in rows], sigs, spec.dedupe).drops:
            how = "duplicates" if d.kind == "exact" else f"nearly duplicates (similarity {d.similarity:.2f})"
            p = problem("duplicate_example", f"the example {how} line {rows[d.of].line}", rows[d.index].line)
            p.action = Action.DROP.value
            out[d.index] = p
        return out
    action = processor.action("duplicate_example")
    seen: dict[bytes, int] = {}
    for i, row in enumerate(rows):
        first = seen.setdefault(row.key, row.line)
        if first != row.line:
            p = problem("duplicate_example", f"the example duplicates line {first}", row.line)
            p.action = action.value
            out[i] = p
    return out


def split_keys(rows: list[shards.Row]) -> list[bytes]:
    """The key each row is split by: its line's first example's. The windows of one long
    conversation and the per-turn examples of one line share their turns, so they all land on
    one side; a validation example never holds a training example's trained turn as context."""
    first: dict[int, bytes] = {}
    return [first.setdefault(row.line, row.key) for row in rows]


def finalize_build(job_id: str) -> None:
    ctx = JobContext(job_id)
    if ctx.job and not ctx.live:  # a finalize that died after ending the job left its work files
        ctx.blobs.delete_prefix(ctx.key("work/"))
    if not ctx.live or ctx.cancel_if_asked():
        return
    spec = ctx.build
    plan = json.loads(ctx.blobs.get(ctx.key("work/plan.json")))
    totals = ctx.jobs.get(job_id) or {}
    best_effort(
        lambda: ctx.jobs.progress(job_id, "finalizing", totals.get("done", 0), totals.get("total", 0))
    )
    processor = _processor(spec)
    summary = Summary(processor)
    parts = [shards.decode(ctx.blobs.get(ctx.key(f"work/shard-{i:05d}.summary"))) for i in range(len(plan))]
    rows = [row for part in parts for row in part.rows]
    duplicates = _duplicates(spec, processor, rows)
    kept_keys = [k for i, k in enumerate(split_keys(rows)) if not _drops(duplicates.get(i))]
    try:
        validation_flags = iter(assign(kept_keys, spec.split or SplitSpec(), processor.model.min_examples))
    except SplitError as e:
        ctx.fail(ErrorCode.split_failed, str(e), result={"shards": len(plan)})
        return
    scratch = ctx.settings.data_dir / "tmp"  # beside a local blob store: finished files move, not copy
    scratch.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="tuneset-finalize-", dir=scratch))
    try:
        _finalize(ctx, spec, plan, processor, summary, parts, rows, duplicates, validation_flags, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _finalize(
    ctx: JobContext,
    spec: BuildSpec,
    plan: list[Any],
    processor: Processor,
    summary: Summary,
    parts: list[shards.ShardSummary],
    rows: list[shards.Row],
    duplicates: dict[int, Problem],
    validation_flags: Iterator[bool],
    work: Path,
) -> None:
    selected = spec.outputs
    max_bytes = (selected.openai_jsonl or JsonlOutput()).max_file_bytes
    preference = any(part.format == "preference" for part in parts)
    targets = [TargetFiles(t, work, max_bytes, preference) for t in registry.ordered(selected.target_names())]
    validation_side = SplitSide(0, 0, 0)
    side_of = bytearray(len(rows))  # per row in dataset order: NOWHERE, TRAIN or VALIDATION
    position = 0
    for index, part in enumerate(parts):
        sides: list[str] = []  # where each of the shard's lines goes: train, validation or nowhere
        kept: list[shards.Row] = []
        outputs = Counter(row.line for row in part.rows)  # a line may give several (windows, turns)
        for row in part.rows:
            dup = duplicates.get(position)
            position += 1
            if dup is not None:
                part.problems.append(dup)
                if _drops(dup):
                    outputs[row.line] -= 1
                    if not outputs[row.line]:  # the line is dropped once none of its outputs is left
                        part.n_ok -= 1
                        if dup.action == "fail":
                            part.n_failed += 1
                        else:
                            part.n_dropped += 1
                    sides.append("")
                    continue
            if next(validation_flags):
                validation_side.examples += 1
                validation_side.billed_total += row.billed
                validation_side.trained_total += row.trained
                sides.append("validation")
                side_of[position - 1] = VALIDATION
                continue
            kept.append(row)
            side_of[position - 1] = TRAIN
            sides.append("train")
        shards.merge(summary, part, kept)
        if targets:
            data = ctx.blobs.get(ctx.key(f"work/shard-{index:05d}.jsonl"))
            for files in targets:
                _route(data, sides, part.rows, files, processor, spec.recipe.model)
    jsonl: list[tuple[str, Path, str, str, str]] = []
    summaries: dict[str, Any] = {}
    for files in targets:
        written, summaries[files.target.name] = files.close(processor.action)
        jsonl += [(name, path, digest, files.target.name, side) for name, path, digest, side in written]
        if not files.copies:  # the report names what a target could not take (openai's are the pipeline's)
            summary.add_problems(files.problems)
    # The training file's report (validation tokens are not charged); the split says what went where.
    report = summary.report(
        split=_split_report(spec.split, summary, validation_side), build=_build_info(ctx, spec)
    )
    artifacts: list[dict[str, Any]] = []
    if selected.report is not None or not report.ok:  # a failed build always says why
        artifacts.append(_store(ctx, "report.json", msgspec.json.format(_json.encode(report))))
    packing: dict[str, Any] | None = None
    tokenized: dict[str, Any] | None = None
    if report.ok:
        artifacts += [
            {**_store_file(ctx, name, path, sha256), "target": target, "side": side}
            for name, path, sha256, target, side in jsonl
        ]
        if selected.packed is not None:
            packing = _pack(ctx, selected.packed, len(parts), side_of, artifacts, work)
            if _profile_mismatch(ctx, packing, len(plan), artifacts):
                return
        if selected.tokenized is not None:
            tokenized = _tokenize(
                ctx,
                selected.tokenized,
                spill_tag(selected, "tokenized"),
                len(parts),
                side_of,
                artifacts,
                work,
            )
            if _profile_mismatch(ctx, tokenized, len(plan), artifacts):
                return
    if selected.report is not None:
        dropped = [p for p in duplicates.values() if _drops(p)]
        page = render_html(
            report,
            histograms=summary.histograms(),
            packing={**packing["stats"], "fill": packing["fill"]} if packing else None,
            duplicates={"removed": len(dropped), "samples": [msgspec.to_builtins(p) for p in dropped[:20]]}
            if spec.dedupe is not None
            else None,
        )
        artifacts.insert(1, _store(ctx, "report.html", page.encode()))
    if packing is not None:
        del packing["fill"]  # for the report page's sequence-fill chart only; not kept in the job result
    if ctx.cancel_if_asked(stored=artifacts):  # asked while finalizing: no final artifacts stay behind
        return
    result: dict[str, Any] = {
        "artifacts": artifacts,
        "examples": report.examples,
        "examples_out": report.examples_out,
        "validation_examples": validation_side.examples,
        "duplicates_removed": sum(1 for p in duplicates.values() if _drops(p)),
        "tokens": {"billed_total": report.tokens.billed_total, "trained_total": report.tokens.trained_total},
        "estimated_cost_usd": report.estimated_cost_usd,
        "shards": len(plan),
    }
    if summaries:
        result["targets"] = summaries
    if packing is not None:
        result["packing"] = packing
    if tokenized is not None:
        result["tokenized"] = tokenized
    if report.ok:
        ctx.succeed(result)
    else:
        failing = sorted({p.code for p in report.problems if p.action == "fail"})
        message = (
            f"{report.examples_failed} example(s) failed the recipe's policies "
            f"({', '.join(failing)}); see report.json"
        )
        ctx.fail(ErrorCode.validation_failed, message, result=result)
        return
    ctx.blobs.delete_prefix(ctx.key("work/"))


def _profile_mismatch(
    ctx: JobContext, output: dict[str, Any], shards_n: int, artifacts: list[dict[str, Any]]
) -> bool:
    """A token-level output whose shards were tokenized by another version of its profile fails
    the build (`profile_changed`), and what the build had stored goes."""
    if not isinstance(output.get("error"), str):
        return False
    ctx.fail(ErrorCode.profile_changed, output["error"], result={"shards": shards_n}, stored=artifacts)
    return True


def _split_report(split: SplitSpec | None, summary: Summary, validation: SplitSide) -> SplitReport | None:
    if split is None or not split.enabled:
        return None
    train = SplitSide(len(summary.billed), sum(summary.billed), sum(summary.trained))
    return SplitReport(
        validation_fraction=split.validation_fraction,
        validation_count=split.validation_count,
        seed=split.seed,
        train=train,
        validation=validation,
    )


def _build_info(ctx: JobContext, spec: BuildSpec) -> BuildInfo:
    return BuildInfo(
        job_id=ctx.job_id,
        dataset_id=spec.dataset_id,
        created_at=rfc3339(float(ctx.job.get("created_at") or 0)),
        recipe=spec.recipe,
    )


def artifact_digests(blobs: BlobStore, job: dict[str, Any]) -> dict[str, str]:
    """A finished build's artifacts by name, each the SHA-256 of its bytes but the reports' with
    the build they name (job id, creation date) taken out: what two builds of the same batches
    and recipe must share, whatever the workers did."""
    out: dict[str, str] = {}
    for a in job["result"]["artifacts"]:
        data = blobs.get(a["key"])
        if a["name"] == "report.json":
            report = msgspec.json.decode(data)
            report.pop("build", None)
            data = _json.encode(report)
        elif a["name"] == "report.html":
            date = rfc3339(job["created_at"]).encode()
            data = data.replace(job["id"].encode(), b"JOB").replace(date, b"DATE")
        out[a["name"]] = hashlib.sha256(data).hexdigest()
    return out


NOWHERE, TRAIN, VALIDATION = 0, 1, 2


def token_tags(outputs: Outputs) -> dict[str, TokenSpec]:
    """The token-level outputs by spill tag; the tokenized output shares the packed one's
    documents when both name the same template or profile."""
    tags: dict[str, TokenSpec] = {}
    if outputs.packed is not None:
        tags["packed"] = outputs.packed
    if outputs.tokenized is not None:
        tags["tokenized"] = outputs.tokenized
    return tags


def _same_source(a: TokenSpec, b: TokenSpec) -> bool:
    return (a.template, a.profile) == (b.template, b.profile)


def _unique(tags: dict[str, TokenSpec]) -> dict[str, TokenSpec]:
    """The tags whose documents are spilled: tokenized is dropped when it can read packed's."""
    if "packed" in tags and "tokenized" in tags and _same_source(tags["packed"], tags["tokenized"]):
        return {"packed": tags["packed"]}
    return tags


def spill_tag(outputs: Outputs, tag: str) -> str:
    """The tag whose spill files hold `tag`'s documents."""
    return tag if tag in _unique(token_tags(outputs)) else "packed"


def _profiles() -> LoadProfile:
    """The workers' profile loader, looked up only when a spec names a profile."""

    def load(tenant: str, name: str) -> Any:
        return worker_profiles()(tenant, name)

    return load


def _changed_profile(spec: BuildSpec, sources: dict[str, TokenSource]) -> str | None:
    """A profile replaced (same name, other files) since the build was submitted fails the build
    (`profile_changed`, with this message): its tokens would not be the ones the recipe was
    checked against."""
    for source in sources.values():
        info = source.info
        wanted = (spec.profiles or {}).get(info.profile or "")
        if info.profile is not None and wanted is not None and wanted != info.profile_hash:
            return (
                f"model profile {info.profile!r} was replaced after the build was submitted "
                f"(content hash {wanted[:12]} then, {(info.profile_hash or '')[:12]} now); build again"
            )
    return None


def _one_source(source: SourceInfo | None, docs: ShardDocs, shard: int) -> SourceInfo | str:
    """Every shard must have used the same tokenizer and template (a profile replaced mid-build
    would not); else the message the build fails with (`profile_changed`)."""
    if source is None or docs.source == source:
        return docs.source
    return (
        f"shard {shard} was tokenized with another version of profile {docs.source.profile!r} "
        f"than shard 0 (tokenizer {docs.source.tokenizer_sha256[:12]} vs {source.tokenizer_sha256[:12]}); "
        "build again"
    )


def _pack(
    ctx: JobContext,
    packed: PackedSpec,
    shards_n: int,
    side_of: bytearray,
    artifacts: list[dict[str, Any]],
    work: Path,
) -> dict[str, Any]:
    """Pack the training examples' token documents globally and store the Parquet shards.

    Planned from the spill indexes (lengths and turn offsets) alone; each row group's tokens are
    then read from the spill files as it is written. A document's id is its position in dataset
    order, so a sequence names exactly where its documents came from."""
    reader = SpillReader(ctx.blobs, ctx.key("work/"), "packed", work)
    planner = Planner(packed.seq_len, packed.oversize)
    seq_len = packed.seq_len
    piece_shard, piece_start, piece_doc = array("i"), array("q"), array("q")
    source: SourceInfo | None = None
    position = unrenderable = 0
    try:
        for shard in range(shards_n):
            docs = reader.index(shard)
            checked = _one_source(source, docs, shard)
            if isinstance(checked, str):
                return {"error": checked}
            source = checked
            starts = docs.starts.tolist()
            for k, n in enumerate(docs.lengths.tolist()):
                if side_of[position] == TRAIN:
                    if n < 0:
                        unrenderable += 1
                    else:
                        for a, _ in planner.add(n, docs.turn_starts(k) if n > seq_len else ()):
                            piece_shard.append(shard)
                            piece_start.append(starts[k] + a)
                            piece_doc.append(position)
                position += 1
        plan = planner.plan()
        refs = PieceRefs(
            np.frombuffer(piece_shard, dtype=np.int32) if piece_shard else np.zeros(0, np.int32),
            np.frombuffer(piece_start, dtype=np.int64) if piece_start else np.zeros(0, np.int64),
            np.frombuffer(piece_doc, dtype=np.int64) if piece_doc else np.zeros(0, np.int64),
        )
        writer = PackedWriter(work / "packed", seq_len, packed.rows_per_shard)
        for index, group in stream_groups(plan, refs, reader, packed.rows_per_shard, seq_len):
            writer.add(index, group)
    finally:
        reader.close()
    info = source or view_source(packed, ctx.tenant, _profiles()).info
    files, manifest = writer.close(
        template=info.template,
        encoding=info.encoding,
        stats=plan.stats,
        profile=info.profile,
        tokenizer_sha256=info.tokenizer_sha256,
        template_sha256=info.template_sha256,
        unrenderable=unrenderable,
    )
    for f in files:
        artifacts.append(_store_file(ctx, f"packed/{f.name}", f.path, f.sha256))
    artifacts.append(_store(ctx, "packed/manifest.json", manifest_bytes(manifest)))
    return {
        "sequences": plan.stats.sequences,
        "efficiency": manifest.get("efficiency"),
        "stats": msgspec.to_builtins(plan.stats),
        "unrenderable": unrenderable,
        "fill": writer.fill,
    }


def _tokenize(
    ctx: JobContext,
    spec: TokenizedSpec,
    tag: str,
    shards_n: int,
    side_of: bytearray,
    artifacts: list[dict[str, Any]],
    work: Path,
) -> dict[str, Any]:
    """Every kept example's tokens, one row each, on its side (train / validation), in dataset order."""
    reader = SpillReader(ctx.blobs, ctx.key("work/"), tag, work)
    folder = work / "tokenized"
    writers = {TRAIN: TokenizedWriter(folder, "train", spec.rows_per_shard)}
    writers[VALIDATION] = TokenizedWriter(folder, "validation", spec.rows_per_shard)
    source: SourceInfo | None = None
    position = unrenderable = 0
    try:
        for shard in range(shards_n):
            docs = reader.index(shard)
            checked = _one_source(source, docs, shard)
            if isinstance(checked, str):
                return {"error": checked}
            source = checked
            for k, doc in enumerate(reader.documents(shard, docs)):
                side = side_of[position]
                position += 1
                if side == NOWHERE:
                    continue
                if doc is None:
                    unrenderable += 1
                    continue
                writers[side].add(doc[0], doc[1], docs.sha256(k))
    finally:
        reader.close()
    info = source or view_source(spec, ctx.tenant, _profiles()).info
    sides = {}
    for side, writer in writers.items():
        files = writer.close()
        sides[SIDES[side - 1]] = (writer, files)
        for f in files:
            artifacts.append(_store_file(ctx, f"tokenized/{f.name}", f.path, f.sha256))
    if not writers[VALIDATION].rows:
        del sides["validation"]
    manifest = tokenized_manifest(info, sides, unrenderable)
    artifacts.append(_store(ctx, "tokenized/manifest.json", manifest_bytes(manifest)))
    return {"rows": manifest["rows"], "tokens": manifest["tokens"], "unrenderable": unrenderable}


def _route(
    data: bytes,
    sides: list[str],
    rows: list[shards.Row],
    files: TargetFiles,
    processor: Processor,
    model: str,
) -> None:
    """A shard's lines to their side of one target; a shard whose lines all train is copied in
    one piece when the target writes them as they are (openai)."""
    if files.copies and all(side == "train" for side in sides):
        files.sides["train"].write_lines(data, len(sides))
        return
    for side, line, row in zip(sides, _lines_of(data), rows, strict=True):
        if side:
            files.write(side, line, row.billed, row.line, processor.action, model)


def _store_file(ctx: JobContext, name: str, path: Path, sha256: str) -> dict[str, Any]:
    """Store a finished work file (moved, not copied, where the store allows it)."""
    size = path.stat().st_size
    key = ctx.key(name)
    ctx.blobs.put_file(key, path, move=True)
    return {"name": name, "key": key, "size": size, "sha256": sha256}


def _drops(p: Problem | None) -> bool:
    return p is not None and p.action in ("drop", "fix", "fail")


def _store(ctx: JobContext, name: str, data: bytes) -> dict[str, Any]:
    key = ctx.key(name)
    ctx.blobs.put(key, data)
    return {"name": name, "key": key, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
