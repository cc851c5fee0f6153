"""Output that fits the terminal (issue 22): lines wrapped between words, never inside a number,
name or option; tables that wrap their cells between words or, when even that cannot fit, are
shown stacked (one block per row); a progress line whose fields drop, least useful first, to fit;
commands to copy broken between arguments.
"""

from __future__ import annotations

import shlex
import textwrap
from typing import Any

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text


def wrap(text: str, width: int, indent: str = "") -> list[str]:
    """`text` in lines of at most `width` columns, broken only at spaces (a word longer than a
    line keeps a line of its own, whole)."""
    return textwrap.wrap(text, max(width, 20), subsequent_indent=indent, break_long_words=False,
                         break_on_hyphens=False) or [""]


def command_lines(argv: list[str], width: int) -> list[str]:
    """A shell command in lines of at most `width` columns, broken between arguments with ` \\`
    continuations (each argument quoted for the shell, never split)."""
    words: list[str] = []
    for arg in argv:  # an option stays on the line of its value
        if words and words[-1].startswith("-") and " " not in words[-1] and not arg.startswith("-"):
            words[-1] += " " + shlex.quote(arg)
        else:
            words.append(shlex.quote(arg))
    lines: list[str] = []
    line = "  "
    for word in words:
        if line.strip() and len(line) + 1 + len(word) + 2 > width:
            lines.append(line + " \\")
            line = "    " + word
        else:
            line = line + (" " if line.strip() else "") + word
    return [*lines, line]


class Sheet(Table):
    """A rich Table that remembers its cells, so that it can also be shown stacked."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cells: list[list[Any] | None] = []  # None: a section break

    def add_row(self, *renderables: Any, **kwargs: Any) -> None:
        super().add_row(*renderables, **kwargs)
        self.cells.append(list(renderables))

    def add_section(self) -> None:
        super().add_section()
        self.cells.append(None)


def fits(console: Console, table: Table) -> bool:
    """Lay the table out in the console's width with no word cut, and say whether that can be
    done. Each column gets at least its longest word and the room left is shared in proportion
    to what each could still use (rich's own collapse narrows the widest column first, even below
    its longest word)."""
    for column in table.columns:  # wrap a long cell between words, never cut it with an ellipsis
        column.overflow, column.no_wrap = "fold", False
    wide = console.options.update(max_width=10_000)
    size = Measurement.get(console, wide, table)
    if size.maximum <= console.width:
        return True
    cells = table.cells if isinstance(table, Sheet) else []  # a plain Table's cells are not kept
    spans = []
    for i, column in enumerate(table.columns):
        texts = [column.header] + [row[i] for row in cells if row is not None and i < len(row)]
        measured = [Measurement.get(console, wide, t if not isinstance(t, str) else Text(t)) for t in texts]
        spans.append((max(m.minimum for m in measured), max(m.maximum for m in measured)))
    overhead = size.minimum - sum(lo for lo, _ in spans)
    room = console.width - overhead - sum(lo for lo, _ in spans)
    if not cells or room < 0:
        return False
    slack = sum(hi - lo for lo, hi in spans) or 1
    for column, (lo, hi) in zip(table.columns, spans):
        column.width = lo + (hi - lo) * room // slack
    return True


def stacked(table: Sheet, width: int) -> list[Text]:
    """One block per row: its first cell, then `column  value` lines (empty cells left out)."""
    headers = [str(c.header) for c in table.columns]
    label = max((len(h) for h in headers[1:]), default=0)
    lines: list[Text] = []
    if table.title:
        lines += [Text(line, style="bold") for line in wrap(str(table.title), width)]
    for row in table.cells:
        if row is None:
            continue
        lines.append(Text(""))
        head = _plain(row[0]).strip()
        lines += [Text(line, style="bold") for line in wrap(head, width)]
        for name, cell in zip(headers[1:], row[1:]):
            value = _plain(cell)
            if not value.strip():
                continue
            prefix = f"  {name:<{label}}  " if name else "  "
            for i, line in enumerate(wrap(value, width - len(prefix))):
                lines.append(Text((prefix if i == 0 else " " * len(prefix)) + line))
    return lines


def _plain(cell: Any) -> str:
    return cell.plain if isinstance(cell, Text) else str(cell)


def clock(seconds: float) -> str:
    s = int(seconds + 0.5)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def progress_line(done: int, total: int | None, texts_s: float | None, tokens_s: float | None,
                  eta: float | None, width: int, docs: int | None = None, docs_total: int | None = None) -> str:
    """`▕███░░░▏ 1,200/2,000 rows  60%  ETA 0:05  225 texts/s  8,410 tok/s` in `width` columns:
    the count first, then the ETA, the percentage and the rates as they fit; the bar takes what
    is left, up to 42 columns (none under 10). A chunked job counts chunks, and records after
    the ETA (`1,200/2,000 chunks  60%  ETA 0:05  31/50 records  ...`)."""
    unit = "rows" if docs_total is None else "chunks"
    count = f"{done:,}/{total:,} {unit}" if total else f"{done:,} {unit}"
    optional = []
    if eta is not None:
        optional.append(f"ETA {clock(eta)}")
    if docs_total is not None:
        optional.append(f"{docs or 0:,}/{docs_total:,} records")
    if texts_s:
        optional.append(f"{texts_s:,.0f} {'texts' if docs_total is None else 'chunks'}/s")
    if tokens_s:
        optional.append(f"{tokens_s:,.0f} tok/s")
    if total:
        optional.insert(1 if eta is not None else 0, f"{100 * done / total:.0f}%")
    fields = [count]
    for field in optional:
        if len("  ".join([*fields, field])) <= width:
            fields.append(field)
    line = "  ".join(fields)
    room = min(width - len(line) - 1, 42)
    if total and room >= 10:
        inner = room - 2
        full = min(inner, round(inner * done / total))
        line = "▕" + "█" * full + "░" * (inner - full) + "▏ " + line
    return line
