"""The commands that talk to a running service through `tuneset.client`: push, build, jobs, get,
open, datasets, and `keys list/revoke` (an admin key).

They find the service as the client does (TUNESET_URL, TUNESET_API_KEY, or the config file,
`tuneset.config`). Exit status: 0 on success, 1 when the service refuses (the problem is printed)
or a build fails, 2 on usage errors, 3 when a watched build was cancelled.

`push` cuts a file into batches of whole lines under `--batch-bytes` and sends each with an
Idempotency-Key derived from the dataset and the batch's bytes: run again after an interruption,
the batches already stored are replayed (not stored twice) and the rest are pushed. A batch the
service still refuses as too large (413) is cut in two, which is as deterministic.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
import httpx
import msgspec
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from service.api.schemas import Artifact, BuildRequest, Dataset, Job
from tuneset.client import ApiError, ArtifactMismatch, Client, JobEvent
from tuneset.config import ConfigError

EXIT_FAILED, EXIT_CANCELLED = 1, 3
DEFAULT_BATCH_BYTES = 8 * 1024 * 1024  # well under the service's default 64 MiB body limit
DEFAULT_BATCH_LINES = 10_000

T = TypeVar("T")
_encoder = msgspec.json.Encoder()


def _fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


def _client() -> Client:
    try:
        return Client()
    except ConfigError as e:
        _fail(str(e))


def _call(client: Client, what: Callable[[], T]) -> T:
    """`what()`, with the service's refusals and an unreachable service as one-line errors."""
    try:
        return what()
    except ApiError as e:
        hint = ""
        if e.status == 401:
            hint = " (set TUNESET_API_KEY, or api_key in the config file: tuneset dev prints a key)"
        detail = "".join(f"\n  line {p.line}: {p.code}: {p.message}" for p in _problems(e))
        _fail(f"{e}{hint}{detail}")
    except httpx.TransportError as e:
        _fail(f"cannot reach tuneset at {client.config.url} ({e}); start it (tuneset dev) or set TUNESET_URL")


def _problems(e: ApiError, most: int = 20) -> list[Any]:
    return list((e.problem.errors or [])[:most]) if e.problem else []


def _console() -> Console:
    """Rich output; written to a pipe or file, lines are not cut at 80 columns (ids stay whole)."""
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=max(console.width, 160))
    return console


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def resolve_dataset(client: Client, ref: str) -> Dataset | None:
    """A dataset by id (`ds_...`) or by name; a name two datasets share is a usage error."""
    if ref.startswith("ds_"):
        try:
            return client.get_dataset(ref)
        except ApiError as e:
            if e.status == 404:
                return None
            raise
    named = [d for d in client.datasets() if d.name == ref]
    if len(named) > 1:
        ids = ", ".join(d.id for d in named)
        raise click.UsageError(f"{len(named)} datasets are named {ref!r} ({ids}): give an id")
    return named[0] if named else None


# -- push -------------------------------------------------------------------------------------


def read_lines(path: str) -> list[bytes]:
    """The examples of a JSONL file, or of a JSON array (each element re-encoded as one line)."""
    try:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as e:
        raise click.UsageError(f"cannot read {path}: {e.strerror}") from None
    if data.lstrip()[:1] == b"[":
        try:
            items = msgspec.json.decode(data)
        except msgspec.DecodeError as e:
            raise click.UsageError(f"{path} starts like a JSON array but is not valid JSON: {e}") from None
        return [_encoder.encode(item) for item in items]
    return [line.rstrip(b"\r") for line in data.split(b"\n") if line.strip()]


def cut_batches(lines: list[bytes], max_bytes: int, max_lines: int) -> list[list[bytes]]:
    """Consecutive runs of whole lines, each at most `max_lines` lines and `max_bytes` bytes (a
    longer line goes alone)."""
    batches: list[list[bytes]] = []
    current: list[bytes] = []
    size = 0
    for line in lines:
        if current and (len(current) >= max_lines or size + len(line) + 1 > max_bytes):
            batches.append(current)
            current, size = [], 0
        current.append(line)
        size += len(line) + 1
    if current:
        batches.append(current)
    return batches


def batch_key(dataset_id: str, fmt: str | None, on_invalid: str, body: bytes) -> str:
    """The Idempotency-Key of one batch: the same bytes pushed to the same dataset get the same key."""
    digest = hashlib.sha256(f"{dataset_id}|{fmt or ''}|{on_invalid}\n".encode() + body).hexdigest()
    return f"push-{digest[:48]}"


@click.command()
@click.argument("file")
@click.option("--dataset", "-d", "dataset_ref", required=True, help="The dataset's name or id.")
@click.option("--create", is_flag=True, help="Create the dataset when none has this name.")
@click.option(
    "--kind",
    type=click.Choice(["chat", "preference"]),
    default="chat",
    show_default=True,
    help="With --create: the new dataset's kind.",
)
@click.option("--format", "-f", "fmt", default=None, help="Input format (default: detected by the service).")
@click.option(
    "--on-invalid",
    type=click.Choice(["reject", "skip"]),
    default="reject",
    show_default=True,
    help="reject: a bad line refuses its batch; skip: store the good lines.",
)
@click.option("--batch-bytes", type=click.IntRange(min=1024), default=DEFAULT_BATCH_BYTES, show_default=True)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=DEFAULT_BATCH_LINES,
    show_default=True,
    help="Examples per batch at most.",
)
def push(
    file: str,
    dataset_ref: str,
    create: bool,
    kind: str,
    fmt: str | None,
    on_invalid: str,
    batch_bytes: int,
    batch_size: int,
) -> None:
    """Push FILE (JSONL or a JSON array, - for stdin) into a dataset, in batches; safe to re-run."""
    lines = read_lines(file)
    if not lines:
        raise click.UsageError(f"{file} holds no examples")
    console = _console()
    with _client() as client:
        dataset = _call(client, lambda: resolve_dataset(client, dataset_ref))
        if dataset is None:
            if not create or dataset_ref.startswith("ds_"):
                _fail(f"no dataset {dataset_ref!r} (--create makes one with this name)")
            dataset = _call(client, lambda: client.create_dataset(dataset_ref, kind))  # type: ignore[arg-type]
            console.print(f"created dataset {dataset.name} ({dataset.id})")
        ds = dataset
        batches = cut_batches(lines, batch_bytes, batch_size)
        counts = {"new": 0, "replayed": 0, "batches": 0, "skipped": 0}
        with _progress(console) as bar:
            task = bar.add_task(f"push {ds.name}", total=len(lines))

            def send(batch: list[bytes]) -> None:
                body = b"\n".join(batch) + b"\n"
                key = batch_key(ds.id, fmt, on_invalid, body)
                try:
                    pushed = client.push_batch(
                        ds.id,
                        body,
                        idempotency_key=key,
                        fmt=fmt,
                        on_invalid=on_invalid,  # type: ignore[arg-type]
                    )
                except ApiError as e:
                    if e.status == 413 and len(batch) > 1:  # over the service's limit: halve it
                        send(batch[: len(batch) // 2])
                        send(batch[len(batch) // 2 :])
                        return
                    raise
                counts["batches"] += 1
                counts["replayed" if pushed.replayed else "new"] += 1
                counts["skipped"] += pushed.batch.skipped
                state = "already stored" if pushed.replayed else "stored"
                if not console.is_terminal:
                    bar.console.print(
                        f"batch {counts['batches']}: {pushed.batch.examples} examples {state} "
                        f"({pushed.batch.id})"
                    )
                bar.advance(task, len(batch))

            for batch in batches:
                _call(client, lambda b=batch: send(b))  # type: ignore[misc]
        after = _call(client, lambda: client.get_dataset(ds.id))
    skipped = f", {counts['skipped']} bad lines skipped" if counts["skipped"] else ""
    console.print(
        f"pushed {len(lines)} examples to {after.name} ({after.id}) in {counts['batches']} batches: "
        f"{counts['new']} new, {counts['replayed']} already stored{skipped}; "
        f"the dataset has {after.examples} examples in {after.batches} batches"
    )


# -- build ------------------------------------------------------------------------------------


def load_recipe(path: str | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        text = Path(path).read_bytes()
        recipe = tomllib.loads(text.decode()) if path.endswith(".toml") else json.loads(text)
    except (OSError, ValueError) as e:
        raise click.UsageError(f"cannot read the recipe {path}: {e}") from None
    if not isinstance(recipe, dict):
        raise click.UsageError(f"the recipe {path} is not an object")
    return recipe


def build_request(
    recipe_file: str | None,
    model: str | None,
    policies: tuple[str, ...],
    system_prompt: str | None,
    train_on: str | None,
) -> BuildRequest:
    """The recipe file's fields, overridden by the options (policies merge, the options' win)."""
    recipe = load_recipe(recipe_file)
    merged = dict(recipe.get("policies") or {})
    for item in policies:
        code, sep, action = item.partition("=")
        if not sep or not code or not action:
            raise click.BadParameter(f"expected CODE=ACTION, got {item!r}", param_hint="--policy")
        merged[code.strip()] = action.strip()
    if merged:
        recipe["policies"] = merged
    for name, value in (("model", model), ("system_prompt", system_prompt), ("train_on", train_on)):
        if value is not None:
            recipe[name] = value
    try:
        return msgspec.convert(recipe, BuildRequest)
    except msgspec.ValidationError as e:
        raise click.UsageError(f"the recipe is not valid: {e}") from None


def watch_job(client: Client, job_id: str, console: Console) -> Job:
    """A live bar from the job's events until it ends; the job as it ended."""
    with _progress(console) as bar:
        task = bar.add_task("queued", total=None)

        def show(event: JobEvent) -> None:
            if event.type == "progress":
                total = int(event.data.get("total") or 0) or None
                bar.update(
                    task,
                    description=str(event.data.get("stage") or "running"),
                    completed=int(event.data.get("done") or 0),
                    total=total,
                )
            elif event.type == "status":
                bar.update(task, description=str(event.data.get("status")))

        def follow() -> None:
            for event in client.events(job_id):
                show(event)

        _call(client, follow)
        job = _call(client, lambda: client.get_job(job_id))
        if job.status == "succeeded" and job.progress.total:
            bar.update(task, completed=job.progress.total, total=job.progress.total)
    return job


def print_outcome(client: Client, job: Job, console: Console) -> int:
    """The job's ending and, when it has one, its report's summary; the exit status it means."""
    from service.cli import print_report  # the offline report's printer: one look for both
    from service.core.pipeline import Report

    artifacts = {a.name: a for a in _call(client, lambda: client.artifacts(job.id))}
    if "report.json" in artifacts:
        raw = _call(client, lambda: _read_artifact(client, job.id, "report.json"))
        print_report(msgspec.json.decode(raw, type=Report), job.id, console, command="build")
    if job.status == "succeeded":
        console.print(
            f"[green]succeeded[/]: {len(artifacts)} artifacts "
            f"(tuneset get {job.id} -o DIR; report: tuneset open {job.id})"
        )
        return 0
    error = f": {job.error.code}: {job.error.message}" if job.error else ""
    console.print(f"[red]{job.status}[/]{error}")
    return EXIT_CANCELLED if job.status == "cancelled" else EXIT_FAILED


def _read_artifact(client: Client, job_id: str, name: str) -> bytes:
    response = client.http.get(f"/v1/jobs/{job_id}/artifacts/{name}")
    if response.is_error:
        raise ApiError.of(response)
    return response.content


@click.command()
@click.argument("dataset_ref", metavar="DATASET")
@click.option("--model", "-m", default=None, help="Target model (default: the recipe's, else gpt-4o-mini).")
@click.option("--policy", "-p", "policies", multiple=True, metavar="CODE=ACTION", help="Repeatable.")
@click.option(
    "--recipe",
    "recipe_file",
    type=click.Path(dir_okay=False),
    help="A build recipe, JSON or TOML (the fields of POST /v1/datasets/{id}/builds).",
)
@click.option("--system-prompt", default=None, help="System prompt the no_system_message fix inserts.")
@click.option("--train-on", type=click.Choice(["all", "last"]), default=None)
@click.option(
    "--watch", "-w", is_flag=True, help="Follow the build live, print its report, exit with its outcome."
)
def build(
    dataset_ref: str,
    model: str | None,
    policies: tuple[str, ...],
    recipe_file: str | None,
    system_prompt: str | None,
    train_on: str | None,
    watch: bool,
) -> None:
    """Build DATASET (a name or id) into provider-ready files; prints the job id."""
    request = build_request(recipe_file, model, policies, system_prompt, train_on)
    console = _console()
    with _client() as client:
        dataset = _call(client, lambda: resolve_dataset(client, dataset_ref))
        if dataset is None:
            _fail(f"no dataset {dataset_ref!r}")
        ds = dataset
        started = _call(client, lambda: client.start_build(ds.id, request))
        console.print(f"build {started.job_id} of {ds.name} ({ds.id})")
        if not watch:
            return
        job = watch_job(client, started.job_id, console)
        sys.exit(print_outcome(client, job, console))


# -- jobs, get, open --------------------------------------------------------------------------


@click.command()
@click.option(
    "--status",
    type=click.Choice(["queued", "running", "succeeded", "failed", "cancelled"]),
    default=None,
    help="Only jobs in this status.",
)
@click.option(
    "--dataset", "-d", "dataset_ref", default=None, help="Only the jobs of this dataset (name or id)."
)
@click.option("--limit", "-n", type=click.IntRange(1, 200), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the page as JSON.")
def jobs(status: str | None, dataset_ref: str | None, limit: int, as_json: bool) -> None:
    """The newest jobs, with their status and progress."""
    with _client() as client:
        dataset_id = None
        if dataset_ref is not None:
            found = _call(client, lambda: resolve_dataset(client, dataset_ref))
            if found is None:
                _fail(f"no dataset {dataset_ref!r}")
            dataset_id = found.id
        page = _call(client, lambda: client.list_jobs(status, dataset_id, limit=limit))  # type: ignore[arg-type]
    if as_json:
        click.echo(msgspec.json.format(_encoder.encode(page), indent=2))
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for head in ("id", "kind", "status", "stage", "progress", "created"):
        table.add_column(head, no_wrap=True)
    for job in page.items:
        progress = f"{job.progress.done}/{job.progress.total}" if job.progress.total else ""
        table.add_row(job.id, job.kind, job.status, job.stage, progress, job.created_at)
    _console().print(table)


@click.command()
@click.argument("job_id", metavar="JOB")
@click.argument("names", nargs=-1, metavar="[ARTIFACT]...")
@click.option(
    "--output",
    "-o",
    "directory",
    type=click.Path(file_okay=False),
    default=".",
    show_default=True,
    help="Where the artifacts go (their folders are kept).",
)
def get(job_id: str, names: tuple[str, ...], directory: str) -> None:
    """Download a job's artifacts (all, or those named), each checked against its SHA-256."""
    out = Path(directory)
    with _client() as client:
        listed = _call(client, lambda: client.artifacts(job_id))
        chosen: list[Artifact] = listed
        if names:
            by_name = {a.name: a for a in listed}
            missing = [n for n in names if n not in by_name]
            if missing:
                _fail(f"job {job_id} has no artifact {', '.join(missing)} (it has: {', '.join(by_name)})")
            chosen = [by_name[n] for n in names]
        if not chosen:
            _fail(f"job {job_id} has no artifacts (yet: see tuneset jobs)")
        for artifact in chosen:
            try:
                path = _call(client, lambda a=artifact: client.download(job_id, a, out))  # type: ignore[misc]
            except (ArtifactMismatch, ValueError) as e:
                _fail(str(e))
            check = "sha256 ok" if artifact.sha256 else "no sha256 listed"
            click.echo(f"{path}  {artifact.size:,} bytes  {check}")


@click.command("open")
@click.argument("job_id", metavar="JOB")
def open_job(job_id: str) -> None:
    """Print the web page of a job (its progress, report and artifacts)."""
    with _client() as client:
        job = _call(client, lambda: client.get_job(job_id))
        click.echo(f"{client.config.url}/ui/jobs/{job.id}")


@click.command()
@click.option("--limit", "-n", type=click.IntRange(1, 200), default=50, show_default=True)
def datasets(limit: int) -> None:
    """The newest datasets, with their counts."""
    with _client() as client:
        page = _call(client, lambda: client.list_datasets(limit=limit))
    table = Table(box=None, pad_edge=False, header_style="bold")
    for head in ("id", "name", "kind", "batches", "examples", "created"):
        table.add_column(head, no_wrap=True)
    for d in page.items:
        table.add_row(d.id, d.name, d.kind, str(d.batches), str(d.examples), d.created_at)
    _console().print(table)


# -- keys (an admin key) ----------------------------------------------------------------------


@click.command("list")
@click.option("--tenant", default=None, help="Only this tenant's keys.")
def keys_list(tenant: str | None) -> None:
    """List API keys (needs an admin key): id, tenant, admin, last four characters, created."""
    with _client() as client:
        items = _call(client, lambda: client.list_keys(tenant))
    table = Table(box=None, pad_edge=False, header_style="bold")
    for head in ("id", "tenant", "admin", "key", "created"):
        table.add_column(head, no_wrap=True)
    for k in items:
        table.add_row(
            k.id, k.tenant, "yes" if k.admin else "", f"…{k.hint}" if k.hint else "", k.created_at or ""
        )
    _console().print(table)


@click.command("revoke")
@click.argument("key_id", metavar="KEY_ID")
def keys_revoke(key_id: str) -> None:
    """Revoke an API key by its id (needs an admin key); requests with it are refused from now on."""
    with _client() as client:
        _call(client, lambda: client.revoke_key(key_id))
    click.echo(f"revoked {key_id}")


COMMANDS: tuple[click.Command, ...] = (push, build, jobs, get, open_job, datasets)
KEY_COMMANDS: tuple[click.Command, ...] = (keys_list, keys_revoke)
