"""The `tuneset` command line. The offline commands (validate, inspect, convert, codes, models)
need no server: they run the core directly on a file.

Exit status: 0 when no example has an error (after the chosen policies), 1 when some do or
the file as a whole breaks a provider rule (too few examples), 2 on usage errors (bad
options, unknown model or code, unreadable file). click gives the 2.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import click
import msgspec
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from service.core import pipeline
from service.core.conversation import ChatExample, PreferenceExample, chat_of
from service.core.example_view import view_for
from service.core.formats import FORMATS, FormatError, Record, parse_format, read_records
from service.core.models import ModelError, ModelTable, load_table
from service.core.problems import CODES, codes_markdown
from service.core.profile_stage import special_strings
from service.core.profiles import (
    CHECK_CASES,
    TIKTOKEN_PRESETS,
    CheckRow,
    ModelProfile,
    ProfileError,
    TrainingRules,
    check_profile,
    load_hf_dir,
    profile_from_files,
    profile_view,
)
from service.core.repair import train_last_only
from service.core.report_html import render_html
from service.core.targets import registry as target_registry
from service.core.targets.writing import TargetSink
from service.core.templates import (
    BUILTIN_TEMPLATES,
    ChatTemplate,
    TemplateError,
    get_template,
)
from service.core.view import TrainingView, build_view

_json = msgspec.json.Encoder()


def _out(data: Any) -> None:
    sys.stdout.buffer.write(msgspec.json.format(_json.encode(data), indent=2) + b"\n")
    sys.stdout.flush()


def _usage(message: str) -> NoReturn:
    raise click.UsageError(message)


def _lines(path: str) -> Iterator[bytes]:
    if path == "-":
        yield from sys.stdin.buffer
        return
    try:
        f = open(path, "rb")  # noqa: SIM115 -- closed by the generator's finally
    except OSError as e:
        _usage(f"cannot read {path}: {e.strerror}")
    try:
        yield from f
    finally:
        f.close()


def _table(models: str | None) -> ModelTable:
    try:
        return load_table(Path(models) if models else None)
    except ModelError as e:
        _usage(str(e))


def _recipe(
    model: str,
    fmt: str | None,
    policies: tuple[str, ...],
    system_prompt: str | None,
    train_on: str,
    table: ModelTable,
    profile: ModelProfile | None = None,
) -> pipeline.Recipe:
    try:
        table.resolve(model)
        recipe = pipeline.Recipe(
            model=model,
            format=parse_format(fmt),
            policies=pipeline.parse_policies(policies),
            system_prompt=system_prompt,
            train_on="last" if train_on == "last" else "all",
            profile=profile,
        )
        pipeline.check_recipe(recipe)
    except (ModelError, FormatError, pipeline.PolicyError) as e:
        _usage(str(e))
    return recipe


_model_opt = click.option(
    "--model",
    "-m",
    default=pipeline.DEFAULT_MODEL,
    show_default=True,
    help="Target provider model (snapshot, alias or ft: name).",
)
_format_opt = click.option(
    "--format",
    "-f",
    "fmt",
    type=click.Choice(["auto", *FORMATS]),
    default="auto",
    show_default=True,
    help="Input format (auto-detected from the first example).",
)
_policy_opt = click.option(
    "--policy",
    "-p",
    "policies",
    multiple=True,
    metavar="CODE=ACTION",
    help="What to do about a problem code: keep, fix, drop or fail (repeatable).",
)
_system_opt = click.option("--system-prompt", help="System prompt the no_system_message fix inserts.")
_train_on_opt = click.option(
    "--train-on",
    type=click.Choice(["all", "last"]),
    default="all",
    show_default=True,
    help="'last': train only the final assistant turn of each example.",
)
_models_opt = click.option(
    "--models",
    type=click.Path(dir_okay=False),
    envvar="TUNESET_MODELS",
    help="TOML file that overrides or extends the model table.",
)


class ProfileFiles(msgspec.Struct, kw_only=True):
    """The model-profile options of a command, as given."""

    hf_dir: str | None = None
    tokenizer: str | None = None
    chat_template: str | None = None
    tokenizer_config: str | None = None
    tiktoken_preset: str | None = None

    @property
    def given(self) -> bool:
        return any(v is not None for v in msgspec.structs.astuple(self))


def _profile_options(f: Any) -> Any:
    """--hf-dir, or --tokenizer with --chat-template (and --tokenizer-config, --tiktoken-preset)."""
    options = [
        click.option(
            "--hf-dir",
            type=click.Path(file_okay=False),
            help="A Hugging Face model folder: tokenizer.json, tokenizer_config.json and/or "
            "chat_template.jinja. Renders with the model's own template and tokenizer.",
        ),
        click.option(
            "--tokenizer",
            type=click.Path(dir_okay=False),
            help="A tokenizer file: tokenizer.json (Hugging Face) or tiktoken ranks "
            "(tokenizer.model, *.tiktoken; with --tiktoken-preset).",
        ),
        click.option(
            "--chat-template",
            type=click.Path(dir_okay=False),
            help="The model's chat template (a .jinja file), with --tokenizer.",
        ),
        click.option(
            "--tokenizer-config",
            type=click.Path(dir_okay=False),
            help="tokenizer_config.json: chat_template, bos/eos and added tokens, with --tokenizer.",
        ),
        click.option(
            "--tiktoken-preset",
            type=click.Choice(sorted(TIKTOKEN_PRESETS)),
            help="Pattern and special tokens for a tiktoken rank file (tokenizer.model, *.tiktoken).",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _files(**values: Any) -> ProfileFiles:
    return ProfileFiles(**{k: v for k, v in values.items() if k in ProfileFiles.__struct_fields__})


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        _usage(f"cannot read {path}: {e.strerror}")


def load_profile(files: ProfileFiles, rules: TrainingRules) -> ModelProfile | None:
    """The model profile the options name (None when they name none); a bad file is a usage
    error naming the file and the rule it breaks, never a traceback."""
    if not files.given:
        return None
    picked = [files.tokenizer, files.chat_template, files.tokenizer_config, files.tiktoken_preset]
    if files.hf_dir is not None and any(v is not None for v in picked):
        _usage("--hf-dir and --tokenizer/--chat-template/--tokenizer-config/--tiktoken-preset are exclusive")
    try:
        if files.hf_dir is not None:
            return load_hf_dir(files.hf_dir, rules=rules)
        if files.tokenizer is None:
            _usage("--chat-template, --tokenizer-config and --tiktoken-preset need --tokenizer FILE")
        template: str | None = None
        if files.chat_template is not None:
            try:
                template = _read(files.chat_template).decode("utf-8")
            except UnicodeDecodeError as e:
                _usage(f"{files.chat_template} is not UTF-8 text: {e.reason} at byte {e.start}")
        tokenizer = Path(files.tokenizer)
        name = (
            Path(files.chat_template).stem if files.chat_template else tokenizer.parent.name or tokenizer.stem
        )
        return profile_from_files(
            name=name,
            tokenizer=_read(files.tokenizer),
            tokenizer_filename=tokenizer.name,
            chat_template=template,
            tokenizer_config=_read(files.tokenizer_config) if files.tokenizer_config else None,
            tiktoken_preset=files.tiktoken_preset,
            rules=rules,
        )
    except ProfileError as e:
        culprit = _culprit(files, e.code)
        where = f"{culprit}: " if culprit is not None and culprit.name not in e.message else ""
        _usage(f"model profile: {where}{e.message} ({e.code})")


def _culprit(files: ProfileFiles, code: str) -> Path | None:
    """The file a ProfileError is about, for a message that does not name it."""
    root = Path(files.hf_dir) if files.hf_dir is not None else None
    if code == "template_syntax":
        if files.chat_template is not None:
            return Path(files.chat_template)
        if root is not None:
            jinja = root / "chat_template.jinja"
            return jinja if jinja.is_file() else root / "tokenizer_config.json"
        return Path(files.tokenizer_config) if files.tokenizer_config else None
    if code in ("tokenizer_unloadable", "special_token_missing"):
        if files.tokenizer is not None:
            return Path(files.tokenizer)
        if root is not None:
            found = [root / "tokenizer.json", root / "tokenizer.model", *sorted(root.glob("*.tiktoken"))]
            return next((f for f in found if f.is_file()), None)
    return None


def _rules(train_eot: bool | None, train_on: str) -> TrainingRules:
    return TrainingRules(train_eot=train_eot is not False, train_on="last" if train_on == "last" else "all")


def _profile_for(files: ProfileFiles, train_eot: bool | None, train_on: str) -> ModelProfile | None:
    profile = load_profile(files, _rules(train_eot, train_on))
    if profile is None and train_eot is not None:
        _usage(
            "--train-eot/--no-train-eot need a model profile (--hf-dir, or --tokenizer and --chat-template)"
        )
    return profile


_train_eot_opt = click.option(
    "--train-eot/--no-train-eot",
    default=None,
    help="With a model profile (or --template): whether the end-of-turn token after a trained "
    "turn carries loss (default: it does).",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tuneset")
def main() -> None:
    """tuneset: see exactly what a model will be trained on, and fix it before you pay."""


@main.command()
@click.argument("file")
@_model_opt
@_format_opt
@_policy_opt
@_system_opt
@_train_on_opt
@_profile_options
@_train_eot_opt
@_models_opt
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON object; problems are grouped by code and action, with counts and sample lines.",
)
@click.option(
    "--per-example",
    is_flag=True,
    help="Also list every example's billed and trained tokens and every problem, one by one.",
)
@click.option(
    "--html",
    "html_path",
    type=click.Path(dir_okay=False, writable=True),
    help="Also write the report as a self-contained HTML page (with histograms) to this file.",
)
@click.option(
    "--target",
    "target_name",
    type=click.Choice(target_registry.names()),
    default=None,
    help="Also check every example against this training target's rules (`tuneset targets`).",
)
def validate(
    file: str,
    model: str,
    fmt: str,
    policies: tuple[str, ...],
    system_prompt: str | None,
    train_on: str,
    train_eot: bool | None,
    models: str | None,
    as_json: bool,
    per_example: bool,
    html_path: str | None,
    target_name: str | None,
    **profile_files: Any,
) -> None:
    """Check FILE (JSONL or a JSON array; '-' for stdin) the way the provider would, and count tokens.

    In the JSON, `problems` has one entry per code and action (its count, first lines and first
    messages); `--per-example` adds `problems_detail`, every finding. `line` is 1-based (the
    line of the file, or the array index + 1), `message_index` 0-based.

    With a model profile (--hf-dir, or --tokenizer and --chat-template) every example is also
    rendered with the model's own template and tokenizer: the `template_*` problem codes, and
    tokens counted as that model sees them.
    """
    table = _table(models)
    profile = _profile_for(_files(**profile_files), train_eot, train_on)
    recipe = _recipe(model, fmt, policies, system_prompt, train_on, table, profile)
    checker = TargetSink(target_registry.get(target_name), recipe) if target_name else None
    try:
        summary = pipeline.summarize(_lines(file), recipe, per_example=per_example, table=table, sink=checker)
    except FormatError as e:
        _usage(str(e))
    if checker is not None:
        checker.finish(summary)
    report = summary.report()
    if html_path:
        page = render_html(report, histograms=summary.histograms(), source=file)
        try:
            Path(html_path).write_text(page, encoding="utf-8")
        except OSError as e:
            _usage(f"cannot write {html_path}: {e.strerror}")
    if as_json:
        _out(report)
    else:
        print_report(report, file, Console())
    sys.exit(0 if report.ok else 1)


def print_report(report: pipeline.Report, file: str, console: Console, command: str = "validate") -> None:
    verdict = Text("OK", style="bold green") if report.ok else Text("ERRORS", style="bold red")
    console.print(Text.assemble((f"tuneset {command} ", "bold"), file, "  ", verdict))
    if report.profile is not None:
        name, _, digest = report.profile.partition("@")
        console.print(
            f"format {report.format or '?'} · profile {name} ({digest[:12]}) · limit from {report.model}"
        )
    else:
        console.print(f"format {report.format or '?'} · model {report.model}")
    t = Table(show_header=False, box=None, pad_edge=False)
    t.add_row("examples in", str(report.examples))
    t.add_row(
        "examples out",
        f"{report.examples_out}  (dropped {report.examples_dropped}, with errors {report.examples_failed})",
    )
    tok = report.tokens
    billed = "billed" if report.profile is None else "tokens"  # nobody bills a self-hosted model
    if report.profile is None:
        t.add_row("billed tokens", f"{tok.billed_total:,}  (billable per epoch {tok.billable_total:,})")
    else:
        t.add_row("tokens", f"{tok.billed_total:,}")
    t.add_row("trained tokens", f"{tok.trained_total:,}")
    if tok.billed_per_example:
        s = tok.billed_per_example
        t.add_row(
            f"{billed} / example",
            f"min {s.min:g} · p10 {s.p10:g} · median {s.median:g} · mean {s.mean:g} · "
            f"p90 {s.p90:g} · max {s.max:g}",
        )
    if tok.trained_per_example:
        s = tok.trained_per_example
        t.add_row(
            "trained / example",
            f"min {s.min:g} · p10 {s.p10:g} · median {s.median:g} · mean {s.mean:g} · "
            f"p90 {s.p90:g} · max {s.max:g}",
        )
    if report.profile is None:
        t.add_row("default epochs", str(report.default_epochs))
    if report.estimated_cost_usd is not None:
        t.add_row(
            "estimated cost",
            f"${report.estimated_cost_usd:,.2f}  "
            f"(${report.price_per_1m:g}/1M × {tok.billable_total:,} × {report.default_epochs})",
        )
    console.print(t)
    if report.problems:
        console.print()
        print_problems(report.problems, console)
    if report.fixes:
        fx = report.fix_effect
        console.print(
            "fixes: "
            + ", ".join(f"{k} × {v}" for k, v in report.fixes.items())
            + f"  (trained tokens {fx.trained_before:,} → {fx.trained_after:,} "
            f"on the {fx.examples:,} example(s) they changed)"
        )
    for note in report.notes:
        console.print(f"note: {note}")


MIN_EXAMPLE_WIDTH = 20


def print_problems(groups: list[pipeline.ProblemGroup], console: Console) -> None:
    """One row per code and action. Codes are what `--policy` takes, so they never wrap or
    shorten: the first example's message wraps in its column, or, in a narrow terminal, goes
    below the table; too narrow even for that, each group gets its own lines."""
    rows = [
        [
            g.code,
            g.severity,
            g.action or "",
            f"{g.count:,}",
            ", ".join(map(str, g.lines[:3])) + (" …" if g.count > 3 and g.lines else ""),
        ]
        for g in groups
    ]
    heads = ["code", "severity", "action", "count", "lines"]
    fixed = sum(max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(heads)) + 2 * len(heads)
    styles = ["red" if g.severity == "error" else "yellow" for g in groups]
    if fixed > console.width:
        console.print("problems")
        for g, row, style in zip(groups, rows, styles, strict=True):
            console.print(Text(g.code, style=style))
            where = f" · lines {row[4]}" if row[4] else ""
            console.print(f"  {row[1]} · {row[2]} · count {row[3]}{where}", overflow="fold")
            console.print(f"  {g.message}")
        return
    inline = console.width - fixed >= MIN_EXAMPLE_WIDTH
    pt = Table(title="problems", title_justify="left", box=None, pad_edge=False, header_style="bold")
    for head in heads:
        pt.add_column(head, no_wrap=True)
    if inline:
        pt.add_column("example", overflow="fold")
    for g, row, style in zip(groups, rows, styles, strict=True):
        pt.add_row(Text(row[0], style=style), *row[1:], *([g.message] if inline else []))
    console.print(pt)
    if not inline:
        for g, style in zip(groups, styles, strict=True):
            console.print(Text.assemble((g.code, style), ": ", g.message))


# ---------------------------------------------------------------------------------------------


@main.command()
@click.argument("file")
@click.option(
    "--line", "-n", "line_no", type=int, default=None, help="1-based line (default: the first example)."
)
@click.option("--model", "-m", default=None, help=f"Provider model (default {pipeline.DEFAULT_MODEL}).")
@click.option(
    "--template",
    "-t",
    type=click.Choice(sorted(BUILTIN_TEMPLATES)),
    default=None,
    help="Chat template for token-level training instead of a provider model.",
)
@_profile_options
@_train_eot_opt
@_train_on_opt
@_format_opt
@_models_opt
@click.option("--json", "as_json", is_flag=True, help="Print the view as JSON.")
def inspect(
    file: str,
    line_no: int | None,
    model: str | None,
    template: str | None,
    train_eot: bool | None,
    train_on: str,
    fmt: str,
    models: str | None,
    as_json: bool,
    **profile_files: Any,
) -> None:
    """Show the tokens of one example, which are trained, and why.

    With a model profile (--hf-dir, or --tokenizer and --chat-template) the example is rendered
    with the model's own template and tokenizer; what that finds is listed below the view (and
    under `findings` in the JSON). A conversation the template refuses exits 1 with its message.
    """
    files = _files(**profile_files)
    if sum(x for x in (bool(model), bool(template), files.given)) > 1:
        _usage("--model, --template and a model profile (--hf-dir, --tokenizer ...) are exclusive")
    table = _table(models)
    profile = load_profile(files, _rules(train_eot, train_on))
    record = _find(file, line_no, fmt)
    if record.example is None:
        for p in record.problems:
            click.echo(f"line {p.line}: {p.code}: {p.message}", err=True)
        sys.exit(1)
    if profile is not None:
        _inspect_profile(profile, record, train_on, as_json)
    if train_eot is not None and template is None:
        _usage("--train-eot/--no-train-eot need --template or a model profile")
    example = record.example
    if train_on == "last":
        example = _last_only(example)
    try:
        view = view_for(example, model, template, table, train_eot=train_eot is not False)
    except (ModelError, TemplateError) as e:
        _usage(str(e))
    if as_json:
        _out({"line": record.line, **msgspec.structs.asdict(view)})
    else:
        model_encoding = None if template else table.resolve(model or pipeline.DEFAULT_MODEL).encoding
        print_view(view, record.line, Console(highlight=False), model_encoding)
    sys.exit(0)


def _last_only(example: ChatExample | PreferenceExample) -> ChatExample | PreferenceExample:
    """`--train-on last`: weight 0 on every assistant turn but the final one."""
    if isinstance(example, PreferenceExample):
        return example  # its one trained turn is the preferred reply
    return train_last_only(example, None)[0]


def _inspect_profile(profile: ModelProfile, record: Record, train_on: str, as_json: bool) -> NoReturn:
    """`inspect` with a model profile: the view as the model's template and tokenizer make it."""
    assert record.example is not None
    example = _last_only(record.example) if train_on == "last" else record.example
    result = profile_view(profile, chat_of(example))
    findings = [msgspec.structs.asdict(_finding(f)) for f in result.findings]
    if as_json:
        view = msgspec.structs.asdict(result.view) if result.view is not None else {"rejected": True}
        _out(
            {
                "line": record.line,
                "profile": pipeline.profile_ref(profile),
                **view,
                "rendered": result.rendered,
                "findings": findings,
            }
        )
        sys.exit(0 if result.view is not None else 1)
    console = Console(highlight=False)
    if result.view is None:
        console.print(
            Text.assemble(("line ", "bold"), str(record.line), "  profile ", (profile.name, "bold"))
        )
    else:
        print_view(result.view, record.line, console, tokens=_profile_tokens(profile))
    for f in result.findings:
        where = f" (message {f.message_index})" if f.message_index is not None else ""
        style = "red" if CODES[f.code].severity == "error" else "yellow"
        console.print(Text.assemble((f.code, style), where, ": ", f.message))
    sys.exit(0 if result.view is not None else 1)


class FindingOut(msgspec.Struct):
    code: str
    severity: str
    message: str
    message_index: int | None


def _finding(f: Any) -> FindingOut:
    return FindingOut(f.code, CODES[f.code].severity, f.message, f.message_index)


@dataclass(frozen=True)
class TokenText:
    """How `print_view` shows a token: its text, and whether it is a special token."""

    piece: Callable[[int], str]
    special: Callable[[int], bool]


def _profile_tokens(profile: ModelProfile) -> TokenText:
    tok = profile.tokenizer
    ids = {tok.token_to_id(s) for s in special_strings(profile)}
    return TokenText(lambda t: tok.decode([t]), lambda t: t in ids)


def _find(file: str, line_no: int | None, fmt: str) -> Record:
    try:
        for record in read_records(_lines(file), parse_format(fmt)):
            if line_no is None or record.line == line_no:
                return record
    except FormatError as e:
        _usage(str(e))
    _usage(f"{file} has no example at line {line_no}" if line_no else f"{file} has no examples")


def print_view(
    view: TrainingView,
    line: int,
    console: Console,
    model_encoding: str | None = None,
    tokens: TokenText | None = None,
) -> None:
    """The view in colour. `model_encoding`: the view is of a provider model with that encoding
    (as `tuneset models` names it), which bills; otherwise of a chat template, which does not.
    `tokens`: how a model profile's tokenizer shows its tokens (default: the view's encoding)."""
    from service.core.encodings import get_encoding

    if tokens is None:
        enc = get_encoding(view.encoding)
        specials = set(enc._special_tokens.values())
        tokens = TokenText(
            lambda t: enc.decode_single_token_bytes(t).decode("utf-8", errors="replace"),
            lambda t: t in specials,
        )
        kind = "template"
    else:
        kind = "profile"
    kind, encoding = ("model", model_encoding) if model_encoding else (kind, view.encoding)
    console.print(
        Text.assemble(("line ", "bold"), str(line), f"  {kind} ", (view.target, "bold"), f"  ({encoding})")
    )
    text = Text()
    k = 0
    for seg in view.segments:
        for token in seg.token_ids:
            piece = tokens.piece(token)
            shade = k % 2
            k += 1
            if tokens.special(token):
                style = "bold magenta on grey23" if not seg.trained else "bold black on green3"
            elif seg.trained:
                style = "black on green3" if shade else "black on dark_sea_green2"
            else:
                style = "grey70 on grey19" if shade else "grey85 on grey30"
            text.append(piece.replace("\n", "↵\n"), style=style)
    console.print(text)
    console.print()
    t = Table(title="segments", title_justify="left")
    for col in ("#", "msg", "role", "tokens", "trained", "reason"):
        t.add_column(col)
    for i, seg in enumerate(view.segments):
        t.add_row(
            str(i),
            "" if seg.message_index is None else str(seg.message_index),
            seg.role or "",
            str(len(seg.token_ids)),
            "yes" if seg.trained else "",
            seg.reason,
        )
    console.print(t)
    for note in view.notes:
        console.print(f"note: {note}")
    trained = (" · trained tokens ", (str(view.trained_tokens), "bold green"))
    if model_encoding:
        counts = Text.assemble(
            "billed tokens ",
            (str(view.billed_tokens), "bold"),
            *trained,
            " · sequence length ",
            str(view.total_tokens),
        )
    else:  # a self-hosted template: nobody bills it, its tokens are the sequence
        counts = Text.assemble("tokens ", (str(view.total_tokens), "bold"), *trained)
    console.print(counts)
    console.print(
        Text.assemble(
            "legend: ",
            ("trained", "black on green3"),
            " ",
            ("not trained", "grey85 on grey30"),
            " ",
            ("special", "bold magenta on grey23"),
            "; shading alternates per token",
        )
    )


# ---------------------------------------------------------------------------------------------


@main.command()
@click.argument("file")
@click.option(
    "--to",
    "target",
    type=click.Choice([*target_registry.names(), "preference"]),
    required=True,
    help="A training target (`tuneset targets`). openai: OpenAI chat SFT lines; preference: "
    "OpenAI DPO lines; the others in their platform's format (preference lines from a "
    "preference input where the target takes them).",
)
@click.option(
    "--from",
    "fmt",
    type=click.Choice(["auto", *FORMATS]),
    default="auto",
    show_default=True,
    help="Input format.",
)
@_model_opt
@_policy_opt
@_system_opt
@_train_on_opt
@_profile_options
@_train_eot_opt
@_models_opt
@click.option(
    "--output", "-o", required=True, type=click.Path(dir_okay=False), help="Where to write the JSONL."
)
@click.option("--json", "as_json", is_flag=True, help="Print the validation report as JSON.")
def convert(
    file: str,
    target: str,
    fmt: str,
    model: str,
    policies: tuple[str, ...],
    system_prompt: str | None,
    train_on: str,
    train_eot: bool | None,
    models: str | None,
    output: str,
    as_json: bool,
    **profile_files: Any,
) -> None:
    """Write provider JSONL after the chosen fixes. Nothing is written unless every example passes.

    With a model profile, examples are checked (and fixed) as that model's template renders
    them; `template_rewrites_history=fix` writes one line per assistant turn."""
    table = _table(models)
    profile = _profile_for(_files(**profile_files), train_eot, train_on)
    recipe = _recipe(model, fmt, policies, system_prompt, train_on, table, profile)
    out_path = Path(output)
    if not out_path.parent.is_dir():
        _usage(f"cannot write {out_path}: {out_path.parent} is not a directory")
    fd, tmp_name = tempfile.mkstemp(prefix=".tuneset-", suffix=".jsonl", dir=out_path.parent)
    wrong_kind: list[int] = []
    ok = False
    try:
        with os.fdopen(fd, "wb") as sink_file:

            def sink(out: pipeline.OutputExample) -> None:
                example = out.example
                if target == "openai":
                    sink_file.write(_json.encode(chat_of(example)) + b"\n")
                elif isinstance(example, PreferenceExample):
                    sink_file.write(_json.encode(example) + b"\n")
                else:
                    wrong_kind.append(out.line)

            other = None
            if target not in ("openai", "preference"):
                other = TargetSink(target_registry.get(target), recipe, sink_file.write)
            try:
                summary = pipeline.summarize(_lines(file), recipe, sink=other or sink, table=table)
            except FormatError as e:
                _usage(str(e))
            if other is not None:
                other.finish(summary)
            report = summary.report()
        ok = report.ok and not wrong_kind and (other is None or other.ok)
        if ok:
            os.replace(tmp_name, out_path)
    finally:
        if not ok:  # nothing half-written, whatever went wrong
            os.unlink(tmp_name)
    if as_json:
        _out(report)
    else:
        print_report(report, file, Console(stderr=True))
    if wrong_kind:
        click.echo(
            f"{len(wrong_kind)} chat example(s) cannot become preference examples "
            f"(first at line {wrong_kind[0]})",
            err=True,
        )
    click.echo(
        f"wrote {other.lines if other else report.examples_out} examples to {out_path}"
        if ok
        else f"nothing written to {out_path}",
        err=True,
    )
    sys.exit(0 if ok else 1)


# ---------------------------------------------------------------------------------------------


@main.command(name="targets")
@click.option("--json", "as_json", is_flag=True, help="Print the targets as JSON.")
def targets_cmd(as_json: bool) -> None:
    """The training targets `convert --to`, `validate --target` and builds' `outputs.targets` name."""
    targets = list(target_registry.TARGETS.values())
    if as_json:
        _out(
            [
                {
                    "name": t.name,
                    "platform": t.facts.platform,
                    "kinds": sorted(t.kinds),
                    "uploads": t.uploads,
                    "files": t.file_names("train", 1)[0],
                    "rules": [{"code": r.code, "says": r.says} for r in t.rules],
                    "upload_hint": t.upload_hint,
                }
                for t in targets
            ]
        )
        return
    table = Table(box=box.SIMPLE)
    for column in ("target", "kinds", "uploads", "files", "codes"):
        table.add_column(column)
    for t in targets:
        codes = ", ".join(dict.fromkeys(r.code for r in t.rules))
        uploads = "yes" if t.uploads else "no"
        table.add_row(t.name, ", ".join(sorted(t.kinds)), uploads, t.file_names("train", 1)[0], codes)
    Console().print(table)


@main.command()
@click.option("--markdown", is_flag=True, help="Print the documentation page (docs/problem-codes.md).")
def codes(markdown: bool) -> None:
    """List every problem code, its severity, default and allowed actions."""
    if markdown:
        click.echo(codes_markdown(), nl=False)
        return
    for c in CODES.values():
        acts = "|".join(a.value for a in c.actions)
        click.echo(
            f"{c.code:29} {c.layer:9} {c.severity:7} default={c.default.value:4} [{acts}]  {c.summary}"
        )


@main.group()
def templates() -> None:
    """Chat templates: the built-in ones, and what a model's own template does with irregular
    conversations (consecutive assistant turns, assistant first, no system, trailing user, ...)."""


@templates.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print the templates as JSON.")
def templates_list(as_json: bool) -> None:
    """The built-in templates (`--template NAME`, `templates check NAME`). A model's own template
    comes with its tokenizer: --hf-dir DIR, or --tokenizer FILE --chat-template FILE."""
    builtins = sorted(BUILTIN_TEMPLATES.values(), key=lambda t: t.name)
    if as_json:
        _out(
            [
                {
                    "name": t.name,
                    "encoding": t.encoding,
                    "train_eot": t.train_end,
                    "description": t.description,
                }
                for t in builtins
            ]
        )
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for head in ("name", "encoding", "end-of-turn trained", "description"):
        table.add_column(head, no_wrap=head != "description")
    for t in builtins:
        table.add_row(t.name, t.encoding, "yes" if t.train_end else "no", t.description)
    Console(highlight=False).print(table)


@templates.command(name="check")
@click.argument("name", required=False, type=click.Choice(sorted(BUILTIN_TEMPLATES)))
@_profile_options
@_train_eot_opt
@_train_on_opt
@click.option("--json", "as_json", is_flag=True, help="Print the cases as JSON.")
def templates_check(
    name: str | None, train_eot: bool | None, train_on: str, as_json: bool, **profile_files: Any
) -> None:
    """How a template treats the fixed irregular conversations: for each, whether it is rendered,
    rejected (the template raises) or rewritten (earlier turns change), and what is trained.

    NAME is a built-in template; a model's own template comes with its tokenizer
    (--hf-dir DIR, or --tokenizer FILE --chat-template FILE)."""
    files = _files(**profile_files)
    if (name is None) == (not files.given):
        _usage(
            "give a built-in template NAME or a model profile "
            "(--hf-dir DIR, or --tokenizer FILE --chat-template FILE)"
        )
    profile = load_profile(files, _rules(train_eot, train_on))
    if profile is not None:
        rows = check_profile(profile)
        title = f"profile {profile.name} ({profile.content_hash[:12]})"
        what: dict[str, Any] = {"profile": profile.name, "content_hash": profile.content_hash}
    else:
        assert name is not None
        chosen = get_template(name)
        if train_eot is False:
            chosen = msgspec.structs.replace(chosen, train_end=False)
        rows = check_template(chosen, train_on)
        title = f"template {chosen.name} ({chosen.encoding})"
        what = {"template": chosen.name}
    if as_json:
        _out({**what, "cases": [_check_row(r) for r in rows]})
        return
    print_check(rows, title, Console(highlight=False))


def check_template(template: ChatTemplate, train_on: str) -> list[CheckRow]:
    """The irregular conversations under a built-in template: a declarative template renders any
    role order as it is and rewrites nothing, so every case is rendered; what differs is what
    is trained."""
    rows = []
    for case, example in CHECK_CASES.items():
        chat = train_last_only(example, None)[0] if train_on == "last" else example
        view = build_view(chat, template)
        rows.append(CheckRow(case=case, outcome="rendered", trained=trained_text(view), findings=[]))
    return rows


def trained_text(view: TrainingView) -> str:
    """What a view trains, as `check_profile` says it: each run of trained text quoted."""
    runs: list[str] = []
    current = ""
    for seg in view.segments:
        if seg.trained:
            current += seg.text
        elif current:
            runs.append(repr(current))
            current = ""
    if current:
        runs.append(repr(current))
    return " | ".join(runs) or "(nothing)"


def _check_row(row: CheckRow) -> dict[str, Any]:
    return {
        "case": row.case,
        "outcome": row.outcome,
        "trained": row.trained,
        "findings": [msgspec.structs.asdict(_finding(f)) for f in row.findings],
    }


_OUTCOME_STYLE = {"rendered": "green", "rejected": "bold red", "rewritten": "yellow"}


def print_check(rows: list[CheckRow], title: str, console: Console) -> None:
    """One line per case (codes only, so the table stays narrow), then each code's first message
    in full: a rejection in the template's own words."""
    table = Table(
        title=title,
        title_justify="left",
        header_style="bold",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        expand=True,
    )
    table.add_column("case", no_wrap=True)
    table.add_column("outcome", no_wrap=True)
    table.add_column("trained", overflow="fold", ratio=3)
    table.add_column("findings", overflow="fold", ratio=2)
    first: dict[str, tuple[str, str]] = {}
    for row in rows:
        codes = list(dict.fromkeys(f.code for f in row.findings))
        for f in row.findings:
            first.setdefault(f.code, (row.case, f.message))
        style = _OUTCOME_STYLE.get(row.outcome, "")
        table.add_row(row.case, Text(row.outcome, style=style), row.trained or "—", ", ".join(codes))
    console.print(table)
    for code, (case, message) in first.items():
        style = "red" if CODES[code].severity == "error" else "yellow"
        console.print(Text.assemble((code, style), f" ({case}): ", message))


@main.command(name="models")
@_models_opt
def models_cmd(models: str | None) -> None:
    """List the model table: encoding, per-example limit, price, minimum examples."""
    table = _table(models)
    aliases: dict[str, list[str]] = {}
    for alias, name in table.aliases.items():
        aliases.setdefault(name, []).append(alias)
    for name in table.names():
        m = table.models[name]
        price = f"${m.price_per_1m}/1M" if m.price_per_1m is not None else "no price"
        extra = f"  aliases: {', '.join(sorted(aliases[name]))}" if name in aliases else ""
        click.echo(
            f"{name:28} {m.encoding:12} limit {m.max_tokens:>6}  {price:12} min {m.min_examples}{extra}"
        )


@main.command()
def openapi() -> None:
    """Print the HTTP API's OpenAPI schema as YAML (the source of openapi.yaml)."""
    click.echo(openapi_yaml(), nl=False)


def openapi_yaml() -> str:
    import yaml

    from service.api.app import create_app

    schema = create_app().openapi_schema.to_schema()
    text: str = yaml.safe_dump(schema, sort_keys=False, allow_unicode=True)
    return text


def _register_service_commands() -> None:
    from service import remote_cli, run

    for command in (run.api, run.worker, run.keys, run.dev, run.fake_provider, *remote_cli.COMMANDS):
        main.add_command(command)
    for command in remote_cli.KEY_COMMANDS:
        run.keys.add_command(command)


_register_service_commands()

if __name__ == "__main__":
    main()
