"""The `hfenc` command line: a thin adapter over the library (the only module using typer/rich).

Each command parses options, calls one core function and renders the result. Data (tables,
--json) goes to stdout; progress, warnings, summaries and errors go to stderr. A user error is
`Error: ...` (+ `Hint: ...`), exit 1; usage errors are Typer's, exit 2; an interrupted job exits
130 after saying how to resume; HFENC_DEBUG=1 shows tracebacks.
"""

from __future__ import annotations

import functools
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

out = Console(soft_wrap=True)  # data
err = Console(stderr=True, soft_wrap=True)  # people

app = typer.Typer(
    name="hfenc",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _debug() -> bool:
    return os.environ.get("HFENC_DEBUG", "") not in ("", "0")


def _fail(message: str, hint: str | None = None, code: int = 1) -> None:
    err.print(Text(f"Error: {message}", style="bold red"))
    if hint:
        err.print(Text(f"Hint: {hint}", style="yellow"))
    raise typer.Exit(code)


def handles_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the library's user-facing errors into one line on stderr and exit 1."""
    from .errors import HfencError, Interrupted

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Interrupted as exc:
            if _debug():
                raise
            argv = [a for a in sys.argv[1:] if a not in ("--resume", "--force")]
            _fail(str(exc), f"resume with: hfenc {shlex.join(argv)} --resume", code=130)
        except HfencError as exc:
            if _debug():
                raise
            _fail(str(exc), exc.hint)
        except KeyboardInterrupt:
            if _debug():
                raise
            _fail("interrupted", code=130)

    return wrapper


def _version(value: bool) -> None:
    if value:
        from . import __version__

        out.print(f"hfenc {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version and exit."),
) -> None:
    """Embed text files with Hugging Face transformer encoders: fast, exact, resumable.

    [b]Examples[/b]

      hfenc embed examples/sentences.txt

      hfenc lock-plan bert-base-uncased --unlocked 3

      hfenc info sentence-transformers/all-MiniLM-L6-v2
    """


def _print_table(table: Table) -> None:
    """Tables are data: on a pipe (80 columns) a table that would cut words is printed wide."""
    from rich.measure import Measurement

    size = Measurement.get(out, out.options.update(max_width=10_000), table)
    if out.is_terminal or size.minimum <= out.width:
        out.print(table)
    else:  # Console.print clamps `width` to the console's own, so print through a wider one
        Console(file=out.file, width=size.maximum, color_system=None).print(table)


def _print_json(data: Any) -> None:
    out.print_json(json.dumps(data, default=str))


def _spec(model: str) -> Any:
    """The model resolved once, before torch is imported: one that is nowhere, or whose folder
    hfenc refuses, fails fast (bundled configs count)."""
    from .spec import load_spec

    return load_spec(model, config_only=True, bundled_ok=True)


# ---- embed ----------------------------------------------------------------------------------

class _Rate(ProgressColumn):
    """texts/s and tokens/s since embedding started (model loading excluded)."""

    def render(self, task: Any) -> Text:
        texts, tokens = task.fields.get("texts_s"), task.fields.get("tokens_s")
        if not texts:
            return Text("")
        return Text(f"{texts:,.0f} texts/s  {tokens:,.0f} tok/s", style="cyan")


@app.command()
@handles_errors
def embed(
    input: str = typer.Argument(..., help="Text file (one text per line), .jsonl, .csv, .tsv, any .gz, or - for stdin."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Output .npy (default: INPUT's stem + .npy beside it)."),
    model: str = typer.Option("sentence-transformers/all-MiniLM-L6-v2", "-m", "--model", help="Model name or directory."),
    pooler: Optional[str] = typer.Option(None, help="Pooler (see `hfenc poolers`); default: the model's own."),
    proj: str = typer.Option("none", help="Projection after pooling: none, linear, mlp."),
    dim: Optional[int] = typer.Option(None, help="Output dimension of the projection."),
    proj_weights: Optional[Path] = typer.Option(None, help="Trained projection weights (.safetensors or .pt state dict)."),
    seed: Optional[int] = typer.Option(None, help="Seed for a random (untrained) projection; required without --proj-weights."),
    normalize: Optional[bool] = typer.Option(None, "--normalize/--no-normalize", help="L2-normalize rows (default: the model's own choice, else off)."),
    truncate_dim: Optional[int] = typer.Option(None, help="Keep the first N dimensions (Matryoshka), then normalize."),
    max_length: Optional[int] = typer.Option(None, help="Max tokens per text (default: the model's and tokenizer's limit)."),
    prompt: Optional[str] = typer.Option(None, help="Text put before every text (\"\" for none, overriding the model's default prompt)."),
    prompt_name: Optional[str] = typer.Option(None, help="A prompt the model defines (see `hfenc info`), e.g. query."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N, mps."),
    dtype: str = typer.Option("auto", help="Compute dtype: auto (float32 on CPU, bf16/fp16 on GPU), float32, float16, bfloat16."),
    out_dtype: str = typer.Option("float32", help="Stored dtype: float32 or float16."),
    batch_tokens: Optional[int] = typer.Option(None, help="Token budget per batch (rows x longest row)."),
    chunk_size: int = typer.Option(16384, help="Records per chunk (the unit of overlap and of --resume)."),
    format: Optional[str] = typer.Option(None, "--format", help="Input format: txt, jsonl, csv, tsv (default: from the suffix)."),
    field: str = typer.Option("text", help="JSONL field holding the text."),
    column: Optional[str] = typer.Option(None, help="CSV/TSV column holding the text (default: text)."),
    id_field: Optional[str] = typer.Option(None, "--id-field", "--id-column", help="Field/column written to OUT.ids.txt, one per row."),
    skip_blank: bool = typer.Option(False, help="Drop blank records; their kept line numbers go to OUT.lines.npy."),
    tsv_quoting: bool = typer.Option(False, "--tsv-quoting", help="Read TSV with CSV-style quotes (default: plain tab-separated values)."),
    encoding_errors: str = typer.Option("strict", help="On invalid UTF-8: strict (refuse) or replace."),
    on_overflow: str = typer.Option("truncate", help="Texts over the max length: truncate (counted) or error."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from its last finished chunk."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress or summary on stderr."),
    json_out: bool = typer.Option(False, "--json", help="Print a machine-readable summary on stdout."),
) -> None:
    """Embed one text per line of INPUT into rows of a .npy file, with a JSON sidecar.

    Row i of the output is record i of the input. The output is written to a hidden partial
    file and renamed into place when complete; an interrupted run can be continued with --resume.

    [b]Examples[/b]

      hfenc embed examples/sentences.txt

      hfenc embed docs.jsonl --field body --id-field id -o docs.npy

      hfenc embed big.txt.gz --device cuda --out-dtype float16 --resume

      cat queries.txt | hfenc embed - -o queries.npy --prompt "query: "
    """
    from .spec import load_spec

    spec = load_spec(model, config_only=True)  # before torch: a missing or refused model fails fast
    if spec.resolved is not None and spec.resolved.source in ("local", "package"):
        model = spec  # type: ignore[assignment]  (complete on disk: resolved once)
    from .embedder import EmbedOptions, Embedder
    from .inputs import InputSpec
    from .jobs import JobOptions, embed_file

    options = dict(
        pooler=pooler, proj=proj, dim=dim, proj_weights=proj_weights, seed=seed, normalize=normalize,
        truncate_dim=truncate_dim, max_length=max_length, prompt=prompt, prompt_name=prompt_name, device=device, dtype=dtype,
        batch_tokens=batch_tokens,
    )
    if encoding_errors not in ("strict", "replace"):
        from .errors import UnknownChoiceError

        raise UnknownChoiceError("--encoding-errors value", encoding_errors, ("strict", "replace"))
    EmbedOptions(**options).check()  # bad options fail before the input is read
    spec = InputSpec(input, format, field, column, id_field, encoding_errors, skip_blank,  # type: ignore[arg-type]
                     tsv_quoting=tsv_quoting)
    job = JobOptions(spec, output, force, resume, out_dtype, chunk_size, on_overflow)  # type: ignore[arg-type]
    show = not quiet and err.is_terminal

    def load() -> Embedder:
        if show:
            with err.status(f"Loading {getattr(model, 'name', model)} ..."):
                return Embedder(model, **options)
        return Embedder(model, **options)

    if show:
        columns = [TextColumn("[bold]embedding"), BarColumn(), MofNCompleteColumn(), _Rate(), TimeRemainingColumn()]
        with Progress(*columns, console=err, transient=True) as bar:
            task = bar.add_task("embed", total=None)

            def tick(p: Any) -> None:
                rate = p.elapsed or float("inf")
                bar.update(task, total=p.rows_total, completed=p.rows_done,
                           texts_s=(p.rows_done - p.resumed) / rate, tokens_s=p.tokens_done / rate)

            result = embed_file(job, load, progress=tick)
    else:
        result = embed_file(job, load)

    if not quiet:
        for warning in result.warnings:
            err.print(Text(f"Warning: {warning}", style="yellow"))
        rate = (result.rows - result.resumed_from) / result.embed_seconds if result.embed_seconds else 0.0
        err.print(
            f"Wrote {result.rows:,} x {result.dim} {job.out_dtype} to {result.output} in {result.seconds:.1f} s "
            f"(embedding {result.embed_seconds:.1f} s, {rate:,.0f} texts/s); {result.truncated:,} truncated; "
            f"sidecar {result.sidecar.name}"
        )
    if json_out:
        _print_json({
            "output": str(result.output), "sidecar": str(result.sidecar), "rows": result.rows, "dim": result.dim,
            "seconds": round(result.seconds, 3), "embed_seconds": round(result.embed_seconds, 3), "truncated": result.truncated, "blank": result.blank,
            "tokens": result.tokens, "resumed_from": result.resumed_from, "warnings": result.warnings,
        })


# ---- listings -------------------------------------------------------------------------------

@app.command()
@handles_errors
def poolers(json_out: bool = typer.Option(False, "--json", help="Print JSON on stdout.")) -> None:
    """List the poolers: name, aliases, what each computes.

    [b]Examples[/b]

      hfenc poolers

      hfenc poolers --json
    """
    from .poolers import pooler_infos

    infos = pooler_infos()
    if json_out:
        _print_json([{"name": p.name, "aliases": list(p.aliases), "description": p.description} for p in infos])
        return
    table = Table(title="Poolers")
    for col in ("name", "aliases", "description"):
        table.add_column(col)
    for p in infos:
        table.add_row(p.name, ", ".join(p.aliases), p.description)
    _print_table(table)


@app.command()
@handles_errors
def archs(json_out: bool = typer.Option(False, "--json", help="Print JSON on stdout.")) -> None:
    """List the architectures hfenc knows (alias: architectures): block list, embeddings, final
    norm, default pooler.

    [b]Examples[/b]

      hfenc archs

      hfenc architectures --json
    """
    from .archs import ARCHS, arch_names

    rows = [ARCHS[n] for n in arch_names()]
    if json_out:
        _print_json([{
            "model_type": a.model_type, "blocks": a.blocks, "embeddings": a.embeddings, "final_norm": a.final_norm,
            "default_pooler": a.default_pooler, "pooling_layer": a.pooling_layer,
            "encoder_decoder": a.encoder_decoder, "model_class": a.model_class,
        } for a in rows])
        return
    table = Table(title="Architectures (model types not listed are discovered from the module tree)")
    for col in ("model type", "blocks", "embeddings", "final norm", "pooler", "enc-dec", "pooling layer"):
        table.add_column(col)
    for a in rows:
        table.add_row(a.model_type, a.blocks, a.embeddings, a.final_norm or "-", a.default_pooler,
                      "yes" if a.encoder_decoder else "no", "yes" if a.pooling_layer else "no")
    _print_table(table)


app.command("architectures", hidden=True)(archs)  # the same command under its long name


@app.command()
@handles_errors
def info(
    model: str = typer.Argument(..., help="Model name or directory."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON on stdout."),
) -> None:
    """Describe a model without reading its weights.

    [b]Examples[/b]

      hfenc info sentence-transformers/all-MiniLM-L6-v2

      hfenc info ./my-model --json
    """
    spec = _spec(model)
    from .describe import describe_model

    data = describe_model(spec)
    if json_out:
        _print_json(data)
        return
    table = Table(show_header=False, title=f"Model {model}")
    table.add_column(style="bold")
    table.add_column()
    for key, value in data.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        elif isinstance(value, int) and not isinstance(value, bool):
            value = f"{value:,}"
        table.add_row(key.replace("_", " "), "-" if value is None else str(value))
    _print_table(table)


# ---- lock-plan ------------------------------------------------------------------------------

@app.command("lock-plan")
@handles_errors
def lock_plan(
    model: str = typer.Argument(..., help="Model name or directory (configs of popular models are bundled)."),
    unlocked: int = typer.Option(..., "--unlocked", "-n", help="Blocks left trainable, counted from the top."),
    freeze_layer_norm: bool = typer.Option(True, "--freeze-layer-norm/--no-freeze-layer-norm", help="Freeze norm layers in frozen groups too."),
    pooler: Optional[str] = typer.Option(None, help="Pooler (cls builds the HF pooling layer where the model has one)."),
    proj: str = typer.Option("none", help="Projection head: none, linear, mlp."),
    dim: Optional[int] = typer.Option(None, help="Output dimension of the projection."),
    style: str = typer.Option("hfenc", help="hfenc, or open_clip to see what open_clip's lock() really does."),
    json_out: bool = typer.Option(False, "--json", help="Print the plan as JSON on stdout."),
    params: bool = typer.Option(False, "--params", help="List every parameter with its state."),
) -> None:
    """Show exactly which parameters fine-tuning with N unlocked layers would freeze.

    Built from the config alone on the meta device: no weights are read.

    [b]Examples[/b]

      hfenc lock-plan bert-base-uncased --unlocked 3

      hfenc lock-plan xlm-roberta-large --unlocked 2 --proj linear --dim 512

      hfenc lock-plan google/mt5-base --unlocked 0 --no-freeze-layer-norm --style open_clip
    """
    spec = _spec(model)
    from .lock import plan_lock

    plan = plan_lock(spec, unlocked, freeze_layer_norm=freeze_layer_norm, style=style, pooler=pooler,
                     proj=proj, dim=dim)
    if json_out:
        _print_json(plan.to_dict(params=params))
        return
    for warning in plan.warnings:
        err.print(Text(f"Warning: {warning}", style="yellow"))
    _render_plan(plan, params)


def _render_plan(plan: Any, params: bool) -> None:
    largest = max(g.numel for g in plan.groups)
    table = Table(title=f"Lock plan: {plan.model} ({plan.model_type}, {plan.num_layers} blocks), "
                        f"unlocked={plan.unlocked}, style={plan.style}")
    table.add_column("group")
    table.add_column("params", justify="right")
    table.add_column("state")
    table.add_column("", no_wrap=True)
    for g in plan.groups:
        state = plan.state(g)
        style = {"trainable": "green", "frozen": "dim", "partly trainable": "yellow"}[state]
        bar = "█" * max(1, round(20 * g.numel / largest))
        table.add_row(g.name, f"{g.numel:,}", Text(state, style=style), Text(bar, style=style))
        norms_on = sum(s for p, s in zip(g.params, g.sizes) if p in g.norms and p in plan.trainable)
        if state != "trainable" and norms_on:
            table.add_row("  norms", f"{norms_on:,}", Text("trainable", style="green"), "")
        if params:
            for p, s in zip(g.params, g.sizes):
                on = p in plan.trainable
                table.add_row(Text(f"  {p}", style="dim"), f"{s:,}",
                              Text("trainable" if on else "frozen", style="green" if on else "dim"), "")
    table.add_section()
    share = plan.trainable_count / plan.total if plan.total else 0.0
    table.add_row("total", f"{plan.total:,}", f"{plan.trainable_count:,} trainable ({share:.1%})", "")
    _print_table(table)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
