"""A refused `hfenc embed`, checked the way every bad input must fail: exit 1, one `Error:` line,
no traceback, and nothing written beside the input."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from hfenc.cli import app


def refused_embed(folder: Path, model: Path, *args: str) -> str:
    """`hfenc embed` of a two-record folder/in.txt to folder/out.npy with `args`; returns the
    Error line after checking the refusal."""
    (folder / "in.txt").write_text("one long record of words\nanother\n")
    result = CliRunner().invoke(app, ["embed", str(folder / "in.txt"), "-m", str(model), "-o",
                                      str(folder / "out.npy"), "-q", *args])
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    assert "Traceback" not in result.output
    assert sorted(p.name for p in folder.iterdir()) == ["in.txt"]
    return errors[0]
