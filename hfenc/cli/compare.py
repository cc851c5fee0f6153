"""`hfenc diff A B`: hfenc.compare.diff rendered as three tables on stdout (or --json)."""

from __future__ import annotations

from pathlib import Path

import typer

from hfenc.cli.base import app, handles_errors, print_json, print_table, say
from hfenc.cli.show import Sheet


@app.command()
@handles_errors
def diff(
    a: Path = typer.Argument(..., metavar="A", show_default=False,
                             help="An output of `hfenc embed`: OUT.npy, OUT.npz or OUT.parquet (its sidecar beside it)."),
    b: Path = typer.Argument(..., metavar="B", show_default=False, help="Another output of the same input."),
    sample: int = typer.Option(1000, "--sample", help="Rows whose nearest neighbours are compared (seeded)."),
    k: int = typer.Option(10, "-k", help="Neighbours per sample row (overlap@k)."),
    pairs: int = typer.Option(20000, "--pairs", help="Pairs of rows whose cosines are rank-correlated (Spearman)."),
    top: int = typer.Option(10, "--top", help="How many of the rows that moved most to list."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
) -> None:
    """Compare two outputs of one input: per-row cosine, neighbours, Spearman.

    For two models, two versions, float32 vs bf16, float vs quantized.
    Refused when A and B were not embedded from the same input.

    cosine: row i of A against row i of B, min, p1, median, mean (one width).
    overlap@k: the exact top-k neighbours of --sample rows, in A and in B.
    spearman: the rank correlation of A's and B's cosines of --pairs pairs.
    Sparse (SPLADE) outputs compare with sparse ones: neighbours and pairs by
    dot product, their similarity.

    [b]Examples[/b]

    [dim]hfenc diff docs-f32.npy docs-bf16.npy[/dim]
    [dim]hfenc diff minilm.parquet bge.parquet --sample 2000 --top 20[/dim]
    [dim]hfenc diff docs.npy docs-int8.npy --json[/dim]
    [dim]hfenc diff splade.npz splade-k64.npz[/dim]
    """
    from hfenc.compare import diff as run_diff

    result = run_diff(a, b, sample=sample, k=k, pairs=pairs, top=top)
    if json_out:
        print_json(result.to_dict())
        return
    say(f"{result.rows:,} rows compared in {result.seconds:.2f} s")
    sides = Sheet()
    for col in ("", "output", "embedded with"):
        sides.add_column(col)
    for label, s in (("A", result.a), ("B", result.b)):
        width = f"vocabulary {s.dim:,}" if s.stored == "sparse" else f"{s.dim}-d"
        sides.add_row(label, s.path, f"{s.model or '?'} ({s.dtype or '?'}), stored {s.stored}, {width}")
    print_table(sides)

    metrics = Sheet(title="How far B is from A", title_justify="left")
    for col, justify in (("metric", "left"), ("value", "right"), ("over", "left")):
        metrics.add_column(col, justify=justify)
    if result.cosine is None:
        why = f"{result.a.dim}-d vs {result.b.dim}-d rows" if result.a.dim != result.b.dim else "no rows"
        metrics.add_row("cosine", "-", f"none: {why}")
    else:
        for name, value in result.cosine.items():
            metrics.add_row(f"cosine {name}", f"{value:.6f}", f"{result.rows:,} rows")
    by = "" if result.similarity == "cosine" else f", by {result.similarity}"  # sparse: dot products
    if result.overlap is not None:
        for name, value in result.overlap.items():
            metrics.add_row(f"overlap@{result.k} {name}", f"{value:.4f}", f"{result.sample:,} sample rows{by}")
    metrics.add_row("spearman", "-" if result.spearman is None else f"{result.spearman:.6f}",
                    f"{result.pairs:,} pairs{by}")
    print_table(metrics)

    if result.moved:
        chunked = any(m.doc_row is not None for m in result.moved)
        with_ids = any(m.id is not None for m in result.moved)
        moved = Sheet(title="Moved most (lowest cosine)", title_justify="left")
        for col in ("row", "cosine", *(["record", "chunk"] if chunked else []), *(["id"] if with_ids else [])):
            moved.add_column(col, justify="left" if col == "id" else "right")
        for m in result.moved:
            moved.add_row(str(m.row), f"{m.cosine:.6f}", *([str(m.doc_row), str(m.chunk)] if chunked else []),
                          *([m.id or ""] if with_ids else []))
        print_table(moved)
