"""Docs that cannot drift: every example in README.md and docs/*.md is run, and its output must be
the one the page shows.

What is run (the convention is also stated in docs/README.md):

- A fenced ```console block: each line that starts with `$ ` is a command, and the lines after it,
  up to the next `$ ` line or the end of the block, are its output as a terminal shows it (stdout
  and stderr in the order they were written). A command ending in ` \\` continues on the next line.
  Commands run in a fresh working directory per page, prepared with a copy of `examples/` and
  `docs/examples/` at the same relative paths as in the repository, in the page's order (a later
  block sees the files an earlier one wrote). Supported commands:
    `hfenc ARGS...`   run in this process through typer's CliRunner against `hfenc.cli.app`
                      (COLUMNS=100, not a terminal: no progress bar, no colour);
    `echo TEXT | hfenc ...` and `cat FILE | hfenc ...`   the same, with that standard input;
    `echo $?`         the exit status of the previous command;
    `cat FILE`        the file's text;
    `python FILE.py`  the script, run in this process (its stdout).
  Anything else fails the test: mark such a block illustrative.
- A fenced ```python block is executed in this process (in the page's working directory); its
  stdout must equal the ```text block that follows it (blank lines between them allowed), or be
  empty when no ```text block follows.
- A block is only illustrative, and skipped (each counts as one skipped test), when the line
  right before its opening fence is `<!-- illustrative -->` or `<!-- illustrative: REASON -->`:
  it needs a GPU, a Ray cluster, a hub model, the network, or a file the page does not make.
  ```bash, ```json, ```text and other blocks are not run (install commands, file formats).

What is masked before comparing (`mask`, applied to the page's lines and to the real output
alike; everything else must match exactly, trailing spaces and trailing blank lines aside):

- durations: a decimal number followed by ` s` (`in 5.8 s`, `start-up 4.1 s`, `searched in
  0.004 s`) -> `<t> s`; throughput: `N texts/s` -> `<n> texts/s` (and `chunks/s`);
- in JSON: the values of "seconds", "embed_seconds", "elapsed_seconds" (timings), "created" (a
  timestamp), "threads" (the machine's cores) and of the package versions under "versions"
  ("hfenc", "torch", "transformers", "ray", "openvino", "nncf", "pyarrow"); a sidecar's seal
  ("sidecar_sha256", which covers the timings) and the sha256 of an array in its "files";
- floats printed with 7 or more decimals are compared on their first 5 decimals (float32 sums
  differ in the last bits between CPUs' kernels);
- the working directory's absolute path is shown as `$PWD`.

Counts, shapes, table layouts, scores printed with up to 6 decimals, hashes of inputs and
weights, messages and exit codes are compared as they are.

To regenerate the shown output after a deliberate change (it is never edited by hand):

    HF_HUB_OFFLINE=1 python tests/test_docs.py --update [PAGE...]

It rewrites only outputs whose masked form differs, so timings shown stay as they were
(`--update --timings` rewrites them all).
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import io
import itertools
import os
import re
import runpy
import shlex
import shutil
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

# The same environment as tests/conftest.py, for `python tests/test_docs.py --update`: no network,
# and `--dtype auto` stays float32 on every CPU (the pages' outputs are float32 outputs).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HFENC_AUTO_BF16"] = "0"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
COLUMNS = 100
# What the CLI sees: a 100-column pipe. Variables that would make rich treat it as a terminal (or
# show tracebacks) are removed for each command.
CLI_ENV = {"COLUMNS": str(COLUMNS), "FORCE_COLOR": None, "TTY_COMPATIBLE": None, "NO_COLOR": None,
           "HFENC_DEBUG": None}
ILLUSTRATIVE = re.compile(r"^<!-- illustrative(?::\s*(.*?))? -->$")
FENCE = re.compile(r"^(```+)\s*([\w+-]*)\s*$")


# ---- masking ----------------------------------------------------------------------------------

_MASKS = [
    (re.compile(r"\b\d+\.\d+ s\b"), "<t> s"),
    (re.compile(r"\b\d[\d,]* texts/s\b"), "<n> texts/s"),
    (re.compile(r"\b\d[\d,]* chunks/s\b"), "<n> chunks/s"),
    (re.compile(r'"(seconds|embed_seconds|elapsed_seconds)": [0-9.eE+-]+'), r'"\1": <t>'),
    (re.compile(r'"created": "[^"]*"'), '"created": <time>'),
    (re.compile(r'"threads": \d+'), '"threads": <cores>'),
    # the thread policy: what this machine has free (issue 22), and a note when cores were busy
    (re.compile(r'"(cpus|ceiling|changes)": \d+'), r'"\1": <cores>'),
    (re.compile(r'"mode": "(auto|fixed)"'), '"mode": <auto or HFENC_THREADS>'),
    (re.compile(r'"cpu_quota": [^,\n]+'), '"cpu_quota": <quota>'),
    (re.compile(r'"seconds_by_threads": \{[^}]*\}'), '"seconds_by_threads": <seconds>'),
    (re.compile(r"^Note: other processes kept cores busy.*\n?", re.MULTILINE), ""),
    (re.compile(r'"(hfenc|torch|transformers|ray|openvino|nncf|pyarrow)": "\d[^"]*"'), r'"\1": <version>'),
    (re.compile(r"(?<![\d.])(-?\d+\.\d{5})\d{2,}"), r"\1"),
    # the sidecar's seal covers the timings above; an array's hash, its numbers (issue 24)
    (re.compile(r'"sidecar_sha256": "[^"]*"'), '"sidecar_sha256": <seal>'),
    (re.compile(r'("[^"\n]+\.(?:npy|parquet)": \{\n\s*"bytes": \d+,\n\s*"sha256": )"[^"]*"'), r"\1<array hash>"),
]


def mask(text: str, workdir: Path | None = None) -> str:
    """`text` with what legitimately varies between runs replaced (see the module docstring)."""
    if workdir is not None:
        text = text.replace(str(workdir), "$PWD")
    for pattern, replacement in _MASKS:
        text = pattern.sub(replacement, text)
    lines = [line.rstrip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines)


# ---- reading a page ---------------------------------------------------------------------------

@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    body: list[str]  # the lines between the fences
    illustrative: str | None  # the reason ("" when none is given), or None when the block is run
    output: Block | None = None  # a python block's ```text block

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT) if self.page.is_relative_to(ROOT) else self.page}:{self.line}"


def read_blocks(page: Path, text: str | None = None) -> list[Block]:
    lines = (page.read_text(encoding="utf-8") if text is None else text).splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == opening.group(1)), None)
        if end is None:
            raise ValueError(f"{page}:{i + 1}: a fenced block is never closed")
        marker = ILLUSTRATIVE.match(lines[i - 1].strip()) if i else None
        blocks.append(Block(page, i + 1, opening.group(2), lines[i + 1:end],
                            (marker.group(1) or "") if marker else None))
        i = end + 1
    for before, after in itertools.pairwise(blocks):  # a python block's output: the ```text right after it
        gap = lines[before.line + len(before.body) + 1:after.line - 1]
        if before.lang == "python" and after.lang == "text" and not any(g.strip() for g in gap):
            before.output = after
    return blocks


def stray_markers(page: Path) -> list[str]:
    """Illustrative markers that are not right before a fence (they would mark nothing)."""
    lines = page.read_text(encoding="utf-8").splitlines()
    return [f"{page.name}:{n + 1}" for n, line in enumerate(lines)
            if ILLUSTRATIVE.match(line.strip()) and not (n + 1 < len(lines) and FENCE.match(lines[n + 1]))]


# ---- running ----------------------------------------------------------------------------------

@dataclass
class Step:
    """One command (or python block) with the output the page shows and the one it printed."""
    block: Block
    command: str
    line: int  # 1-based line in the page of the first output line (or of the ```text body)
    expected: list[str]
    actual: str = ""
    new_block: bool = False  # a python block that printed, with no ```text block yet: add one at `line`


@dataclass
class Session:
    workdir: Path
    status: int = 0
    steps: list[Step] = field(default_factory=list)


def prepare(workdir: Path) -> Path:
    """A working directory laid out like the repository: examples/ and docs/examples/."""
    shutil.copytree(ROOT / "examples", workdir / "examples", ignore=shutil.ignore_patterns("*.npy", "*.json"))
    if (ROOT / "docs" / "examples").is_dir():
        shutil.copytree(ROOT / "docs" / "examples", workdir / "docs" / "examples",
                        ignore=shutil.ignore_patterns("*.npy", "*.json", "*.parquet"))
    return workdir


def _hfenc(argv: list[str], stdin: str | None) -> tuple[int, str]:
    from typer.testing import CliRunner

    from hfenc.cli import app

    for name in ("hfenc.cli.base", "hfenc.cli.files"):  # timings count from this command's start, as in
        module = sys.modules.get(name)                  # a new process (they are masked anyway)
        if module is not None and hasattr(module, "START"):
            module.START = time.perf_counter()
    result = CliRunner().invoke(app, argv, input=stdin, env=CLI_ENV)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        trace = "".join(traceback.format_exception(*result.exc_info)) if result.exc_info else repr(result.exception)
        raise RuntimeError(f"hfenc {shlex.join(argv)} raised instead of exiting:\n{trace}")
    return result.exit_code, result.output


def _python(run) -> tuple[int, str]:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        run()
    return 0, buffer.getvalue()


def run_command(command: str, session: Session) -> str:
    if command == "echo $?":
        return f"{session.status}\n"
    stdin = None
    if " | " in command:
        source, command = command.split(" | ", 1)
        words = shlex.split(source)
        if words[0] == "echo":
            stdin = " ".join(words[1:]) + "\n"
        elif words[0] == "cat" and len(words) == 2:
            stdin = Path(words[1]).read_text(encoding="utf-8")
        else:
            raise ValueError(f"unsupported pipe source {source!r} (echo TEXT | ..., cat FILE | ...)")
    argv = shlex.split(command)
    if argv[0] == "hfenc":
        session.status, out = _hfenc(argv[1:], stdin)
    elif argv[0] == "cat" and len(argv) == 2 and stdin is None:
        session.status, out = 0, Path(argv[1]).read_text(encoding="utf-8")
    elif argv[0] == "python" and len(argv) == 2 and argv[1].endswith(".py") and stdin is None:
        session.status, out = _python(lambda: runpy.run_path(argv[1], run_name="__main__"))
    else:
        raise ValueError(f"unsupported command {command!r}: the docs test runs hfenc, echo $?, cat FILE, "
                         "python FILE.py; mark the block <!-- illustrative --> instead")
    return out


def console_steps(block: Block) -> list[Step]:
    steps: list[Step] = []
    lines = block.body
    i = 0
    while i < len(lines):
        if not lines[i].startswith("$ "):
            raise ValueError(f"{block.where}: output line {lines[i]!r} before any `$ ` command")
        command = lines[i][2:]
        while command.endswith("\\") and i + 1 < len(lines):
            i += 1
            command = command[:-1].rstrip() + " " + lines[i].strip()
        i += 1
        start = i
        while i < len(lines) and not lines[i].startswith("$ "):
            i += 1
        steps.append(Step(block, command.strip(), block.line + 1 + start, lines[start:i]))
    return steps


def run_page(page: Path, workdir: Path, text: str | None = None) -> Session:
    """Run every runnable block of `page` (or of `text`, read as that page) in `workdir`."""
    session = Session(prepare(workdir))
    blocks = read_blocks(page, text)
    before = os.getcwd()
    os.chdir(workdir)
    try:
        for block in blocks:
            if block.illustrative is not None:
                continue
            if block.lang == "console":
                for step in console_steps(block):
                    step.actual = run_command(step.command, session)
                    session.steps.append(step)
            elif block.lang == "python":
                code = compile("\n".join(block.body) + "\n", block.where, "exec")
                _, printed = _python(functools.partial(exec, code, {"__name__": "__main__"}))
                shown = block.output
                end = block.line + len(block.body) + 2  # the line after the closing fence
                step = Step(block, "python block", shown.line + 1 if shown else end, shown.body if shown else [],
                            new_block=shown is None)
                step.actual = printed
                session.steps.append(step)
    finally:
        os.chdir(before)
    return session


def mismatches(session: Session) -> list[str]:
    """A readable diff for each step whose masked output differs from the page's."""
    found = []
    for step in session.steps:
        want = mask("\n".join(step.expected), session.workdir)
        got = mask(step.actual, session.workdir)
        if want != got:
            diff = "\n".join(difflib.unified_diff(want.splitlines(), got.splitlines(), "page", "real output",
                                                  lineterm="", n=2))
            found.append(f"{step.block.where} (output from line {step.line}): $ {step.command}\n{diff}")
    return found


def update_page(page: Path, session: Session, everything: bool = False) -> int:
    """Write the real output into `page` where its masked form differs (`everything`: wherever it
    differs at all, timings included); returns how many outputs changed."""
    lines = page.read_text(encoding="utf-8").splitlines()
    changed = 0
    for step in sorted(session.steps, key=lambda s: s.line, reverse=True):
        if mask("\n".join(step.expected), session.workdir) == mask(step.actual, session.workdir) and not everything:
            continue
        new = step.actual.replace(str(session.workdir), "$PWD").rstrip("\n").splitlines()
        new = [line.rstrip() for line in new]
        if step.new_block:
            new = ["", "```text", *new, "```"]
        lines[step.line - 1:step.line - 1 + len(step.expected)] = new
        changed += 1
    page.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return changed


# ---- the tests --------------------------------------------------------------------------------

def _ids(pages: list[Path]) -> list[str]:
    return [str(p.relative_to(ROOT)) for p in pages]


def _illustrative() -> list[Block]:
    return [b for page in PAGES for b in read_blocks(page) if b.illustrative is not None]


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_page_output_is_what_the_commands_print(page, tmp_path):
    session = run_page(page, tmp_path / "work")
    problems = mismatches(session)
    assert not problems, (f"{len(problems)} example(s) of {page.name} print something else now; if the "
                          "change is deliberate, regenerate with: python tests/test_docs.py --update "
                          f"{page.relative_to(ROOT)}\n\n" + "\n\n".join(problems))


@pytest.mark.parametrize("block", _illustrative(), ids=lambda b: b.where)
def test_illustrative_block(block):
    pytest.skip(f"{block.where}: illustrative ({block.illustrative or 'not run'})")


def test_every_example_is_run_or_marked():
    runnable = illustrative = 0
    for page in PAGES:
        assert not stray_markers(page), f"markers that precede no fence: {stray_markers(page)}"
        for block in read_blocks(page):
            if block.lang not in ("console", "python"):
                continue
            if block.illustrative is not None:
                illustrative += 1
                continue
            runnable += 1
            if block.lang == "console":
                assert console_steps(block), f"{block.where}: a console block without a `$ ` command"
    assert runnable >= 20 and illustrative <= runnable, (runnable, illustrative)


def test_mask_hides_timings_and_versions_only():
    shown = ("Wrote 307 x 384 float32 to a.npy in 5.8 s (start-up 4.1 s, embedding 1.8 s, 174 texts/s); "
             "2 truncated; sidecar a.npy.json")
    real = ("Wrote 307 x 384 float32 to a.npy in 17.1 s (start-up 4.2 s, embedding 12.9 s, 1,024 texts/s); "
            "2 truncated; sidecar a.npy.json")
    assert mask(shown) == mask(real)
    for changed in (real.replace("307", "306"), real.replace("float32", "float16"), real.replace("2 truncated", "3 truncated")):
        assert mask(shown) != mask(changed)
    assert mask('"seconds": 0.0004,\n"created": "2026-12-01T15:30:38+00:00",\n"torch": "2.13.0+cpu"') == \
        mask('"seconds": 1.5,\n"created": "2027-01-01T00:00:00+00:00",\n"torch": "2.14.1"')
    assert mask('"score": 0.697984516620636') == mask('"score": 0.6979849') != mask('"score": 0.697994516620636')
    assert mask("│    1 │ 0.9739 │ 169 │") != mask("│    1 │ 0.9740 │ 169 │")
    assert mask('"rows": 307') != mask('"rows": 308') and mask('"sha256": "sha256:5e42"') != mask('"sha256": "sha256:5e43"')


def test_a_changed_output_line_fails(tmp_path):
    """The comparison catches a real change: a copy of a page with one output line altered fails,
    naming that line, while the rest of the copy still matches."""
    page = ROOT / "docs" / "lock-plans.md"
    lines = page.read_text(encoding="utf-8").splitlines()
    target = next(n for n, line in enumerate(lines) if "21,854,208" in line and line.startswith("│"))
    lines[target] = lines[target].replace("21,854,208", "21,854,209")
    copy = tmp_path / "lock-plans.md"
    copy.write_text("\n".join(lines) + "\n", encoding="utf-8")
    problems = mismatches(run_page(copy, tmp_path / "work"))
    assert len(problems) == 1, problems
    assert "-" + mask(lines[target]) in problems[0] and "21,854,208" in problems[0], problems[0]
    # the same comparison on strings: one digit of one score in a search table is a failure
    shown = ["307 rows of float32, cosine; query prompt: none; searched in 0.001 s", "│    1 │ 0.9739 │ 169 │"]
    block = Block(copy, 1, "console", ["$ hfenc search a.npy x", *shown], None)
    step = console_steps(block)[0]
    step.actual = "307 rows of float32, cosine; query prompt: none; searched in 0.350 s\n│    1 │ 0.9739 │ 169 │\n"
    assert not mismatches(Session(tmp_path, steps=[step]))
    step.actual = step.actual.replace("0.9739", "0.9738")
    assert mismatches(Session(tmp_path, steps=[step]))

def main(argv: list[str]) -> int:
    """`python tests/test_docs.py --update [PAGE...]`: regenerate the shown output (or, without
    --update, only report the differences); `--update --timings` rewrites every output, so the
    timings shown are those of this run too."""
    import tempfile

    update, everything = "--update" in argv, "--timings" in argv
    names = [a for a in argv if not a.startswith("--")]
    pages = [(ROOT / n).resolve() for n in names] if names else PAGES
    failed = 0
    for page in pages:
        with tempfile.TemporaryDirectory() as tmp:
            session = run_page(page, Path(tmp) / "work")
            problems = mismatches(session)
            if update and (problems or everything):
                print(f"{page.relative_to(ROOT)}: {update_page(page, session, everything)} output(s) rewritten")
            elif problems:
                failed += 1
                print("\n\n".join(problems))
            else:
                print(f"{page.relative_to(ROOT)}: {len(session.steps)} example(s) match")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
