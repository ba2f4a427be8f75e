"""What a `run_<stage>` function returns: one base for every stage's result.

A result is a dataclass of what the stage did. `summary()` is the line `coldrec <stage>`
prints (each stage words its own); `fields()` the values it logs as JSON (`--log-format
json`) and the pipeline records: every dataclass field, JSON-ready (paths as strings, dates
in ISO form, times rounded to the millisecond, rates to 0.1), less SKIPPED ones, renamed by
RENAMED, plus `extra_fields()`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any, ClassVar


class StageResult:
    SKIPPED: ClassVar[tuple[str, ...]] = ()
    RENAMED: ClassVar[dict[str, str]] = {}

    def summary(self) -> str:
        raise NotImplementedError

    def fields(self) -> dict[str, Any]:
        out = {self.RENAMED.get(f.name, f.name): _plain(f.name, getattr(self, f.name))
               for f in dataclasses.fields(self) if f.name not in self.SKIPPED}
        return {**out, **self.extra_fields()}

    def extra_fields(self) -> dict[str, Any]:
        return {}


def _plain(name: str, value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    if isinstance(value, float) and name.endswith("per_s"):  # a rate (before "_s": it ends so too)
        return round(value, 1)
    if isinstance(value, float) and (name == "seconds" or name.endswith("_s")):
        return round(value, 3)
    return value
