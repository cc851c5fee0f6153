"""The `hfenc` command line: a thin adapter over the library (the only package using typer/rich).

Each command parses options, calls one core function and renders the result. Data (tables,
--json) goes to stdout; progress, warnings, summaries and errors go to stderr. A user error is
`Error: ...` (+ `Hint: ...`), exit 1; usage errors are Typer's, exit 2; an interrupted job exits
130 after saying how to resume; HFENC_DEBUG=1 shows tracebacks.
"""


from __future__ import annotations

# each registers its commands on `app`, in this order in `hfenc --help` (embed and search first)
from hfenc.cli import (files as _files, models as _models, compare as _compare,  # noqa: F401
                       verify as _verify)  # noqa: F401
from hfenc.cli.base import app


def main() -> None:
    app(prog_name="hfenc")  # `python -m hfenc` too


__all__ = ["app", "main"]
