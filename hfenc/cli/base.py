"""What every `hfenc` command shares: the two consoles (data on stdout, people on stderr), the Typer
app, the one path from a library error to `Error: ...` (+ `Hint: ...`) and an exit code, and the
table and JSON printers.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from typing import Any, Callable

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from hfenc.cli.show import Sheet, command_lines, fits, stacked, wrap

START = time.perf_counter()  # start-up (imports, input check, model load) counts in the summary
# Text a user typed or a file holds (paths, queries, texts, ids, model names) is data: printed as it
# is, never read as rich markup or emoji codes (`[red]`, `list[int]`, `:x:` must appear verbatim).
out = Console(soft_wrap=True, markup=False, emoji=False)  # data
err = Console(stderr=True, soft_wrap=True, markup=False, emoji=False)  # people

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


def say(message: str, style: str = "") -> None:
    """A message for people on stderr: in a terminal, wrapped between words, so that no number,
    name or option is split across lines (a log gets it on one line)."""
    for paragraph in message.split("\n"):
        for line in wrap(paragraph, err.width - 1, "  ") if err.is_terminal else [paragraph]:
            err.print(Text(line, style=style))


def say_command(intro: str, argv: list[str], style: str = "yellow") -> None:
    """A command to copy: in a terminal, on lines of its own broken between arguments with shell
    line continuations, so that it still runs when pasted."""
    import shlex

    if not err.is_terminal:  # a log keeps it on one line
        err.print(Text(f"{intro} {shlex.join(argv)}", style=style))
        return
    err.print(Text(intro, style=style))
    for line in command_lines(argv, err.width - 1):
        err.print(Text(line, style=style))


def fail(message: str, hint: str | None = None, code: int = 1) -> None:
    say(f"Error: {message}", "bold red")
    if hint:
        say(f"Hint: {hint}", "yellow")
    raise typer.Exit(code)


# The library names its arguments (`dim=0`); on the command line they are options (`--dim 0`).
_ARGUMENTS = ("dim", "truncate_dim", "max_length", "batch_tokens", "prompt_name", "prompt", "unlocked",
              "pooler", "proj_weights", "proj", "seed", "chunk_size", "threads", "backend", "dtype", "device",
              "max_active_dims")


def _as_options(message: str) -> str:
    import re

    names = "|".join(_ARGUMENTS)
    return re.sub(rf"(?<![\w-])({names})=", lambda m: "--" + m.group(1).replace("_", "-") + " ", message)


def handles_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the library's user-facing errors into one line on stderr and exit 1."""
    from hfenc.errors import HfencError, Interrupted

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Interrupted as exc:  # not an error: the user stopped it, and it can go on
            if _debug():
                raise
            argv = [a for a in sys.argv[1:] if a not in ("--resume", "--force")]
            say(f"Interrupted: {exc}", "bold yellow")
            say_command("Hint: resume with:", ["hfenc", *argv, "--resume"])
            say("Or drop the saved rows: hfenc clean --remove", "yellow")
            raise typer.Exit(128 + exc.signum)
        except HfencError as exc:
            if _debug():
                raise
            fail(_as_options(str(exc)), exc.hint and _as_options(exc.hint))
        except KeyboardInterrupt as exc:
            if _debug():
                raise
            say("Interrupted", "bold yellow")
            raise typer.Exit(128 + getattr(exc, "signum", 2))

    return wrapper


def _version(value: bool) -> None:
    if value:
        from hfenc import __version__

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


def print_table(table: Table) -> None:
    """A table in the width of stdout (the terminal's, else $COLUMNS or 80): its cells wrapped
    between words, or, where even that cannot fit, one block per row (hfenc.cli.show)."""
    if isinstance(table.title, str):  # a title is wrapped between words too (rich would cut it)
        table.title = "\n".join(line for part in table.title.split("\n") for line in wrap(part, out.width))
    if fits(out, table) or not isinstance(table, Sheet):  # a plain Table: rich folds what cannot fit
        out.print(table)
        return
    for line in stacked(table, out.width):
        out.print(line)


def print_json(data: Any) -> None:
    out.print_json(json.dumps(data, default=str))


def model_spec(model: str) -> Any:
    """The model resolved once, before torch is imported: one that is nowhere, or whose folder
    hfenc refuses, fails fast (bundled configs count)."""
    from hfenc.model.spec import load_spec

    return load_spec(model, config_only=True, bundled_ok=True)
