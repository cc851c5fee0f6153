"""What a user sees in an 80-column terminal (issue 22): nothing cut or split inside a word, a
name, a number or an option; what a user typed or a file holds shown verbatim; a --help that fits
on a screen or two; the small messages a new user meets."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hfenc.cli import app
from hfenc.cli.show import Sheet, command_lines, progress_line, stacked, wrap
from terminal import in_terminal, screen_lines

_BOX = re.compile(r"[│┃┏┓┗┛┡┩┠┨┯┷┳┻╇╈╋━─┼├┤┬┴┌┐└┘╭╮╰╯═║▕▏█░]")


def _words(text: str) -> set[str]:
    """The words shown, timings (`0.002 s`, which differ between two runs) left out."""
    return {w for w in _BOX.sub(" ", text).split() if not re.fullmatch(r"\d+\.\d+", w)}


def _fits(text: str, columns: int = 80) -> None:
    too_long = [line for line in screen_lines(text) if len(line.rstrip()) > columns]
    assert not too_long, too_long[:3]


def _same_words(args: list[str], cwd: Path | None = None) -> str:
    """The command at 80 columns shows only words it shows at 300: a word split across lines
    (`embeddin` + `gs`) or cut (`…`) would be a word the wide terminal never shows."""
    code, narrow = in_terminal(args, 80, cwd=cwd)
    assert code == 0, narrow
    _fits(narrow)
    code, wide = in_terminal(args, 300, cwd=cwd)
    assert code == 0, wide
    split = _words(narrow) - _words(wide)
    assert not split, sorted(split)[:10]
    return narrow


@pytest.mark.parametrize("args", [
    ["archs"], ["poolers"], ["info"], ["lock-plan", "bert-base-uncased", "--unlocked", "3"],
    ["lock-plan", "google/mt5-base", "--unlocked", "2", "--params"],
    ["lock-plan", "bert-base-uncased", "--unlocked", "3", "--memory", "--batch", "32", "--seq-len", "128"],
    ["lock-plan", "--list"],
])
def test_model_commands_fit_80_columns_without_splitting_a_word(args):
    _same_words(args)


def test_info_without_a_model_describes_the_default(minilm_dir):
    runner = CliRunner()
    default = runner.invoke(app, ["info", "--json"])
    named = runner.invoke(app, ["info", "sentence-transformers/all-MiniLM-L6-v2", "--json"])
    assert default.exit_code == 0 and json.loads(default.stdout) == json.loads(named.stdout)


@pytest.fixture
def notes(tmp_path: Path, bert: Path) -> Path:
    texts = tmp_path / "notes[v2].txt"
    texts.write_text("the [red] flag marks errors\npip install hfenc[ray] :x:\n"
                     "the supercalifragilisticexpialidocious sentences keep on going past sixty columns, "
                     "with 1,234,567 in it\n")
    return texts


def test_embed_and_search_at_80_columns_show_user_text_verbatim(tmp_path, bert, notes):
    # relative names, as a user types them (a path longer than the terminal has to wrap)
    code, made = in_terminal(["embed", notes.name, "-m", str(bert), "--device", "cpu"], cwd=tmp_path)
    assert code == 0, made
    _fits(made)
    out = tmp_path / "notes[v2].npy"
    assert out.exists() and "notes[v2].npy" in made.split()  # the summary names the output whole
    summary = " ".join(line.strip() for line in made.splitlines() if line.strip() and "▏" not in line)
    assert re.search(r"Wrote 3 rows x \d+ \(stored as float32\)", summary)
    shown = _same_words(["search", out.name, "python list[int]", "--texts", notes.name, "--device", "cpu"], tmp_path)
    for text in ("python list[int]", "[red]", "hfenc[ray]", ":x:"):
        assert text in shown, text
    code, missing = in_terminal(["embed", "notes[v3].txt", "-m", str(bert)], cwd=tmp_path)
    assert code == 1 and "Error: no file matches 'notes[v3].txt'" in " ".join(missing.split())
    source = notes.read_text().split()  # a long hit is shortened between words, never inside one
    assert not [w for w in _words(shown) if len(w) > 3 and w not in source and any(s.startswith(w) for s in source)]


def test_progress_lines_fit(tmp_path, bert):
    texts = tmp_path / "many.txt"
    texts.write_text("".join(f"text number {i} with a few more words\n" for i in range(3000)))
    code, shown = in_terminal(["embed", str(texts), "-m", str(bert), "--device", "cpu", "--batch-tokens", "64"])
    assert code == 0, shown
    _fits(shown)
    drawn = [line for line in screen_lines(shown) if "rows" in line and "/" in line]
    assert drawn, shown  # the live line was drawn at least once
    assert all(re.search(r"\d[\d,]*/3,000 rows", line) for line in drawn)


@pytest.mark.parametrize("width", [20, 32, 40, 50, 60, 80, 100, 160])
def test_progress_line_keeps_whole_fields_in_any_width(width):
    for done, total, eta in ((0, None, None), (1234, 2000, 5.2), (999_999, 1_000_000, 3725.0), (7, 10, None)):
        line = progress_line(done, total, 225.4 if done else None, 8410.2 if done else None, eta, width)
        assert len(line) <= max(width, len(f"{done:,}/{total:,} rows" if total else f"{done:,} rows"))
        fields = line.split("▏ ")[-1].split("  ")
        assert fields[0] == (f"{done:,}/{total:,} rows" if total else f"{done:,} rows")
        for field in fields[1:]:
            assert re.fullmatch(r"\d+%|ETA \d+:\d\d(:\d\d)?|[\d,]+ texts/s|[\d,]+ tok/s", field), field
        if width >= 80 and eta is not None:
            assert "ETA" in line  # the ETA is the first thing kept after the count


def test_resume_hint_breaks_between_arguments_and_still_runs():
    argv = ["hfenc", "embed", "my notes/corpus[v2].jsonl", "--field", "body", "-o",
            "/data/embeddings/a-rather-long-output-name.npy", "--model", "BAAI/bge-small-en-v1.5",
            "--prompt", "query: ", "--resume"]
    for width in (40, 60, 80, 120):
        lines = command_lines(argv, width)
        assert all(len(line) <= width or len(shlex.split(line.rstrip("\\"))) <= 2 for line in lines)  # an option
        assert shlex.split(" ".join(line.rstrip("\\").strip() for line in lines)) == argv
        assert all(line.endswith(" \\") for line in lines[:-1])


def test_wrap_and_stacked_never_split_a_word():
    text = "Wrote 1,234,567 rows x 384 (stored as float32) to /a/b/c.npy; use --resume-from-anywhere ok"
    for width in (20, 30, 45, 80):
        lines = wrap(text, width)
        assert " ".join(lines).split() == text.split()
        assert all(len(line) <= width for line in lines if " " in line)
    table = Sheet(title="Architectures of a long title")
    for name in ("model type", "blocks", "final norm"):
        table.add_column(name)
    table.add_row("xlm-roberta", "encoder.layer", "final_layer_norm")
    table.add_row("mt5", "block", "")
    lines = [t.plain for t in stacked(table, 30)]
    assert "xlm-roberta" in lines and "  blocks      encoder.layer" in lines
    assert not any("final norm" in line for line in lines[lines.index("mt5"):])  # empty cells are left out


def test_embed_help_is_grouped_and_fits_a_screen():
    code, shown = in_terminal(["embed", "--help"])
    assert code == 0
    _fits(shown)
    lines = shown.rstrip().splitlines()
    assert len(lines) <= 88, len(lines)  # 82 before the Chunks panel (issue 23) took its 6
    for panel in ("Input", "Output", "Chunks", "Model", "Speed", "Resume", "Ray"):
        assert f"─ {panel} ─" in shown, panel
    for name in ("parquet", "arrow", "jsonl", "json", "hfenc[openvino]", "hfenc[ray]", "--threads", "--resume"):
        assert name in shown, name
    assert "Usage: hfenc embed" in shown  # `python -m hfenc` shows the command's real name


# ---- the small messages ---------------------------------------------------------------------

def _refused(*args: str) -> tuple[str, str]:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("Error: ") and "Traceback" not in result.stderr
    return lines[0], "\n".join(lines[1:])


def test_text_without_an_output_names_text(bert):
    error, hint = _refused("embed", "--text", "hello", "-m", str(bert))
    assert error == "Error: --text needs an output path" and "-o OUT.npy" in hint


def test_nothing_to_resume_says_what_to_do(tmp_path, bert):
    texts = tmp_path / "t.txt"
    texts.write_text("a\nb\n")
    error, hint = _refused("embed", str(texts), "-m", str(bert), "--resume")
    assert "nothing to resume" in error and "drop --resume" in hint
    assert CliRunner().invoke(app, ["embed", str(texts), "-m", str(bert), "-q"]).exit_code == 0
    error, hint = _refused("embed", str(texts), "-m", str(bert), "--resume")
    assert error.endswith("t.npy is complete") and "--force" in hint
    error, hint = _refused("embed", str(texts), "-m", str(bert), "-o", str(tmp_path / "no such" / "o.npy"))
    assert "does not exist" in error and f"mkdir -p {shlex.quote(str(tmp_path / 'no such'))}" in hint


def test_summary_names_the_stored_and_the_computed_dtype():
    from hfenc.cli.files import _summary

    class Result:
        rows, resumed_from, dim, embed_seconds, truncated, documents, reuse = 10, 0, 384, 1.0, 0, None, None
        output, sidecar = Path("a.npy"), Path("a.npy.json")
        metadata = {"dtype": "int8"}

    assert "(stored as float32, computed in int8)" in _summary(Result(), "float32")
    Result.metadata = {"dtype": "float32", "quantization": {"precision": "binary"}}
    assert "(stored as binary, computed in float32)" in _summary(Result(), "float32")
    Result.documents = 3  # a chunked job counts chunks and the records they came from
    assert _summary(Result(), "float32").startswith("Wrote 10 chunks of 3 records x 384 ")
    assert "10 chunks/s" in _summary(Result(), "float32")


def test_a_chunked_progress_line_counts_chunks_and_records():
    from hfenc.cli.show import progress_line

    line = progress_line(1200, 2000, 30.0, 8000.0, 5.0, 79, docs=31, docs_total=50)
    assert "1,200/2,000 chunks" in line and "31/50 records" in line and "30 chunks/s" in line
    assert len(line) <= 79


def test_a_busy_machine_is_named_in_a_note():
    from hfenc.cli.files import _threads_note

    busy = {"mode": "auto", "ceiling": 2, "seconds_by_threads": {"1": 8.2, "2": 0.3}}
    assert "1 of 2 threads for 8.2 s" in _threads_note(busy) and "--threads" in _threads_note(busy)
    assert _threads_note({**busy, "seconds_by_threads": {"2": 9.0}}) is None
    assert _threads_note({**busy, "mode": "fixed"}) is None


@pytest.mark.parametrize("suffix", [".npy", ".parquet"])
def test_clean_reports_the_bytes_it_removes(tmp_path, bert, suffix):
    from hfenc import Embedder, InputSpec, JobOptions, embed_file
    from hfenc.errors import Interrupted
    from interrupts import stop_after

    texts = tmp_path / "t.txt"
    texts.write_text("".join(f"line {i} of some text\n" for i in range(200)))
    job = JobOptions(InputSpec(str(texts)), tmp_path / f"out{suffix}", chunk_size=50)
    with pytest.raises((Interrupted, KeyboardInterrupt)):
        embed_file(job, lambda: Embedder(str(bert), device="cpu"), progress=stop_after(120))
    listed = json.loads(CliRunner().invoke(app, ["clean", str(tmp_path), "--json"]).stdout)
    on_disk = sum(p.stat().st_size for f in listed[0]["files"] for p in ([Path(f)] if Path(f).is_file() else Path(f).rglob("*"))
                  if p.is_file())
    assert listed[0]["bytes"] == on_disk > 0
    removed = json.loads(CliRunner().invoke(app, ["clean", str(tmp_path), "--remove", "--json"]).stdout)
    assert removed[0]["bytes"] == on_disk and removed[0]["action"] == "removed"
    assert not any(Path(f).exists() for f in listed[0]["files"])
