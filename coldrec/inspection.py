"""`coldrec inspect`: how `coldrec train` will read the content tables, before it trains.

Per content column: the role it gets and why (coldrec/roles.py decides, as train does),
its distinct values, null share and vocabulary coverage; with the samples, how many train
rows' ids have a content row. Markdown on stdout, or JSON for machines.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coldrec.config import TrainConfig, load_config
from coldrec.errors import InputNotFound
from coldrec.features import content_coverage
from coldrec.io import read_parquet
from coldrec.result import StageResult
from coldrec.roles import RoleDecision, decide_roles
from coldrec.schema import check_content_table, check_id_types_match


@dataclass
class Coverage:
    """Train rows whose id has a row in the side's content table."""

    side: str
    rows: int
    with_content: int

    @property
    def share(self) -> float:
        return self.with_content / self.rows if self.rows else 1.0


@dataclass
class InspectResult(StageResult):
    decisions: list[RoleDecision]
    coverage: list[Coverage] = field(default_factory=list)

    def summary(self) -> str:
        roles = Counter(d.role for d in self.decisions)
        warnings = sum(1 for d in self.decisions if d.warning)
        return f"inspect: {len(self.decisions)} content columns ({', '.join(f'{n} {r}' for r, n in roles.items())}); {warnings} warning(s)"

    def fields(self) -> dict[str, Any]:
        return {"columns": len(self.decisions), "roles": dict(Counter(d.role for d in self.decisions)),
                "warnings": sum(1 for d in self.decisions if d.warning)}

    def to_json(self) -> str:
        return json.dumps({
            "columns": [d.to_dict() for d in self.decisions],
            "train_rows_with_content": {c.side: {"rows": c.rows, "with_content": c.with_content, "share": round(c.share, 6)} for c in self.coverage},
        }, indent=2) + "\n"

    def to_markdown(self) -> str:
        lines = ["| table | column | type | role | why | distinct | null | in vocabulary |", "|---|---|---|---|---|---|---|---|"]
        for d in self.decisions:
            coverage = f"{d.coverage:.0%}" if d.coverage is not None else "–"
            distinct = f"{d.distinct:,}" if d.distinct is not None else "–"
            lines.append(f"| {d.table} | {d.column} | {d.dtype} | {d.role} | {d.reason} | {distinct} | {d.null_share:.0%} | {coverage} |")
        if self.coverage:
            lines += ["", "| train rows | with a content row |", "|---|---|"]
            lines += [f"| {c.side}_id: {c.rows:,} | {c.with_content:,} ({c.share:.1%}) |" for c in self.coverage]
        warnings = [f"- {d.table}.{d.column}: {d.warning}" for d in self.decisions if d.warning]
        if warnings:
            lines += ["", "Warnings:", *warnings]
        return "\n".join(lines) + "\n"


def run_inspect(users: str | Path, items: str | Path, samples: str | Path | None = None, config: TrainConfig | str | Path | None = None) -> InspectResult:
    """Decide every content column's role as `coldrec train` would with `config`."""
    features = (config if isinstance(config, TrainConfig) else load_config(config)).features
    tables = {"user_id": (Path(users), read_parquet(users)), "item_id": (Path(items), read_parquet(items))}
    decisions: list[RoleDecision] = []
    for id_column, (path, table) in tables.items():
        check_content_table(table.lazy(), id_column, path)
        decisions += decide_roles(table, id_column, features, path)
    coverage = []
    if samples is not None:
        train_path = Path(samples) / "train.parquet"
        if not train_path.exists():
            raise InputNotFound("no train.parquet in the samples directory", path=samples, hint="point --samples at a directory written by `coldrec prepare`")
        train = read_parquet(train_path)
        for id_column, (path, table) in tables.items():
            check_id_types_match(train.schema[id_column], table.schema[id_column], id_column, train_path, path)
            with_content, rows = content_coverage(train, table, id_column)
            coverage.append(Coverage(id_column.removesuffix("_id"), rows, with_content))
    return InspectResult(decisions, coverage)
