"""Everything a command tells the user goes through here, to stderr.

`--log-format text` prints human lines (rich); `--log-format json` prints one JSON object per
line for cron and log shippers; `--quiet` keeps only warnings and errors. Progress bars are
drawn only for text output on a terminal.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")


@dataclass
class LogSettings:
    format: str = "text"  # "text" | "json"
    quiet: bool = False
    debug: bool = False


settings = LogSettings()
_console: Console | None = None


def configure(*, log_format: str = "text", quiet: bool = False, debug: bool = False) -> None:
    global _console
    settings.format = log_format
    settings.quiet = quiet
    settings.debug = debug
    _console = None


@contextlib.contextmanager
def muted() -> Iterator[None]:
    """Info lines, events and progress bars off for the block (warnings and errors stay)."""
    before = settings.quiet
    settings.quiet = True
    try:
        yield
    finally:
        settings.quiet = before


def console() -> Console:
    global _console
    if _console is None or _console.file is not sys.stderr:
        _console = Console(file=sys.stderr, highlight=False, soft_wrap=True)
    return _console


def _emit(level: str, message: str, fields: dict[str, Any]) -> None:
    if settings.format == "json":
        record = {
            "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"),
            "level": level,
            "message": message,
            **fields,
        }
        sys.stderr.write(json.dumps(record, default=str) + "\n")
        sys.stderr.flush()
        return
    styles = {"warning": "yellow", "error": "bold red"}
    prefix = f"{level}: " if level in styles else ""
    style = styles.get(level)
    console().print(f"{prefix}{message}", style=style, markup=False)


def info(message: str, **fields: Any) -> None:
    """A progress or summary line (suppressed by --quiet)."""
    if not settings.quiet:
        _emit("info", message, fields)


def debug(message: str, **fields: Any) -> None:
    if settings.debug:
        _emit("debug", message, fields)


def warning(message: str, **fields: Any) -> None:
    _emit("warning", message, fields)


def error(message: str, **fields: Any) -> None:
    _emit("error", message, fields)


def event(name: str, message: str, **fields: Any) -> None:
    """A structured record (one per stage or epoch); text mode prints `message`."""
    if settings.quiet:
        return
    if settings.format == "json":
        _emit("info", message, {"event": name, **fields})
    else:
        _emit("info", message, {})


def _progress_enabled() -> bool:
    return settings.format == "text" and not settings.quiet and sys.stderr.isatty()


@contextlib.contextmanager
def progress(description: str, total: float | None) -> Iterator["ProgressHandle"]:
    """A progress bar on stderr; a no-op handle when not on a terminal, quiet or json."""
    if not _progress_enabled():
        yield ProgressHandle(None, None)
        return
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console(),
        transient=True,
    )
    with bar:
        task = bar.add_task(description, total=total, status="")
        yield ProgressHandle(bar, task)


class ProgressHandle:
    def __init__(self, bar: Progress | None, task: Any) -> None:
        self._bar = bar
        self._task = task

    def advance(self, amount: float = 1, status: str | None = None) -> None:
        if self._bar is not None:
            fields = {"status": status} if status is not None else {}
            self._bar.update(self._task, advance=amount, **fields)

    def update(self, *, completed: float | None = None, status: str | None = None) -> None:
        if self._bar is not None:
            fields: dict[str, Any] = {}
            if status is not None:
                fields["status"] = status
            self._bar.update(self._task, completed=completed, **fields)


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a progress bar on stderr (see `progress`)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with progress(description, total) as handle:
        for item in items:
            yield item
            handle.advance()
