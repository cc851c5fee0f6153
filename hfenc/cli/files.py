"""`hfenc embed`, `hfenc search` and `hfenc clean`: the commands over input and output files."""

from __future__ import annotations

import functools
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.progress import Progress, ProgressColumn
from rich.text import Text

from hfenc.cli.show import Sheet, progress_line
from hfenc.cli.base import print_json, print_table, app, err, handles_errors, say, START


# ---- embed ----------------------------------------------------------------------------------

class _Line(ProgressColumn):
    """The whole progress line, fitted to the terminal (hfenc.cli.show.progress_line): rates and
    ETA of this run (model loading and rows a resumed run had saved excluded)."""

    def render(self, task: Any) -> Text:
        f = task.fields
        if f.get("phase") == "chunking":
            return Text(f"Cutting records into chunks: {f.get('docs') or 0:,}/{f.get('docs_total') or 0:,} records",
                        style="cyan")
        return Text(progress_line(int(task.completed), f.get("rows_total"), f.get("texts_s"), f.get("tokens_s"),
                                  f.get("eta"), err.width - 1, f.get("docs"), f.get("docs_total")), style="cyan")


_IN, _OUT, _CHUNK, _MODEL, _SPEED, _RESUME, _RAY = "Input", "Output", "Chunks", "Model", "Speed", "Resume", "Ray"
_SPARSE = "Sparse models"
_opt = functools.partial(typer.Option, show_default=False)  # defaults are in the help text, in ( )


@app.command()
@handles_errors
def embed(
    inputs: Optional[list[str]] = typer.Argument(None, metavar="INPUT...", show_default=False, rich_help_panel=_IN,
                                                 help="Files or globs (- for stdin), in order."),
    text: Optional[list[str]] = _opt(None, "--text", "-t", metavar="TEXT", rich_help_panel=_IN,
                                     help="A text (repeatable)."),
    format: Optional[str] = _opt(None, "--format", metavar="FMT", rich_help_panel=_IN,
                                 help="txt jsonl json csv tsv parquet arrow."),
    field: str = _opt("text", metavar="NAME", rich_help_panel=_IN, help="JSON text field (text)."),
    column: Optional[str] = _opt(None, metavar="NAME", rich_help_panel=_IN,
                                 help="Table text column (text)."),
    id_field: Optional[str] = _opt(None, "--id-field", metavar="NAME", rich_help_panel=_IN,
                                   help="Field or column of ids."),
    id_column: Optional[str] = _opt(None, "--id-column", hidden=True, help="The same as --id-field."),
    skip_blank: bool = _opt(False, "--skip-blank", rich_help_panel=_IN, help="Drop blank records."),
    tsv_quoting: bool = _opt(False, "--tsv-quoting", rich_help_panel=_IN, help="TSV with CSV quotes."),
    encoding_errors: str = _opt("strict", metavar="MODE", rich_help_panel=_IN,
                                help="Bad UTF-8: strict or replace (strict)."),
    output: Optional[Path] = _opt(None, "-o", "--output", metavar="OUT", rich_help_panel=_OUT,
                                  help="OUT.npy .npz .parquet (INPUT.npy)."),
    out_format: Optional[str] = _opt(None, "--out-format", metavar="FMT", rich_help_panel=_OUT,
                                     help="npy npz parquet (OUT's suffix)."),
    out_dtype: str = _opt("float32", metavar="DTYPE", rich_help_panel=_OUT, help="float32 or float16 (float32)."),
    quantize: Optional[str] = _opt(None, "--quantize", metavar="CODE", rich_help_panel=_OUT,
                                   help="int8 uint8 binary ubinary (none)."),
    ranges: Optional[Path] = _opt(None, "--ranges", metavar="FILE", rich_help_panel=_OUT,
                                  help="int8/uint8 ranges (sampled)."),
    keep_text: bool = _opt(False, "--keep-text", rich_help_panel=_OUT, help="Parquet: add a text column."),
    force: bool = _opt(False, "--force", rich_help_panel=_OUT, help="Replace an existing output."),
    quiet: bool = _opt(False, "-q", "--quiet", rich_help_panel=_OUT, help="No progress or summary."),
    json_out: bool = _opt(False, "--json", rich_help_panel=_OUT, help="Summary as JSON on stdout."),
    chunk_tokens: Optional[int] = _opt(None, "--chunk-tokens", metavar="N", rich_help_panel=_CHUNK,
                                       help="Cut records into chunks of <= N tokens."),
    chunk_overlap: Optional[int] = _opt(None, "--chunk-overlap", metavar="M", rich_help_panel=_CHUNK,
                                        help="Tokens shared by next chunks (0)."),
    chunk_by: Optional[str] = _opt(None, "--chunk-by", metavar="HOW", rich_help_panel=_CHUNK,
                                   help="tokens or sentences (tokens)."),
    late_chunking: bool = _opt(False, "--late-chunking", rich_help_panel=_CHUNK,
                               help="Pool chunks from whole-record passes."),
    doc_vectors: bool = _opt(False, "--doc-vectors", rich_help_panel=_CHUNK,
                             help="Also a vector per record (OUT.docs)."),
    model: str = _opt("sentence-transformers/all-MiniLM-L6-v2", "-m", "--model", metavar="MODEL",
                      rich_help_panel=_MODEL, help="Model (all-MiniLM-L6-v2)."),
    pooler: Optional[str] = _opt(None, metavar="NAME", rich_help_panel=_MODEL,
                                 help="hfenc poolers (the model's)."),
    prompt: Optional[str] = _opt(None, metavar="TEXT", rich_help_panel=_MODEL,
                                 help='Text before each text, or "".'),
    prompt_name: Optional[str] = _opt(None, metavar="NAME", rich_help_panel=_MODEL,
                                      help="A prompt from hfenc info."),
    normalize: Optional[bool] = _opt(None, "--normalize/--no-normalize", rich_help_panel=_MODEL,
                                     help="L2 rows (the model's)."),
    truncate_dim: Optional[int] = _opt(None, metavar="N", rich_help_panel=_MODEL,
                                       help="Keep N dims (Matryoshka)."),
    max_length: Optional[int] = _opt(None, metavar="N", rich_help_panel=_MODEL,
                                     help="Tokens per text (the model's)."),
    on_overflow: str = _opt("truncate", metavar="MODE", rich_help_panel=_MODEL,
                            help="truncate or error (truncate)."),
    proj: str = _opt("none", metavar="KIND", rich_help_panel=_MODEL, help="none linear mlp (none)."),
    dim: Optional[int] = _opt(None, metavar="N", rich_help_panel=_MODEL, help="Projection output size."),
    proj_weights: Optional[Path] = _opt(None, metavar="FILE", rich_help_panel=_MODEL,
                                        help="Trained projection weights."),
    seed: Optional[int] = _opt(None, metavar="N", rich_help_panel=_MODEL,
                               help="Seed of a random projection."),
    query: bool = _opt(False, "--query", rich_help_panel=_SPARSE, help="Embed as queries."),
    document: bool = _opt(False, "--document", rich_help_panel=_SPARSE, help="Embed as documents."),
    max_active_dims: Optional[int] = _opt(None, "--max-active-dims", metavar="K", rich_help_panel=_SPARSE,
                                          help="Keep K largest (the model's)."),
    device: str = _opt("auto", metavar="DEV", rich_help_panel=_SPEED, help="auto cpu cuda cuda:N mps (auto)."),
    dtype: str = _opt("auto", metavar="DTYPE", rich_help_panel=_SPEED,
                      help="auto float32 float16 bfloat16 int8 (auto)"),
    backend: str = _opt("torch", "--backend", metavar="NAME", rich_help_panel=_SPEED,
                        help="torch, or openvino: hfenc\\[openvino] (torch)"),
    threads: Optional[int] = _opt(None, "--threads", metavar="N", rich_help_panel=_SPEED,
                                  help="CPU threads (the free cores)."),
    batch_tokens: Optional[int] = _opt(None, metavar="N", rich_help_panel=_SPEED,
                                       help="Tokens per batch."),
    resume: bool = _opt(False, "--resume", rich_help_panel=_RESUME, help="Continue an interrupted run."),
    chunk_size: int = _opt(16384, metavar="N", rich_help_panel=_RESUME, help="Records per saved chunk (16384)."),
    reuse: Optional[Path] = _opt(None, "--reuse", metavar="OLD", rich_help_panel=_RESUME,
                                 help="Take unchanged rows from output OLD."),
    ray: bool = _opt(False, "--ray", rich_help_panel=_RAY, help="Run on Ray (hfenc\\[ray])."),
    ray_address: Optional[str] = _opt(None, "--ray-address", metavar="ADDR", rich_help_panel=_RAY,
                                      help="auto, ray://HOST:10001."),
    workers: Optional[int] = _opt(None, "--workers", metavar="N", rich_help_panel=_RAY,
                                  help="Replicas (GPUs, else CPUs)."),
) -> None:
    """Embed each record of the INPUTs as a row of OUT (.npy .parquet .npz) with a sidecar.

    Row i is record i; OUT appears only when complete (--resume goes on).

    A value in ( ) is the default; every option is explained in docs/cli.md.

    [b]Examples[/b]

    [dim]hfenc embed examples/sentences.txt[/dim]
    [dim]hfenc embed docs.jsonl --field body --id-field id -o docs.parquet[/dim]
    [dim]hfenc embed papers.jsonl --chunk-tokens 256 -o papers.parquet[/dim]
    [dim]cat queries.txt | hfenc embed - -o queries.npy --prompt-name query[/dim]
    [dim]hfenc embed 'shards/*.jsonl.gz' -o corpus.npy --resume[/dim]
    """
    if text and inputs:
        raise typer.BadParameter("give input files or --text, not both")
    if query and document:
        raise typer.BadParameter("give --query or --document, not both")
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
        side="query" if query else "document" if document else None, max_active_dims=max_active_dims,
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
    chunking = _chunking(chunk_tokens, chunk_overlap, chunk_by, late_chunking, doc_vectors)
    job = JobOptions(spec, output, force, resume, out_dtype, chunk_size, on_overflow, tuple(text or ()),  # type: ignore[arg-type]
                     out_format=out_format, quantize=quantize, ranges=ranges, keep_text=keep_text, chunking=chunking,
                     reuse=reuse, sparse=_sparse(model_spec, pooler))
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
        with Progress(_Line(), console=err, transient=True) as bar:
            task = bar.add_task("embed", total=None, visible=False)  # shown from the first batch on

            def tick(p: Any) -> None:
                elapsed = p.elapsed or float("inf")
                bar.update(task, visible=True, completed=p.rows_done, rows_total=p.rows_total, texts_s=p.rate,
                           tokens_s=p.tokens_done / elapsed, eta=p.eta, docs=p.docs_done, docs_total=p.docs_total,
                           phase=p.phase)

            result = run(job, load, progress=tick)
    else:
        result = run(job, load)

    if not quiet:
        for warning in result.warnings:
            say(f"Warning: {warning}", "yellow")
        say(_summary(result, job.out_dtype))
        if result.reuse is not None:
            say(_reuse_line(result.reuse))
        note = _threads_note(result.metadata.get("thread_policy"))
        if note:
            say(f"Note: {note}")
    if json_out:
        print_json({
            "output": str(result.output), "sidecar": str(result.sidecar), "rows": result.rows, "dim": result.dim,
            "seconds": round(result.seconds, 3), "embed_seconds": round(result.embed_seconds, 3), "truncated": result.truncated, "blank": result.blank,
            "tokens": result.tokens, "resumed_from": result.resumed_from, "warnings": result.warnings,
            **({"reuse": result.reuse} if result.reuse is not None else {}),
        })


def _sparse(spec: Any, pooler: str | None) -> bool | None:
    """Whether the job makes sparse rows, from the model's files (JSON only, no torch); None when
    only its config is here (a hub model's modules are read when it loads)."""
    from hfenc.model.catalog import sparse_pooler

    if spec.layout.sparse is not None or (pooler is not None and sparse_pooler(pooler)):
        return True
    return False if spec.resolved is not None and spec.resolved.source in ("local", "package") else None


def _chunking(tokens: int | None, overlap: int | None, by: str | None, late: bool, doc_vectors: bool) -> Any:
    """The chunk options, or None; the others without --chunk-tokens are refused, not ignored."""
    if tokens is None:
        given = [name for name, value in (("--chunk-overlap", overlap), ("--chunk-by", by),
                                          ("--late-chunking", late or None), ("--doc-vectors", doc_vectors or None))
                 if value is not None]
        if given:
            from hfenc.errors import ConfigError

            raise ConfigError(f"{given[0]} is for chunked jobs", hint="add --chunk-tokens N")
        return None
    from hfenc.compute.chunking import ChunkOptions

    options = ChunkOptions(tokens, overlap or 0, by or "tokens", late, doc_vectors)
    options.check()
    return options


def _reuse_line(reuse: dict[str, Any]) -> str:
    """What --reuse did: rows taken, rows embedded, and OLD's rows no new row has (a few named)."""
    line = f"Reused {reuse['reused']:,} rows of {reuse['from']}, embedded {reuse['embedded']:,}"
    if not reuse["dropped"]:
        return line + f"; every row of {Path(reuse['from']).name} has a counterpart"
    named = [str(d.get("id", d["row"])) for d in reuse["dropped_rows"][:3]]
    what = "ids" if any("id" in d for d in reuse["dropped_rows"][:3]) else "rows"
    more = ", ..." if reuse["dropped"] > len(named) else ""
    return line + (f"; {reuse['dropped']:,} rows of {Path(reuse['from']).name} have no counterpart "
                   f"(dropped: {what} {', '.join(named)}{more}; listed in the sidecar)")


def _summary(result: Any, out_dtype: str) -> str:
    computed = result.rows - result.resumed_from - ((result.reuse or {}).get("reused") or 0)
    rate = max(computed, 0) / result.embed_seconds if result.embed_seconds else 0.0
    total = time.perf_counter() - START
    stored = (result.metadata.get("quantization") or {}).get("precision") or out_dtype
    computed = result.metadata.get("dtype")
    how = f"stored as {stored}" + (f", computed in {computed}" if computed and computed != stored else "")
    what = f"{result.rows:,} rows" if result.documents is None else \
        f"{result.rows:,} chunks of {result.documents:,} records"
    unit = "texts/s" if result.documents is None else "chunks/s"
    sparse = result.metadata.get("sparse")
    if sparse:  # "3 sparse rows", "12 sparse chunks of 3 records"
        count, _, rest = what.partition(" ")
        shape = f"{count} sparse {rest} over a {result.dim:,}-token vocabulary"
    else:
        shape = f"{what} x {result.dim}"
    return (f"Wrote {shape} ({how}) to {result.output} in {total:.1f} s "
            f"(start-up {total - result.embed_seconds:.1f} s, embedding {result.embed_seconds:.1f} s, "
            f"{rate:,.0f} {unit}); {result.truncated:,} truncated; sidecar {result.sidecar}")


def _threads_note(policy: Any) -> str | None:
    """Why a run was slower than the machine allows: other processes held cores."""
    if not isinstance(policy, dict) or policy.get("mode") != "auto":
        return None
    seconds = {int(k): v for k, v in (policy.get("seconds_by_threads") or {}).items() if v >= 0.5}
    fewer = {n: v for n, v in seconds.items() if n < policy.get("ceiling", 0)}
    if not fewer:
        return None
    least = min(fewer)
    return (f"other processes kept cores busy: embedded with {least} of {policy['ceiling']} threads for "
            f"{fewer[least]:.1f} s (hfenc follows the free cores; --threads N fixes the count)")


# ---- search ---------------------------------------------------------------------------------

@app.command()
@handles_errors
def search(
    index: Path = typer.Argument(..., metavar="INDEX", show_default=False,
                                 help="An output of `hfenc embed`: OUT.npy, OUT.parquet or OUT.npz (its sidecar beside it)."),
    queries: Optional[list[str]] = typer.Argument(None, metavar="QUERY...", show_default=False, help="Query texts."),
    k: int = typer.Option(10, "-k", "--top-k", help="Rows per query."),
    queries_file: Optional[str] = typer.Option(None, "--queries", help="More queries, one per line, from a file or - (stdin)."),
    texts: Optional[Path] = typer.Option(None, "--texts", help="The input the index was embedded from, to show the hits' texts."),
    rescore: int = typer.Option(4, help="Binary indexes: rescore this many times k Hamming candidates in float."),
    per_doc: bool = typer.Option(False, "--per-doc", help="A chunked index: the best chunk of each of the top-k records."),
    prompt: Optional[str] = typer.Option(None, help="Prompt text for the queries (default: the model's `query` prompt, else the index's)."),
    prompt_name: Optional[str] = typer.Option(None, help="A prompt the model defines, for the queries."),
    device: str = typer.Option("auto", help="Where to embed the queries: auto, cpu, cuda, cuda:N, mps."),
    json_out: bool = typer.Option(False, "--json", help="Print the hits as JSON on stdout."),
) -> None:
    """Exact top-k search of an index for each QUERY, embedded exactly as the index was.

    The queries get the model, pooler, prompt, normalization, truncation and quantization the
    index's sidecar records; where the model defines a prompt named `query`, queries get it.
    A sparse (SPLADE) index's queries are embedded on the model's query side and scored by dot product.
    The index is read in blocks (flat memory whatever its size).

    [b]Examples[/b]

      hfenc search examples/sentences.npy "how do I read a file" -k 5 --texts examples/sentences.txt

      hfenc search docs.parquet "error handling" --json

      cat questions.txt | hfenc search docs.npy --queries -

      hfenc search papers.parquet "late chunking" --per-doc
    """
    from hfenc.searching import search as run_search

    found = list(queries or [])
    if queries_file is not None:
        found += [line for line in _query_lines(queries_file) if line.strip()]
    if not found:
        raise typer.BadParameter("give a QUERY, or --queries FILE (- for stdin)")
    result = run_search(index, found, k, texts=texts, rescore=rescore, device=device, prompt=prompt,
                        prompt_name=prompt_name, per_doc=per_doc)
    for warning in result.warnings:
        say(f"Warning: {warning}", "yellow")
    if json_out:
        print_json(result.to_dict())
        return
    shown = "none" if not result.prompt else (f"{result.prompt_name} ({result.prompt!r})" if result.prompt_name
                                              else repr(result.prompt))
    what = f"{result.rows:,} rows" if result.documents is None else \
        f"{result.rows:,} chunks of {result.documents:,} records"
    if result.stored == "sparse":  # "10 sparse rows, dot product ...; query side: query"
        count, _, rest = what.partition(" ")
        say(f"{count} sparse {rest}, {result.scoring}; query side: {result.side or 'none (plain encode)'}; "
            f"query prompt: {shown}; searched in {result.seconds:.3f} s")
    else:
        say(f"{what} of {result.stored}, {result.scoring}; query prompt: {shown}; searched in {result.seconds:.3f} s")
    with_ids = any(h.id is not None for r in result.results for h in r.hits)
    with_texts = any(h.text is not None for r in result.results for h in r.hits)
    with_ham = any(h.hamming is not None for r in result.results for h in r.hits)
    chunked = any(h.doc_row is not None for r in result.results for h in r.hits)
    numbers = ("rank", "score", "hamming", "row", "record", "chunk", "chars")
    for r in result.results:
        table = Sheet(title=f"{r.query}", title_justify="left")
        for col in ("rank", "score", *(["hamming"] if with_ham else []), "row",
                    *(["record", "chunk", "chars"] if chunked else []), *(["id"] if with_ids else []),
                    *(["text"] if with_texts else [])):
            table.add_column(col, justify="right" if col in numbers else "left")
        for h in r.hits:
            table.add_row(str(h.rank), f"{h.score:.4f}", *([str(h.hamming)] if with_ham else []), str(h.row),
                          *([str(h.doc_row), str(h.chunk), f"{h.char_start}-{h.char_end}"] if chunked else []),
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
    """A hit's text in about `width` columns, cut between words (--json has it whole)."""
    words = text.split()
    kept: list[str] = []
    for word in words:
        if kept and len(" ".join([*kept, word])) > width - 2:
            break
        kept.append(word)
    return " ".join(kept) + (" …" if len(kept) < len(words) else "")


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
        say(f"No interrupted runs in {where}.")
    else:
        _render_abandoned(found, sizes, actions)
    for message in refused:
        say(f"Warning: {message}", "yellow")
    for item in found if not remove and not json_out else ():
        if item.note:  # why an output is in use or unreadable: clean --remove will leave it alone
            say(f"Note: {item.output}: {item.note}")
    if refused:
        raise OutputError(f"{len(refused)} of {len(found)} interrupted run(s) were left alone (see above)")
    if any(i.status == "interrupted" for i in found) and not remove and not json_out:
        say("Resume one with the same command plus --resume, or delete them all with: hfenc clean --remove")


def _render_abandoned(found: list[Any], sizes: dict[Path, int], actions: dict[Path, str]) -> None:
    table = Sheet(title="Interrupted runs")
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
