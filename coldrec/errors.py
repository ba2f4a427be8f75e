"""Named errors. Every ColdrecError is bad input or usage: the CLI prints one line and exits 2.

Messages name the file and column when there is one, say what was expected and what was
found, and end with the fix.
"""

from __future__ import annotations

from pathlib import Path

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_BAD_INPUT = 2
EXIT_LOCKED = 75


class ColdrecError(Exception):
    """Bad input or usage. `str(error)` is the one line shown to the user."""

    exit_code = EXIT_BAD_INPUT

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        column: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.message = message
        self.path = str(path) if path is not None else None
        self.column = column
        self.hint = hint
        super().__init__(self.render())

    def render(self) -> str:
        where = []
        if self.path:
            where.append(self.path)
        if self.column:
            where.append(f"column '{self.column}'")
        text = ": ".join(where + [self.message]) if where else self.message
        if self.hint:
            text = f"{text} — {self.hint}"
        return text


class UsageError(ColdrecError):
    """An option value that cannot work (out of range, contradictory, malformed)."""


class Diverged(UsageError):
    """Training's loss became NaN or infinite (a learning rate too high for the data)."""


class InputNotFound(ColdrecError):
    """A path given on the command line does not exist or cannot be read."""


class NotParquet(ColdrecError):
    """A file that should be Parquet is not (or is truncated)."""


class EmptyInput(ColdrecError):
    """A directory without Parquet files, or a table with no rows where rows are needed."""


class LogsMismatch(ColdrecError):
    """The exposure and click logs do not line up (too few clicks match an exposure)."""


class SchemaError(ColdrecError):
    """A table violates its column contract; the message lists every problem found."""


class MissingColumn(SchemaError):
    pass


class WrongDtype(SchemaError):
    pass


class NullValues(SchemaError):
    pass


class DuplicateIds(SchemaError):
    pass


class BadValues(SchemaError):
    """Values of the right type that cannot be right (NaN, inf, ms timestamps, future dates)."""


class ConfigError(ColdrecError):
    """A config file that cannot be parsed or has unknown keys."""


class IncompatibleModel(ColdrecError):
    """A model directory from another version, a corrupt weights file, or a mismatched index."""


class OutputLocked(ColdrecError):
    """Another run holds the lock on this output."""

    exit_code = EXIT_LOCKED
