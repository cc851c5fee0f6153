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
import time
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn
from rich.table import Table
from rich.text import Text

_T0 = time.perf_counter()  # start-up (imports, input check, model load) counts in the summary
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


# The library names its arguments (`dim=0`); on the command line they are options (`--dim 0`).
_ARGUMENTS = ("dim", "truncate_dim", "max_length", "batch_tokens", "prompt_name", "prompt", "unlocked",
              "pooler", "proj_weights", "proj", "seed", "chunk_size", "threads", "backend", "dtype", "device")


def _as_options(message: str) -> str:
    import re

    names = "|".join(_ARGUMENTS)
    return re.sub(rf"(?<![\w-])({names})=", lambda m: "--" + m.group(1).replace("_", "-") + " ", message)


def handles_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the library's user-facing errors into one line on stderr and exit 1."""
    from .errors import HfencError, Interrupted

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Interrupted as exc:  # not an error: the user stopped it, and it can go on
            if _debug():
                raise
            argv = [a for a in sys.argv[1:] if a not in ("--resume", "--force")]
            err.print(Text(f"Interrupted: {exc}", style="bold yellow"))
            err.print(Text(f"Hint: resume with: hfenc {shlex.join(argv)} --resume", style="yellow"))
            err.print(Text("Or drop the saved rows: hfenc clean --remove", style="yellow"))
            raise typer.Exit(128 + exc.signum)
        except HfencError as exc:
            if _debug():
                raise
            _fail(_as_options(str(exc)), exc.hint and _as_options(exc.hint))
        except KeyboardInterrupt as exc:
            if _debug():
                raise
            err.print(Text("Interrupted", style="bold yellow"))
            raise typer.Exit(128 + getattr(exc, "signum", 2))

    return wrapper


def _version(value: bool) -> None:
    if value:
        from . import __version__

        out.print(f"hfenc {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", "-V", callback=_version, is_eager=True, help="Show the version and exit."),
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

    for column in table.columns:  # wrap a long cell at any width, never cut it with an ellipsis
        column.overflow, column.no_wrap = "fold", False
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
    """texts/s, tokens/s and ETA of this run (model loading and rows a resumed run had saved
    excluded, so the ETA is right after --resume too)."""

    def render(self, task: Any) -> Text:
        texts, tokens, eta = task.fields.get("texts_s"), task.fields.get("tokens_s"), task.fields.get("eta")
        if not texts:
            return Text("")
        left = "" if eta is None else f"  ETA {int(eta) // 3600}:{int(eta) % 3600 // 60:02d}:{int(eta) % 60:02d}"
        return Text(f"{texts:,.0f} texts/s  {tokens:,.0f} tok/s{left}", style="cyan")


@app.command()
@handles_errors
def embed(
    inputs: Optional[list[str]] = typer.Argument(None, metavar="INPUT...", show_default=False,
                                                 help="Input files (.txt, .jsonl, .json, .csv, .tsv, any .gz), globs, or - for stdin; rows in argument order."),
    text: Optional[list[str]] = typer.Option(None, "--text", "-t", help="A text to embed (repeatable), instead of files."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Output .npy (default: INPUT's stem + .npy beside it)."),
    model: str = typer.Option("sentence-transformers/all-MiniLM-L6-v2", "-m", "--model", show_default=False,
                              help="Model name or directory (default: all-MiniLM-L6-v2)."),
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
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N, mps (any case)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for the model (default: all cores)."),
    dtype: str = typer.Option("auto", help="Compute dtype: auto (GPU bf16/fp16; CPU bf16 where native, else float32), float32 (exact), float16, bfloat16, int8 (--backend openvino)."),
    backend: str = typer.Option("torch", "--backend", help="Run the transformer on: torch, or openvino (CPU; needs hfenc[openvino])."),
    out_dtype: str = typer.Option("float32", help="Stored dtype: float32 or float16."),
    out_format: Optional[str] = typer.Option(None, "--out-format", help="Output format: npy or parquet (default: from the output's suffix)."),
    quantize: Optional[str] = typer.Option(None, "--quantize", help="Store codes: int8, uint8 (calibrated ranges), binary, ubinary (packed bits)."),
    ranges: Optional[Path] = typer.Option(None, "--ranges", help="int8/uint8 ranges: a (2, d) .npy, a JSON list (minima, maxima) or an index's sidecar (default: from a sample of the input)."),
    keep_text: bool = typer.Option(False, "--keep-text", help="Parquet output: add a `text` column."),
    batch_tokens: Optional[int] = typer.Option(None, help="Token budget per batch (rows x longest row)."),
    chunk_size: int = typer.Option(16384, help="Records per chunk (the unit of overlap and of --resume)."),
    format: Optional[str] = typer.Option(None, "--format", help="Input format: txt, jsonl, csv, tsv (default: from the suffix)."),
    field: str = typer.Option("text", help="JSONL field holding the text."),
    column: Optional[str] = typer.Option(None, help="CSV/TSV column holding the text (default: text)."),
    id_field: Optional[str] = typer.Option(None, "--id-field", help="Field/column written to OUT.ids.txt, one per row."),
    id_column: Optional[str] = typer.Option(None, "--id-column", hidden=True, help="The same as --id-field."),
    skip_blank: bool = typer.Option(False, help="Drop blank records; their kept line numbers go to OUT.lines.npy."),
    tsv_quoting: bool = typer.Option(False, "--tsv-quoting", help="Read TSV with CSV-style quotes (default: plain tab-separated values)."),
    encoding_errors: str = typer.Option("strict", help="On invalid UTF-8: strict (refuse) or replace."),
    on_overflow: str = typer.Option("truncate", help="Texts over the max length: truncate (counted) or error."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from its last finished chunk."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress or summary on stderr."),
    json_out: bool = typer.Option(False, "--json", help="Print a machine-readable summary on stdout."),
    ray: bool = typer.Option(False, "--ray", help="Run on Ray: a local runtime using every GPU here (one replica each), or CPU workers (needs hfenc[ray])."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", metavar="ADDRESS", help="Run on an existing Ray cluster: auto, or ray://HOST:10001 (implies --ray)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="With --ray: model replicas (default: one per GPU; without GPUs, one per CPU, up to 8)."),
) -> None:
    """Embed every record of INPUT (one text per line, or per JSON/CSV record) into rows of a .npy
    file, with a JSON sidecar.

    Row i of the output is record i of the input (of the inputs, in order). The output is written to a hidden partial
    file and renamed into place when complete; an interrupted run can be continued with --resume.

    [b]Examples[/b]

      hfenc embed examples/sentences.txt

      hfenc embed docs.jsonl --field body --id-field id -o docs.npy

      hfenc embed big.txt.gz --device cuda --out-dtype float16 --resume

      hfenc embed big.txt --backend openvino --dtype int8

      cat queries.txt | hfenc embed - -o queries.npy --prompt-name query

      hfenc embed --text "a first text" --text "a second one" -o two.npy

      hfenc embed 'shards/*.jsonl.gz' -o corpus.npy
    """
    if text and inputs:
        raise typer.BadParameter("give input files or --text, not both")
    if not text and not inputs:
        raise typer.BadParameter("give an input file (or - for stdin), or --text TEXT")
    from .spec import load_spec

    model_spec = load_spec(model, config_only=True)  # before torch: a missing or refused model fails fast
    if model_spec.resolved is not None and model_spec.resolved.source in ("local", "package"):
        model = model_spec  # type: ignore[assignment]  (complete on disk: resolved once)
    from .embedder import EmbedOptions, Embedder
    from .inputs import InputSpec
    from .jobs import JobOptions, embed_file

    options = dict(
        pooler=pooler, proj=proj, dim=dim, proj_weights=proj_weights, seed=seed, normalize=normalize,
        truncate_dim=truncate_dim, max_length=max_length, prompt=prompt, prompt_name=prompt_name, device=device, dtype=dtype,
        batch_tokens=batch_tokens, threads=threads, backend=backend,
    )
    if encoding_errors not in ("strict", "replace"):
        from .errors import UnknownChoiceError

        raise UnknownChoiceError("--encoding-errors value", encoding_errors, ("strict", "replace"))
    EmbedOptions(**options).check()  # bad options fail before the input is read
    from .inputs import expand_inputs

    on_ray = ray or ray_address is not None
    if workers is not None and not on_ray:
        raise typer.BadParameter("--workers is for --ray jobs")
    # With --ray, globs and directories are expanded by the runner (they may be s3://... too).
    paths = ["-"] if text else list(inputs or []) if on_ray else expand_inputs(inputs or [])
    spec = InputSpec(paths[0], format, field, column, id_field or id_column, encoding_errors, skip_blank,  # type: ignore[arg-type]
                     tsv_quoting=tsv_quoting, more=tuple(paths[1:]))
    job = JobOptions(spec, output, force, resume, out_dtype, chunk_size, on_overflow, tuple(text or ()),  # type: ignore[arg-type]
                     out_format=out_format, quantize=quantize, ranges=ranges, keep_text=keep_text)
    show = not quiet and err.is_terminal
    run: Callable[..., Any] = embed_file
    if on_ray:
        from .distributed import RayOptions, embed_ray

        cluster = RayOptions(address=ray_address, workers=workers)

        def run_ray(job: Any, _load: Any, progress: Any = None) -> Any:  # each Ray worker loads the model
            return embed_ray(job, model, options, cluster, progress=progress)

        run = run_ray

    def load() -> Embedder:
        if show:
            with err.status(f"Loading {getattr(model, 'name', model)} ..."):
                return Embedder(model, **options)
        return Embedder(model, **options)

    if show:
        columns = [TextColumn("[bold]embedding"), BarColumn(), MofNCompleteColumn(), _Rate()]
        with Progress(*columns, console=err, transient=True) as bar:
            task = bar.add_task("embed", total=None)

            def tick(p: Any) -> None:
                elapsed = p.elapsed or float("inf")
                bar.update(task, total=p.rows_total, completed=p.rows_done, texts_s=p.rate,
                           tokens_s=p.tokens_done / elapsed, eta=p.eta)

            result = run(job, load, progress=tick)
    else:
        result = run(job, load)

    if not quiet:
        for warning in result.warnings:
            err.print(Text(f"Warning: {warning}", style="yellow"))
        rate = (result.rows - result.resumed_from) / result.embed_seconds if result.embed_seconds else 0.0
        total = time.perf_counter() - _T0
        stored = (result.metadata.get("quantization") or {}).get("precision") or job.out_dtype
        err.print(
            f"Wrote {result.rows:,} x {result.dim} {stored} to {result.output} in {total:.1f} s "
            f"(start-up {total - result.embed_seconds:.1f} s, embedding {result.embed_seconds:.1f} s, "
            f"{rate:,.0f} texts/s); {result.truncated:,} truncated; sidecar {result.sidecar}"
        )
    if json_out:
        _print_json({
            "output": str(result.output), "sidecar": str(result.sidecar), "rows": result.rows, "dim": result.dim,
            "seconds": round(result.seconds, 3), "embed_seconds": round(result.embed_seconds, 3), "truncated": result.truncated, "blank": result.blank,
            "tokens": result.tokens, "resumed_from": result.resumed_from, "warnings": result.warnings,
        })


# ---- search ---------------------------------------------------------------------------------

@app.command()
@handles_errors
def search(
    index: Path = typer.Argument(..., metavar="INDEX", show_default=False,
                                 help="An output of `hfenc embed`: OUT.npy or OUT.parquet (its sidecar beside it)."),
    queries: Optional[list[str]] = typer.Argument(None, metavar="QUERY...", show_default=False, help="Query texts."),
    k: int = typer.Option(10, "-k", "--top-k", help="Rows per query."),
    queries_file: Optional[str] = typer.Option(None, "--queries", help="More queries, one per line, from a file or - (stdin)."),
    texts: Optional[Path] = typer.Option(None, "--texts", help="The input the index was embedded from, to show the hits' texts."),
    rescore: int = typer.Option(4, help="Binary indexes: rescore this many times k Hamming candidates in float."),
    prompt: Optional[str] = typer.Option(None, help="Prompt text for the queries (default: the model's `query` prompt, else the index's)."),
    prompt_name: Optional[str] = typer.Option(None, help="A prompt the model defines, for the queries."),
    device: str = typer.Option("auto", help="Where to embed the queries: auto, cpu, cuda, cuda:N, mps."),
    json_out: bool = typer.Option(False, "--json", help="Print the hits as JSON on stdout."),
) -> None:
    """Exact top-k search of an index for each QUERY, embedded exactly as the index was.

    The queries get the model, pooler, prompt, normalization, truncation and quantization the
    index's sidecar records; where the model defines a prompt named `query`, queries get it.
    The index is read in blocks (flat memory whatever its size).

    [b]Examples[/b]

      hfenc search examples/sentences.npy "how do I read a file" -k 5 --texts examples/sentences.txt

      hfenc search docs.parquet "error handling" --json

      cat questions.txt | hfenc search docs.npy --queries -
    """
    from .searching import search as run_search

    found = list(queries or [])
    if queries_file is not None:
        if queries_file == "-":
            lines = sys.stdin.read().splitlines()
        else:
            try:
                lines = Path(queries_file).read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                from .errors import InputError

                raise InputError(f"cannot read queries from {queries_file}: {getattr(exc, 'strerror', None) or exc}") from None
        found += [line for line in lines if line.strip()]
    if not found:
        raise typer.BadParameter("give a QUERY, or --queries FILE (- for stdin)")
    result = run_search(index, found, k, texts=texts, rescore=rescore, device=device, prompt=prompt,
                        prompt_name=prompt_name)
    for warning in result.warnings:
        err.print(Text(f"Warning: {warning}", style="yellow"))
    if json_out:
        _print_json(result.to_dict())
        return
    shown = "none" if not result.prompt else (f"{result.prompt_name} ({result.prompt!r})" if result.prompt_name
                                              else repr(result.prompt))
    err.print(f"{result.rows:,} rows of {result.stored}, {result.scoring}; query prompt: {shown}; "
              f"searched in {result.seconds:.3f} s")
    with_ids = any(h.id is not None for r in result.results for h in r.hits)
    with_texts = any(h.text is not None for r in result.results for h in r.hits)
    with_ham = any(h.hamming is not None for r in result.results for h in r.hits)
    for r in result.results:
        table = Table(title=f"{r.query}", title_justify="left")
        for col in ("rank", "score", *(["hamming"] if with_ham else []), "row", *(["id"] if with_ids else []),
                    *(["text"] if with_texts else [])):
            table.add_column(col, justify="right" if col in ("rank", "score", "hamming", "row") else "left")
        for h in r.hits:
            table.add_row(str(h.rank), f"{h.score:.4f}", *([str(h.hamming)] if with_ham else []), str(h.row),
                          *([h.id or ""] if with_ids else []), *([_clip(h.text or "")] if with_texts else []))
        _print_table(table)


def _clip(text: str, width: int = 60) -> str:
    """A hit's text on one table line (--json has it whole)."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


# ---- listings -------------------------------------------------------------------------------

@app.command()
@handles_errors
def poolers(json_out: bool = typer.Option(False, "--json", help="Print JSON on stdout.")) -> None:
    """List the poolers: name, aliases, what each computes.

    [b]Examples[/b]

      hfenc poolers

      hfenc poolers --json
    """
    from .catalog import pooler_catalog

    infos = pooler_catalog()  # the built-in registry, without importing torch (a start in < 1 s)
    if json_out:
        _print_json(infos)
        return
    table = Table(title="Poolers")
    for col in ("name", "aliases", "description"):
        table.add_column(col)
    for p in infos:
        table.add_row(p["name"], ", ".join(p["aliases"]), p["description"])
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
def clean(
    directory: Path = typer.Argument(Path("."), help="Directory to look in (default: the current one)."),
    remove: bool = typer.Option(False, "--remove", help="Remove what is listed (default: list only)."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON on stdout."),
) -> None:
    """List (or with --remove, delete) the saved rows of interrupted runs that were never resumed.

    Only hidden files that an hfenc resume state claims are considered; nothing else is touched.

    [b]Examples[/b]

      hfenc clean

      hfenc clean data/ --remove
    """
    from .errors import OutputError
    from .outputs import find_abandoned, remove_abandoned

    if not directory.is_dir():
        raise OutputError(f"{directory} is not a directory")
    found = find_abandoned(directory)
    if remove:
        for item in found:
            remove_abandoned(item)
    if json_out:
        _print_json([{"output": str(i.output), "rows_done": i.rows_done, "rows": i.rows, "bytes": i.bytes,
                      "files": [str(f) for f in i.files], "removed": remove} for i in found])
        return
    if not found:
        err.print(f"No interrupted runs in {directory}.")
        return
    table = Table(title="Interrupted runs" + (" (removed)" if remove else ""))
    for name in ("output", "rows saved", "size"):
        table.add_column(name, overflow="fold", justify="right" if name != "output" else "left")
    for item in found:
        rows = f"{item.rows_done:,} of {item.rows:,}" if item.rows else f"{item.rows_done:,}"
        table.add_row(str(item.output), rows, f"{item.bytes / 1e6:,.1f} MB")
    _print_table(table)
    if not remove:
        err.print("Resume one with the same command plus --resume, or delete them all with: hfenc clean --remove")


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
    model: Optional[str] = typer.Argument(None, help="Model name or directory (configs of popular models are bundled)."),
    unlocked: Optional[int] = typer.Option(None, "--unlocked", "-n", help="Blocks left trainable, counted from the top."),
    list_bundled: bool = typer.Option(False, "--list", help="List the bundled model configs (planned offline) and exit."),
    freeze_layer_norm: bool = typer.Option(True, "--freeze-norms/--train-norms",
                                           help="Freeze norm layers in frozen groups too (--train-norms: keep them trainable)."),
    pooler: Optional[str] = typer.Option(None, help="Pooler (cls builds the HF pooling layer where the model has one)."),
    proj: str = typer.Option("none", help="Projection head: none, linear, mlp."),
    dim: Optional[int] = typer.Option(None, help="Output dimension of the projection."),
    style: str = typer.Option("hfenc", help="hfenc, or open_clip to see what open_clip's lock() really does."),
    json_out: bool = typer.Option(False, "--json", help="Print the plan as JSON on stdout."),
    params: bool = typer.Option(False, "--params", help="List every parameter with its state."),
    memory: bool = typer.Option(False, "--memory", help="Estimate the memory fine-tuning with this plan needs."),
    optimizer: Optional[str] = typer.Option(None, help="With --memory: adamw (default), adamw8bit, sgd, adafactor."),
    precision: Optional[str] = typer.Option(None, help="With --memory: fp32 (default), bf16-mixed, fp16-mixed, bf16."),
    batch: Optional[int] = typer.Option(None, help="With --memory: sequences per step (default 1)."),
    seq_len: Optional[int] = typer.Option(None, "--seq-len", help="With --memory: tokens per sequence (default: the context length)."),
    grad_checkpointing: bool = typer.Option(False, "--grad-checkpointing", help="With --memory: checkpoint every block."),
    attention: Optional[str] = typer.Option(None, help="With --memory: sdpa (default, where transformers has it) or eager."),
    no_momentum: bool = typer.Option(False, "--no-momentum", help="With --memory --optimizer sgd: plain SGD (default: momentum 0.9)."),
) -> None:
    """Show exactly which parameters fine-tuning with N unlocked layers would freeze.

    Built from the config alone on the meta device: no weights are read. With --memory: the bytes of
    weights, gradients, optimizer states and activations that training with the plan needs, and its
    peak phase (the activation model is in the README).

    [b]Examples[/b]

      hfenc lock-plan bert-base-uncased --unlocked 3

      hfenc lock-plan bert-base-uncased --unlocked 3 --memory --batch 32 --seq-len 128

      hfenc lock-plan xlm-roberta-large --unlocked 2 --proj linear --dim 512

      hfenc lock-plan google/mt5-base --unlocked 0 --train-norms --style open_clip

      hfenc lock-plan --list
    """
    if list_bundled:
        from .models import bundled_config_names

        for name in bundled_config_names():
            out.print(name)
        return
    if model is None or unlocked is None:
        raise typer.BadParameter("give MODEL and --unlocked N (or --list for the bundled configs)")
    spec = _spec(model)
    from .lock import plan_lock

    given = [name for name, value in (("--optimizer", optimizer), ("--precision", precision), ("--batch", batch),
                                      ("--seq-len", seq_len), ("--attention", attention)) if value is not None]
    given += [name for name, on in (("--grad-checkpointing", grad_checkpointing), ("--no-momentum", no_momentum)) if on]
    if given and not memory:
        _fail(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} only with --memory", "add --memory", code=2)
    plan = plan_lock(spec, unlocked, freeze_layer_norm=freeze_layer_norm, style=style, pooler=pooler,
                     proj=proj, dim=dim)
    estimate = plan.memory(
        optimizer=optimizer or "adamw", precision=precision or "fp32", batch=1 if batch is None else batch,
        seq_len=seq_len, grad_checkpointing=grad_checkpointing, attention=attention or "sdpa",
        momentum=not no_momentum,
    ) if memory else None
    if json_out:
        data = plan.to_dict(params=params)
        if estimate is not None:
            data["memory"] = estimate.to_dict()
        _print_json(data)
        return
    for warning in plan.warnings:
        err.print(Text(f"Warning: {warning}", style="yellow"))
    if estimate is None:
        _render_plan(plan, params)
        return
    for note in estimate.notes:
        err.print(Text(f"Note: {note}", style="dim"))
    _render_memory(plan, estimate)


def _render_plan(plan: Any, params: bool) -> None:
    largest = max(g.numel for g in plan.groups)
    table = Table(title=f"Lock plan: {plan.model} ({plan.model_type}, {plan.num_layers} blocks, pooler {plan.pooler}), "
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


def _size(n: int) -> str:
    """Binary units, as GPU memory is reported (nvidia-smi's MiB)."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:,.{2 if unit == 'GiB' else 1}f} {unit}"
    return f"{n} B"


_STATES = {
    "adamw": "exp_avg + exp_avg_sq + steps",
    "adamw8bit": "2 x uint8 + absmax (bnb)",
    "sgd": "momentum buffer (0.9)",
    "adafactor": "factored 2nd moments",
}


def _render_memory(plan: Any, m: Any) -> None:
    """The memory estimate of a lock plan, in 80 columns."""
    from .memory import PRECISION

    b = PRECISION[m.precision].param
    ckpt = ", checkpointed" if m.grad_checkpointing else ""
    table = Table(title=f"Memory: {m.model}, unlocked={m.unlocked}\n{m.optimizer}, {m.precision}, "
                        f"batch {m.batch} x {m.seq_len} tokens, {m.attention} attention{ckpt}")
    table.add_column("part")
    table.add_column("size", justify="right")
    table.add_column("counted")
    table.add_row("weights", _size(m.weights), f"{m.params:,} params x {b} B")
    table.add_row("gradients", _size(m.gradients), f"{m.trainable_params:,} trainable x {b} B")
    states = "none (plain SGD)" if m.optimizer == "sgd" and not m.optimizer_states else _STATES[m.optimizer]
    table.add_row("optimizer states", _size(m.optimizer_states), states)
    table.add_row("master weights", _size(m.master_weights),
                  "none: fp32 weights are the master" if PRECISION[m.precision].copies else "none kept")
    if m.weight_copies:
        table.add_row("weight copies", _size(m.weight_copies), "autocast's 16-bit, for backward")
    if m.grad_checkpointing:
        where = f"inputs of all {plan.num_layers} blocks"
    elif m.lowest_block is None:
        where = "the head only"
    else:
        where = "embeddings and up" if m.lowest_block == 0 and m.unlocked > plan.num_layers else f"layer.{m.lowest_block} and up"
    table.add_row("activations", _size(m.activations), where)
    for name, value in sorted(m.activation_terms, key=lambda kv: -kv[1]):
        table.add_row(Text(f"  {name}", style="dim"), Text(_size(value), style="dim"), "")
    if m.recompute:
        table.add_row("recompute", _size(m.recompute), "one block, during backward")
    if m.step_temporaries:
        table.add_row("step temporaries", _size(m.step_temporaries), "the optimizer update's scratch")
    table.add_section()
    table.add_row("exact parts", _size(m.exact), "weights, gradients, states")
    table.add_row("total", _size(m.total), "every part at once")
    table.add_section()
    held = {"forward": "weights, states, activations", "backward": "+ gradients (upper bound)",
            "optimizer step": "weights, gradients, states"}
    for phase, value in m.phases.items():
        peak = phase == m.peak_phase
        table.add_row(Text(f"{phase}{' (peak)' if peak else ''}", style="bold" if peak else ""),
                      Text(_size(value), style="bold" if peak else ""), held[phase])
    _print_table(table)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
