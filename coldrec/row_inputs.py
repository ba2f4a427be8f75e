"""A few content rows (JSON objects) -> content-only model inputs, in plain Python.

`coldrec serve` embeds one new user per request. The table encoder (features.encode_content)
runs a dozen polars queries per call, milliseconds of overhead for a single row; this one
looks values up in dictionaries built once per model. It produces exactly the tensors
`encode_for_serving(..., cold=True)` does (tests/test_row_inputs.py holds them equal), and
raises BadRow naming the column for a value of the wrong type.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import zlib
from typing import Any

import numpy as np
import torch

from coldrec.features import FIRST, OOV, PAD, ColumnSpec, EntitySpec

TOKENS = re.compile(r"[^\W_]+")  # letters and digits: polars' [\p{L}\p{N}]+ (roles.TOKEN_PATTERN)


class BadRow(ValueError):
    """A value that does not fit its column; the message names the column."""


class RowEncoder:
    """Content-only inputs of one side for rows given as {column: value} dicts."""

    def __init__(self, spec: EntitySpec) -> None:
        self.spec = spec
        self.lookups = [{value: i + FIRST for i, value in enumerate(c.vocab)} for c in spec.columns]
        self.dates = {r["column"] for r in spec.roles if r.get("dtype") == "Date" or str(r.get("dtype", "")).startswith("Datetime")}
        self.columns = {c.name for c in spec.columns}

    def encode(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        numeric: list[np.ndarray] = []
        for i, column in enumerate(self.spec.columns):
            values = [row.get(column.name) for row in rows]
            if column.role == "numeric":
                numeric.extend(self._numeric(column, values))
            elif column.role == "vector":
                out[f"col{i}"] = torch.from_numpy(np.stack([self._vector(column, v) for v in values]))
            else:
                out[f"col{i}"] = torch.from_numpy(np.array([self._indices(i, column, v) for v in values], dtype=np.int64))
        if numeric:
            out["num"] = torch.from_numpy(np.stack(numeric, axis=1).astype(np.float32))
        out["id"] = torch.zeros(len(rows), dtype=torch.int64)
        out["stats"] = torch.zeros((len(rows), len(self.spec.stats_columns)), dtype=torch.float32)
        return out

    def _indices(self, i: int, column: ColumnSpec, value: Any) -> Any:
        if column.role == "categorical":
            if value is None:
                return PAD
            if isinstance(value, (list, dict)):
                raise BadRow(f"column '{column.name}' takes a string, got {type(value).__name__}")
            text = str(value).lower() if isinstance(value, bool) else str(value)
            return self.lookups[i].get(text, OOV)
        if column.role == "numeric_bucket":
            number = self._number(column, value)
            if not math.isfinite(number):
                return OOV
            return int(np.searchsorted(np.asarray(column.boundaries, dtype=np.float64), number, side="right")) + FIRST
        if column.role == "multi_hot":
            elements = self._list(column, value)[: column.bag_size]
            return _padded([self.lookups[i].get(str(v), OOV) for v in elements if v is not None], column.bag_size)
        tokens = self._tokens(column, value)[: column.bag_size]  # text
        frequent = self.lookups[i] if column.rare_tokens_oov else None
        return _padded([zlib.crc32(t.encode("utf-8")) % column.buckets + FIRST if frequent is None or t in frequent else OOV for t in tokens], column.bag_size)

    def _numeric(self, column: ColumnSpec, values: list[Any]) -> list[np.ndarray]:
        raw = np.array([self._number(column, v) for v in values], dtype=np.float64)
        missing = ~np.isfinite(raw)
        raw[missing] = 0.0
        if column.log1p:
            raw = np.sign(raw) * np.log1p(np.abs(raw))
        scaled = (raw - column.mean) / column.std
        scaled[missing] = 0.0
        return [scaled.astype(np.float32), missing.astype(np.float32)]

    def _number(self, column: ColumnSpec, value: Any) -> float:
        if value is None:
            return math.nan
        if column.name in self.dates:
            try:
                day = dt.date.fromisoformat(str(value)[:10])
            except ValueError:
                raise BadRow(f"column '{column.name}' takes a date YYYY-MM-DD, got {value!r}") from None
            return day.year + (day.timetuple().tm_yday - 1) / 365.25
        if isinstance(value, bool):
            return float(value)
        if not isinstance(value, (int, float)):
            raise BadRow(f"column '{column.name}' takes a number, got {type(value).__name__}")
        return float(value)

    def _list(self, column: ColumnSpec, value: Any) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, str) or v is None for v in value):
            raise BadRow(f"column '{column.name}' takes a list of strings")
        return value

    def _tokens(self, column: ColumnSpec, value: Any) -> list[str]:
        if value is None:
            return []
        if not isinstance(value, str):
            raise BadRow(f"column '{column.name}' takes a string, got {type(value).__name__}")
        return TOKENS.findall(value.lower())

    def _vector(self, column: ColumnSpec, value: Any) -> np.ndarray:
        if value is None:
            return np.zeros(column.length, dtype=np.float32)
        if not isinstance(value, list) or len(value) != column.length or not all(isinstance(v, (int, float)) or v is None for v in value):
            raise BadRow(f"column '{column.name}' takes a list of {column.length} numbers")
        out = np.array([0.0 if v is None else v for v in value], dtype=np.float32)
        out[~np.isfinite(out)] = 0.0
        return out


def _padded(indices: list[int], size: int) -> list[int]:
    return indices + [PAD] * (size - len(indices))
