"""coldrec.result: the JSON-ready fields every stage result logs."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from coldrec.result import StageResult


@dataclass
class _Example(StageResult):
    out: Path
    day: dt.date
    seconds: float
    wall_time_s: float
    samples_per_s: float
    hidden: int = 0

    SKIPPED = ("hidden",)
    RENAMED = {"out": "where"}


def test_fields_are_json_ready_rounded_skipped_and_renamed():
    fields = _Example(Path("a/b"), dt.date(2026, 1, 2), 1.23456, 2.34567, 1234.5678, 7).fields()
    assert fields == {"where": "a/b", "day": "2026-01-02", "seconds": 1.235, "wall_time_s": 2.346, "samples_per_s": 1234.6}
