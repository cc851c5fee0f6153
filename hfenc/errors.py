"""User-facing errors: one line each, with an optional hint.

Everything a user can cause (a bad option, a missing file, a model that cannot be found) raises a
subclass of HfencError. The CLI prints `Error: <message>` and `Hint: <hint>` and exits 1; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Iterable


class HfencError(Exception):
    """Base of every error a user can cause. `str(err)` is the one-line message."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class ConfigError(HfencError, ValueError):
    """An option or combination of options that cannot work."""


class UnknownChoiceError(HfencError, LookupError):
    """A name that is not one of a closed set of choices (pooler, device, dtype, ...)."""

    def __init__(self, kind: str, value: object, choices: Iterable[str], hint: str | None = None):
        self.kind, self.value, self.choices = kind, value, sorted(choices)
        super().__init__(f"unknown {kind} {value!r}; choose one of: {', '.join(self.choices)}", hint)


class ModelNotFoundError(HfencError, LookupError):
    """A model name that resolves nowhere."""


class ModelLoadError(HfencError):
    """A model that was found but cannot be loaded (missing or corrupt weights, unknown layout)."""


class InputError(HfencError, ValueError):
    """The input file cannot be read as records (missing, empty, bad encoding, bad JSON, ...)."""


class InputChanged(InputError):
    """The input changed between the validating scan and the embedding pass: the rows saved so
    far may come from other bytes, so the run removes its output."""


class OverflowRefused(InputError):
    """--on-overflow error met a text longer than the max length: the run removes its output."""


class OutputError(HfencError, OSError):
    """The output cannot be written (exists, unwritable directory, disk full)."""


class ResumeError(HfencError):
    """A --resume that cannot continue the earlier run."""


class Interrupted(HfencError):
    """A job stopped by a signal; finished chunks are kept for --resume."""

    def __init__(self, message: str, hint: str | None = None, rows_done: int = 0, signum: int = 2) -> None:
        super().__init__(message, hint)
        self.rows_done, self.signum = rows_done, signum  # the CLI exits 128 + signum (130 or 143)
