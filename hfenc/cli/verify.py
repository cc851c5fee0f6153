"""`hfenc verify`: an output still is what its sidecar says (hfenc.verification)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from hfenc.cli.base import app, handles_errors, out, print_json, say
from hfenc.cli.show import wrap


@app.command()
@handles_errors
def verify(
    output: Path = typer.Argument(..., metavar="OUT", show_default=False,
                                  help="An output of `hfenc embed`: OUT.npy, OUT.npz, OUT.parquet or a --ray directory."),
    sample: int = typer.Option(64, "--sample", metavar="N", help="Rows to embed again and compare."),
    every: bool = typer.Option(False, "--all", help="Embed every row again (slow: a whole embedding job)."),
    input: Optional[Path] = typer.Option(None, "--input", metavar="PATH",
                                         help="The input, when it is no longer where the sidecar says."),
    device: str = typer.Option("auto", metavar="DEV", help="Where to embed: auto, cpu, cuda, cuda:N, mps."),
    json_out: bool = typer.Option(False, "--json", help="The report as JSON on stdout."),
) -> None:
    """Check that OUT is what its sidecar says: exit 0, or a line per problem.

    The sidecar is hfenc's and unedited (its seal); every file it lists has its
    recorded size and SHA-256; shapes, dtypes, rows and side files agree; and a
    sample of rows, embedded again from the input as recorded, matches the stored
    rows within the tolerance of the dtype they were computed in (sparse rows:
    their active dimensions, cosine and values).

    [b]Examples[/b]

      hfenc verify docs.npy

      hfenc verify docs.parquet --sample 0

      hfenc verify corpus.npy --all --input /data/corpus.jsonl --json
    """
    from hfenc.verification import verify as run_verify

    if sample < 0:
        raise typer.BadParameter("--sample must be 0 or more")
    report = run_verify(output, sample=sample, every=every, input=input, device=device)
    for note in report.notes:
        say(f"Note: {note}")
    if json_out:
        print_json(report.to_dict())
    elif report.ok:  # the figures (min cosine, ...) are in --json: this line is the same on every machine
        files = f"{report.files} file{'s' if report.files != 1 else ''} match{'es' if report.files == 1 else ''} " \
                f"{'its hash' if report.files == 1 else 'their hashes'}"
        values = f", its values within {report.value_tolerance} x the row's largest" \
            if report.value_tolerance is not None else ""  # sparse rows
        checked = f", {report.sampled:,} embedded again in {report.computed_in}: each within cosine " \
                  f"{report.tolerance} of its stored row{values}" if report.sampled else ""
        _line(f"ok: {output}: {files}; {report.rows:,} rows{checked}")
    else:
        for problem in report.problems:
            _line(f"{output}: {problem}")
    if not report.ok:
        raise typer.Exit(1)


def _line(text: str) -> None:
    """One line of the report: whole on a pipe (one problem a line, for grep), wrapped between
    words in a terminal."""
    for part in wrap(text, out.width - 1, "  ") if out.is_terminal else [text]:
        out.print(part, markup=False, highlight=False, soft_wrap=True)
