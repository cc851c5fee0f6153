"""`hfenc embed`, `hfenc search` and `hfenc clean`: the commands over input and output files."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn
from rich.table import Table
from rich.text import Text

from hfenc.cli.base import print_json, print_table, app, err, handles_errors, START


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
    backend: str = typer.Option("torch", "--backend", help="Run the transformer on: torch, or openvino (CPU; needs hfenc\\[openvino])."),
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
    ray: bool = typer.Option(False, "--ray", help="Run on Ray: a local runtime using every GPU here (one replica each), or CPU workers (needs hfenc\\[ray])."),
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
    from hfenc.model.spec import load_spec

    model_spec = load_spec(model, config_only=True)  # before torch: a missing or refused model fails fast
    if model_spec.resolved is not None and model_spec.resolved.source in ("local", "package"):
        model = model_spec  # type: ignore[assignment]  (complete on disk: resolved once)
    from hfenc.compute.embedder import EmbedOptions, Embedder
    from hfenc.io.inputs import InputSpec
    from hfenc.jobs.local import JobOptions, embed_file

    options = dict(
        pooler=pooler, proj=proj, dim=dim, proj_weights=proj_weights, seed=seed, normalize=normalize,
        truncate_dim=truncate_dim, max_length=max_length, prompt=prompt, prompt_name=prompt_name, device=device, dtype=dtype,
        batch_tokens=batch_tokens, threads=threads, backend=backend,
    )
    if encoding_errors not in ("strict", "replace"):
        from hfenc.errors import UnknownChoiceError

        raise UnknownChoiceError("--encoding-errors value", encoding_errors, ("strict", "replace"))
    EmbedOptions(**options).check()  # bad options fail before the input is read
    from hfenc.io.inputs import expand_inputs

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
        from hfenc.jobs.ray_runner import RayOptions, embed_ray

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
        total = time.perf_counter() - START
        stored = (result.metadata.get("quantization") or {}).get("precision") or job.out_dtype
        err.print(
            f"Wrote {result.rows:,} x {result.dim} {stored} to {result.output} in {total:.1f} s "
            f"(start-up {total - result.embed_seconds:.1f} s, embedding {result.embed_seconds:.1f} s, "
            f"{rate:,.0f} texts/s); {result.truncated:,} truncated; sidecar {result.sidecar}"
        )
    if json_out:
        print_json({
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
    from hfenc.searching import search as run_search

    found = list(queries or [])
    if queries_file is not None:
        found += [line for line in _query_lines(queries_file) if line.strip()]
    if not found:
        raise typer.BadParameter("give a QUERY, or --queries FILE (- for stdin)")
    result = run_search(index, found, k, texts=texts, rescore=rescore, device=device, prompt=prompt,
                        prompt_name=prompt_name)
    for warning in result.warnings:
        err.print(Text(f"Warning: {warning}", style="yellow"))
    if json_out:
        print_json(result.to_dict())
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
        print_table(table)


def _query_lines(source: str) -> list[str]:
    """The lines of --queries FILE (or - for stdin), read as bytes so bad UTF-8 is one clear line."""
    from hfenc.errors import InputError

    name = "standard input" if source == "-" else source
    try:
        raw = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read queries from {name}: {exc.strerror or exc}") from None
    try:
        return raw.decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise InputError(f"cannot read queries from {name}: line {line} is not valid UTF-8",
                         hint="save the queries as UTF-8") from None


def _clip(text: str, width: int = 60) -> str:
    """A hit's text on one table line (--json has it whole)."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


# ---- listings -------------------------------------------------------------------------------


@app.command()
@handles_errors
def clean(
    directory: Path = typer.Argument(Path("."), help="Directory to look in (default: the current one)."),
    remove: bool = typer.Option(False, "--remove", help="Remove what is listed (default: list only)."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON on stdout."),
) -> None:
    """List (or with --remove, delete) the saved rows of interrupted runs that were never resumed.

    Only hidden files that a readable hfenc resume state claims are considered; nothing else is
    touched. An output a running job holds is listed as in use and left alone; a run interrupted
    while publishing is finished (its new output, whole), never split.

    [b]Examples[/b]

      hfenc clean

      hfenc clean data/ --remove
    """
    from hfenc.errors import HfencError, OutputError
    from hfenc.io.cleanup import find_abandoned, settle

    if not directory.is_dir():
        raise OutputError(f"{directory} is not a directory")
    found = find_abandoned(directory)
    sizes = {item.output: item.bytes for item in found}
    actions: dict[Path, str] = {}
    refused: list[str] = []
    for item in found if remove else ():
        try:
            actions[item.output] = settle(item)
        except HfencError as exc:
            actions[item.output] = "left alone"
            refused.append(str(exc))
    if json_out:
        print_json([{"output": str(i.output), "status": i.status, "rows_done": i.rows_done, "rows": i.rows,
                     "bytes": sizes[i.output], "files": [str(f) for f in i.files], "note": i.note or None,
                     "action": actions.get(i.output)} for i in found])
    elif not found:
        where = "the current directory" if directory == Path(".") else str(directory)
        err.print(Text(f"No interrupted runs in {where}."))
    else:
        _render_abandoned(found, sizes, actions)
    for message in refused:
        err.print(Text(f"Warning: {message}", style="yellow"))
    for item in found if not remove and not json_out else ():
        if item.note:  # why an output is in use or unreadable: clean --remove will leave it alone
            err.print(Text(f"Note: {item.output}: {item.note}"))
    if refused:
        raise OutputError(f"{len(refused)} of {len(found)} interrupted run(s) were left alone (see above)")
    if any(i.status == "interrupted" for i in found) and not remove and not json_out:
        err.print("Resume one with the same command plus --resume, or delete them all with: hfenc clean --remove")


def _render_abandoned(found: list[Any], sizes: dict[Path, int], actions: dict[Path, str]) -> None:
    table = Table(title="Interrupted runs")
    columns = ("output", "state", "rows saved", "size", *(("done",) if actions else ()))
    for name in columns:
        table.add_column(name, overflow="fold", justify="right" if name in ("rows saved", "size") else "left")
    for item in found:
        if item.rows_done is None:
            rows = "-"
        else:
            rows = f"{item.rows_done:,} of {item.rows:,}" if item.rows else f"{item.rows_done:,}"
        cells = [Text(str(item.output)), item.status, rows, f"{sizes[item.output] / 1e6:,.1f} MB"]
        table.add_row(*cells, *((actions.get(item.output, ""),) if actions else ()))
    print_table(table)
