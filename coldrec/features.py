"""FeatureSpec: content, id and statistics columns -> contiguous model input tensors.

The spec is fitted on the training samples and saved with the model as JSON (`spec.json`,
never pickle). It owns every id <-> index mapping: an id seen at least `id_min_count` times
in train gets an id-embedding row (1..n); any other id maps to the cold slot 0, whose
embedding is fixed at zero. Unknown ids and missing statistics never raise: they are the
cold input, exactly what input dropout shows the towers in training.

Index conventions of every vocabulary (categorical, multi-hot, hashed text):
0 = nothing (null value or bag padding; zero vector, excluded from bag means),
1 = out of vocabulary (a value rarer than `vocab_min_count` or unseen in train),
2.. = the vocabulary in order.
A numeric column's quantile bucket (`features.numeric_buckets` > 0) is one more categorical
column internally (role "numeric_bucket"): 1 = null / non-finite (the null bucket, a
learned row), 2.. = the buckets in order; values beyond the fitted range clamp to the first
or last bucket.

Encoding happens once: an `EntityTable` per side holds every user's (item's) content
tensors, a stats table holds every (id, day) statistics row used, and `EncodedSamples` holds
per-sample row indices into them. A batch is a handful of `index_select`s.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from coldrec import log
from coldrec.config import FeaturesConfig
from coldrec.errors import IncompatibleModel, MissingColumn, SchemaError, WrongDtype
from coldrec.roles import check_role_dtype, decide_roles, qualified, tokens_of
from coldrec.schema import check_id_types_match, is_date

PAD = 0
OOV = 1
FIRST = 2
STATS_KEY_COLUMNS = ("day", "as_of")
SIDES = ("user", "item")


# --------------------------------------------------------------------------- specs


@dataclass
class ColumnSpec:
    """One content column and what it was fitted to."""

    name: str
    role: str  # categorical | multi_hot | numeric | vector | text | numeric_bucket
    vocab: list[str] = field(default_factory=list)  # categorical / multi_hot: index = position + 2
    buckets: int = 0  # text: hash buckets (index = crc32 % buckets + 2)
    bag_size: int = 0  # multi_hot / text: padded length
    length: int = 0  # vector: dimension
    mean: float = 0.0  # numeric: of the (log1p'd) value
    std: float = 1.0
    log1p: bool = False
    boundaries: list[float] = field(default_factory=list)  # numeric_bucket: ascending inner quantiles
    rare_tokens_oov: bool = False  # text: tokens outside `vocab` (the frequent ones) -> OOV (False in older specs: every token hashed)

    @property
    def cardinality(self) -> int:
        """Embedding rows needed (categorical, multi-hot, text)."""
        if self.role == "text":
            return self.buckets + FIRST
        if self.role == "numeric_bucket":
            return len(self.boundaries) + 1 + FIRST
        return len(self.vocab) + FIRST


@dataclass
class EntitySpec:
    """Everything one side (users or items) is encoded with."""

    side: str  # "user" | "item"
    id_column: str
    id_dtype: str  # "int" | "str"
    ids: list[Any] = field(default_factory=list)  # id-embedding rows: index = position + 1
    columns: list[ColumnSpec] = field(default_factory=list)
    stats_columns: list[str] = field(default_factory=list)
    stats_mean: list[float] = field(default_factory=list)
    stats_std: list[float] = field(default_factory=list)
    stats_log1p: list[bool] = field(default_factory=list)
    pretrained_dim: int = 0  # objective "dropoutnet": id rows are fixed pretrained vectors
    roles: list[dict[str, Any]] = field(default_factory=list)  # how each content column was read, and why (roles.py)

    @property
    def numeric_columns(self) -> list[ColumnSpec]:
        return [c for c in self.columns if c.role == "numeric"]

    @property
    def n_ids(self) -> int:
        """Id-embedding rows including the cold slot 0."""
        return len(self.ids) + 1

    def input_keys(self) -> list[str]:
        """Keys of the content tensors (besides 'id' and 'stats')."""
        keys = [f"col{i}" for i, c in enumerate(self.columns) if c.role != "numeric"]
        if self.numeric_columns:
            keys.append("num")
        return keys

    def id_frame(self) -> pl.DataFrame:
        dtype = pl.Int64 if self.id_dtype == "int" else pl.String
        return pl.DataFrame(
            {
                self.id_column: pl.Series(self.ids, dtype=dtype),
                "__id_index": pl.Series(np.arange(1, len(self.ids) + 1, dtype=np.int64)),
            }
        )


@dataclass
class FeatureSpec:
    user: EntitySpec
    item: EntitySpec
    format_version: int = 1

    def side(self, side: str) -> EntitySpec:
        return self.user if side == "user" else self.item

    # ---------------------------------------------------------------- JSON

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FeatureSpec":
        def entity(raw: dict[str, Any]) -> EntitySpec:
            raw = dict(raw)
            raw["columns"] = [ColumnSpec(**c) for c in raw.get("columns", [])]
            return EntitySpec(**raw)

        try:
            return cls(user=entity(data["user"]), item=entity(data["item"]), format_version=data.get("format_version", 1))
        except (KeyError, TypeError) as error:
            raise IncompatibleModel(f"feature spec is malformed ({error})", hint="retrain the model") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | Path) -> "FeatureSpec":
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except json.JSONDecodeError as error:
            raise IncompatibleModel(f"corrupt feature spec ({error.msg})", path=path, hint="retrain the model") from None


# --------------------------------------------------------------------------- fitting


def _id_dtype_name(dtype: pl.DataType) -> str:
    return "int" if dtype.is_integer() else "str"


def _vocab(values: pl.Series, min_count: int) -> list[str]:
    counts = values.drop_nulls().value_counts(name="n")
    counts = counts.filter(pl.col("n") >= min_count).sort(["n", values.name], descending=[True, False])
    return counts[values.name].to_list()


def _signed_log1p(values: np.ndarray) -> np.ndarray:
    return np.sign(values) * np.log1p(np.abs(values))


def fit_column(table: pl.DataFrame, name: str, role: str, config: FeaturesConfig, table_name: str) -> ColumnSpec:
    column = table[name]
    spec = ColumnSpec(name=name, role=role)
    if role == "categorical":
        spec.vocab = _vocab(column.cast(pl.String).rename(name), config.vocab_min_count)
    elif role == "multi_hot":
        spec.vocab = _vocab(column.explode().rename(name), config.vocab_min_count)
        spec.bag_size = _bag_size(column.list.len(), config.max_bag_size)
    elif role == "text":
        tokens = tokens_of(column)
        spec.buckets = config.text_buckets
        spec.bag_size = _bag_size(tokens.list.len(), config.max_bag_size)
        # Tokens in fewer than vocab_min_count rows share the OOV slot, as rare categories do:
        # hashed one by one, a title's unique words would be an item id in disguise.
        spec.vocab = _vocab(tokens.list.unique().explode().rename(name), config.vocab_min_count)
        spec.rare_tokens_oov = True
    elif role == "numeric":
        spec.log1p = bool(qualified(config.log1p_columns, table_name, name))
        values = numeric_values(column).drop_nulls().to_numpy()
        values = values[np.isfinite(values)]
        if spec.log1p:
            values = _signed_log1p(values)
        if len(values):
            spec.mean = float(values.mean())
            std = float(values.std())
            spec.std = std if std > 1e-12 else 1.0
    elif role == "vector":
        spec.length = _vector_length(column)
    return spec


def fit_buckets(column: pl.Series, name: str, buckets: int) -> ColumnSpec:
    """Quantile buckets of a numeric column: `buckets - 1` inner quantiles of the finite
    non-null values (linear interpolation), duplicates merged, so at most `buckets` buckets."""
    values = numeric_values(column).drop_nulls().to_numpy()
    values = values[np.isfinite(values)]
    boundaries: list[float] = []
    if len(values) and buckets > 1:
        quantiles = np.quantile(values, np.linspace(0.0, 1.0, buckets + 1)[1:-1])
        boundaries = [float(b) for b in np.unique(quantiles)]
    return ColumnSpec(name=name, role="numeric_bucket", boundaries=boundaries)


def bucket_indices(values: pl.Series, boundaries: list[float]) -> np.ndarray:
    """(n,) int64 bucket index: FIRST + number of boundaries <= value; null / non-finite -> OOV
    (the null bucket). Values outside the fitted range clamp to the first / last bucket."""
    raw = numeric_values(values).to_numpy().astype(np.float64, copy=True)
    missing = ~np.isfinite(raw)
    raw[missing] = 0.0
    index = np.searchsorted(np.asarray(boundaries, dtype=np.float64), raw, side="right").astype(np.int64) + FIRST
    index[missing] = OOV
    return index


def _bag_size(lengths: pl.Series, cap: int) -> int:
    longest = lengths.max()
    return max(1, min(cap, int(longest) if longest is not None else 1))


def _vector_length(column: pl.Series) -> int:
    if isinstance(column.dtype, pl.Array):
        return int(column.dtype.size)
    lengths = column.list.len().drop_nulls()
    return int(lengths.max()) if len(lengths) else 0


def numeric_values(column: pl.Series) -> pl.Series:
    """Float64 values of a numeric column; a date / datetime as its fractional year."""
    if is_date(column.dtype):
        return (column.dt.year() + (column.dt.ordinal_day() - 1) / 365.25).cast(pl.Float64)
    return column.cast(pl.Float64)


def fit_stats(stats: pl.DataFrame, id_column: str, used: pl.DataFrame, config: FeaturesConfig) -> tuple[list[str], list[float], list[float], list[bool]]:
    """Normalisers of the stats columns over the (id, day) rows the training samples use."""
    columns = stats_columns(stats, id_column)
    rows = stats.join(used, on=[id_column, "day"], how="semi") if "day" in stats.columns else stats
    means, stds, log1ps = [], [], []
    for name in columns:
        values = rows[name].cast(pl.Float64).fill_null(0.0).to_numpy()
        values = values[np.isfinite(values)]
        log1p = bool(config.stats_log1p and (len(values) == 0 or values.min() >= 0))
        if log1p:
            values = np.log1p(values)
        mean = float(values.mean()) if len(values) else 0.0
        std = float(values.std()) if len(values) else 1.0
        means.append(mean)
        stds.append(std if std > 1e-12 else 1.0)
        log1ps.append(log1p)
    return columns, means, stds, log1ps


def stats_columns(stats: pl.DataFrame | pl.LazyFrame, id_column: str) -> list[str]:
    schema = stats.collect_schema() if isinstance(stats, pl.LazyFrame) else stats.schema
    return [n for n in schema.names() if n != id_column and n not in STATS_KEY_COLUMNS]


def fit_entity(
    side: str,
    train: pl.DataFrame,
    content: pl.DataFrame,
    stats: pl.DataFrame | None,
    config: FeaturesConfig,
    content_path: str | Path,
) -> EntitySpec:
    """Fit one side on the training samples (`train` has id and `day` columns)."""
    id_column = f"{side}_id"
    table_name = f"{side}s"
    check_id_types_match(train.schema[id_column], content.schema[id_column], id_column, content_path, "the samples")
    counts = train.group_by(id_column).len(name="n").filter(pl.col("n") >= config.id_min_count)
    ids = counts[id_column].sort().to_list()
    spec = EntitySpec(side=side, id_column=id_column, id_dtype=_id_dtype_name(train.schema[id_column]), ids=ids)
    # Content is fitted on the entities the training samples show, so a value seen only on
    # a held-out cold entity is OOV, not an untrained embedding row.
    seen = content.join(train.select(id_column).unique(), on=id_column, how="semi")
    decisions = decide_roles(content, id_column, config, content_path)
    for decision in decisions:
        if decision.warning:
            log.warning(f"{content_path}: {decision.warning}", column=decision.column, role=decision.role)
    spec.roles = [decision.to_dict() for decision in decisions]
    roles = {d.column: d.role for d in decisions if d.role != "ignore"}
    for name, role in roles.items():
        spec.columns.append(fit_column(seen, name, role, config, table_name))
    if config.numeric_buckets > 0:
        # Appended after every other column, so the other columns keep their col{i} keys.
        for name, role in roles.items():
            if role == "numeric":
                spec.columns.append(fit_buckets(seen[name], name, config.numeric_buckets))
    if stats is not None:
        used = train.select(id_column, "day").unique()
        spec.stats_columns, spec.stats_mean, spec.stats_std, spec.stats_log1p = fit_stats(stats, id_column, used, config)
    return spec


def fit_spec(
    train: pl.DataFrame,
    users: pl.DataFrame,
    items: pl.DataFrame,
    config: FeaturesConfig,
    *,
    user_stats: pl.DataFrame | None = None,
    item_stats: pl.DataFrame | None = None,
    users_path: str | Path = "users",
    items_path: str | Path = "items",
) -> FeatureSpec:
    """Fit a FeatureSpec on training samples (user_id, item_id, ts) and the content tables."""
    train = with_day(train)
    return FeatureSpec(
        user=fit_entity("user", train, users, user_stats, config, users_path),
        item=fit_entity("item", train, items, item_stats, config, items_path),
    )


def with_day(samples: pl.DataFrame) -> pl.DataFrame:
    if "day" in samples.columns:
        return samples
    return samples.with_columns(pl.col("ts").dt.date().alias("day"))


# --------------------------------------------------------------------------- encoding


@dataclass
class EntityTable:
    """Encoded entities of one side: row r of every tensor is entity `ids[r]`."""

    ids: pl.Series
    id_index: torch.Tensor  # (n,) int64, 0 = cold slot
    content: dict[str, torch.Tensor]  # key -> (n,) / (n, bag) int64 or (n, width) float32

    def __len__(self) -> int:
        return len(self.ids)

    def to(self, device: torch.device | str) -> "EntityTable":
        return EntityTable(self.ids, self.id_index.to(device), {k: v.to(device) for k, v in self.content.items()})

    def row_frame(self, id_column: str) -> pl.DataFrame:
        return pl.DataFrame({id_column: self.ids, "__row": pl.Series(np.arange(len(self.ids), dtype=np.int64))})


def check_content_columns(spec: EntitySpec, table: pl.DataFrame, path: str | Path) -> None:
    """Every fitted column present with a compatible dtype (SchemaError names file and column)."""
    table_name = f"{spec.side}s"
    if spec.id_column not in table.columns:
        raise MissingColumn(f"{table_name} table: missing id column", path=path, column=spec.id_column, hint=f"add a '{spec.id_column}' column")
    want = "int" if spec.id_dtype == "int" else "str"
    if _id_dtype_name(table.schema[spec.id_column]) != want or not (table.schema[spec.id_column].is_integer() or table.schema[spec.id_column] == pl.String):
        raise WrongDtype(
            f"{table_name} table: ids are {table.schema[spec.id_column]} but the model was trained on {'integer' if want == 'int' else 'string'} ids",
            path=path,
            column=spec.id_column,
            hint="use the id type the model was trained with",
        )
    for column in spec.columns:
        if column.name not in table.columns:
            raise MissingColumn(
                f"{table_name} table: missing content column the model was trained with",
                path=path,
                column=column.name,
                hint=f"add '{column.name}' (nulls are allowed) or retrain without it",
            )
        check_role_dtype(column.role, table.schema[column.name], table_name, column.name, path)


def encode_content(spec: EntitySpec, table: pl.DataFrame, path: str | Path) -> dict[str, torch.Tensor]:
    """Content tensors of `table`'s rows, in order. Unseen values -> OOV; nulls -> 0."""
    check_content_columns(spec, table, path)
    out: dict[str, torch.Tensor] = {}
    numeric: list[np.ndarray] = []
    for i, column in enumerate(spec.columns):
        values = table[column.name]
        if column.role == "categorical":
            out[f"col{i}"] = torch.from_numpy(_lookup_vocab(values.cast(pl.String), column.vocab))
        elif column.role == "numeric_bucket":
            out[f"col{i}"] = torch.from_numpy(bucket_indices(values, column.boundaries))
        elif column.role == "multi_hot":
            exploded = values.list.head(column.bag_size)
            out[f"col{i}"] = torch.from_numpy(_pad_bags(exploded, lambda s: _lookup_vocab(s, column.vocab), column.bag_size))
        elif column.role == "text":
            tokens = tokens_of(values).list.head(column.bag_size)
            out[f"col{i}"] = torch.from_numpy(_pad_bags(tokens, lambda s: _hash_tokens(s, column), column.bag_size))
        elif column.role == "numeric":
            raw = numeric_values(values).to_numpy().astype(np.float64, copy=True)
            missing = ~np.isfinite(raw)
            raw[missing] = 0.0
            if column.log1p:
                raw = _signed_log1p(raw)
            scaled = (raw - column.mean) / column.std
            scaled[missing] = 0.0
            numeric.extend([scaled.astype(np.float32), missing.astype(np.float32)])
        elif column.role == "vector":
            out[f"col{i}"] = torch.from_numpy(_vectors(values, column.length, path, spec.side))
    if numeric:
        out["num"] = torch.from_numpy(np.stack(numeric, axis=1))  # (n, 2 * numeric columns): value, missing flag
    return out


def _lookup_vocab(values: pl.Series, vocab: list[str]) -> np.ndarray:
    mapping = {value: index + FIRST for index, value in enumerate(vocab)}
    mapped = values.replace_strict(mapping, default=OOV, return_dtype=pl.Int64)
    return pl.select(pl.when(values.is_null()).then(PAD).otherwise(mapped)).to_series().to_numpy().astype(np.int64)


def _hash_tokens(tokens: pl.Series, column: ColumnSpec) -> np.ndarray:
    """Hash bucket of each token (crc32 % buckets + FIRST); a rare one (not in the fitted
    vocabulary, when the column filters them) is OOV."""
    unique = tokens.drop_nulls().unique().to_list()
    frequent = set(column.vocab) if column.rare_tokens_oov else None
    mapping = {token: zlib.crc32(token.encode("utf-8")) % column.buckets + FIRST if frequent is None or token in frequent else OOV for token in unique}
    return tokens.replace_strict(mapping, default=PAD, return_dtype=pl.Int64).to_numpy().astype(np.int64)


def _pad_bags(lists: pl.Series, lookup, bag_size: int) -> np.ndarray:
    """(n, bag_size) int64 of looked-up list elements, padded with 0."""
    n = len(lists)
    frame = pl.DataFrame({"__row": np.arange(n, dtype=np.int64), "v": lists}).explode("v").drop_nulls("v")
    out = np.zeros((n, bag_size), dtype=np.int64)
    if frame.height:
        frame = frame.with_columns(pl.int_range(pl.len()).over("__row").alias("__pos"))
        out[frame["__row"].to_numpy(), frame["__pos"].to_numpy()] = lookup(frame["v"])
    return out


def _vectors(values: pl.Series, length: int, path: str | Path, side: str) -> np.ndarray:
    if isinstance(values.dtype, pl.Array):
        if values.dtype.size != length:
            raise WrongDtype(
                f"{side}s table: vectors of length {values.dtype.size}, the model expects {length}",
                path=path,
                column=values.name,
                hint="use the same embedding model as in training",
            )
        values = values.cast(pl.List(pl.Float32))
    lengths = values.list.len()
    bad = (lengths != length) & lengths.is_not_null()
    if bad.any():
        found = lengths.filter(bad).unique().sort().to_list()[:3]
        raise WrongDtype(
            f"{side}s table: vectors of length {found}, expected {length}",
            path=path,
            column=values.name,
            hint="every vector must have the same length as in training (nulls are allowed)",
        )
    out = np.zeros((len(values), length), dtype=np.float32)
    present = lengths.is_not_null().to_numpy()
    if present.any() and length:
        flat = values.filter(lengths.is_not_null()).explode().cast(pl.Float32).fill_null(0.0).to_numpy()
        out[present] = flat.reshape(-1, length)
    out[~np.isfinite(out)] = 0.0
    return out


def id_indices(spec: EntitySpec, ids: pl.Series) -> np.ndarray:
    """Id-embedding row of every id (0 = cold slot for unknown ids); never raises."""
    frame = pl.DataFrame({spec.id_column: ids})
    joined = frame.join(spec.id_frame(), on=spec.id_column, how="left", maintain_order="left")
    return joined["__id_index"].fill_null(0).to_numpy().astype(np.int64)


MISSING_CONTENT_WARNING = 0.1  # share of sample rows whose id has no content row above which train / stats warn


def content_coverage(samples: pl.DataFrame | pl.LazyFrame, content: pl.DataFrame | pl.LazyFrame, id_column: str) -> tuple[int, int]:
    """(sample rows whose id has a row in `content`, sample rows)."""
    ids = samples.lazy().select(id_column)
    covered = ids.join(content.lazy().select(id_column).unique(), on=id_column, how="semi")
    counts = pl.concat([covered.select(pl.len()), ids.select(pl.len())]).collect()["len"]
    return int(counts[0]), int(counts[1])


def warn_missing_content(samples: pl.DataFrame | pl.LazyFrame, content: pl.DataFrame | pl.LazyFrame, id_column: str,
                         samples_path: str | Path, content_path: str | Path) -> None:
    """Warn when more than MISSING_CONTENT_WARNING of the sample rows' ids lack a content row."""
    covered, rows = content_coverage(samples, content, id_column)
    missing = rows - covered
    if rows and missing / rows > MISSING_CONTENT_WARNING:
        log.warning(
            f"{content_path}: {missing:,} of {rows:,} rows of {samples_path} ({missing / rows:.0%}) have a {id_column} with no row "
            f"in this table; those ids have no content features — check that both use the same ids (types, hashing) or add their rows",
            column=id_column, rows_without_content=missing,
        )


def encode_entities(spec: EntitySpec, content: pl.DataFrame, extra_ids: pl.Series | None, path: str | Path) -> EntityTable:
    """Entity rows = the content table's rows, then ids only seen in samples (no content)."""
    table = content
    if extra_ids is not None:
        missing = pl.DataFrame({spec.id_column: extra_ids.unique().sort()}).join(content.select(spec.id_column), on=spec.id_column, how="anti")
        if missing.height:
            table = pl.concat([content, missing], how="diagonal_relaxed")
    tensors = encode_content(spec, table, path)
    ids = table[spec.id_column]
    return EntityTable(ids=ids, id_index=torch.from_numpy(id_indices(spec, ids)), content=tensors)


def normalise_stats(spec: EntitySpec, rows: pl.DataFrame) -> np.ndarray:
    """(n, n_stats) float32: log1p (if fitted) then standardised; nulls and non-finite -> 0."""
    columns = []
    for name, mean, std, log1p in zip(spec.stats_columns, spec.stats_mean, spec.stats_std, spec.stats_log1p):
        values = rows[name].cast(pl.Float64).fill_null(0.0).to_numpy().astype(np.float64, copy=True)
        values[~np.isfinite(values)] = 0.0
        if log1p:
            values = np.log1p(np.maximum(values, 0.0))
        columns.append(((values - mean) / std).astype(np.float32))
    if not columns:
        return np.zeros((rows.height, 0), dtype=np.float32)
    return np.stack(columns, axis=1)


def check_stats_columns(spec: EntitySpec, stats: pl.DataFrame, path: str | Path) -> None:
    missing = [c for c in spec.stats_columns + [spec.id_column] if c not in stats.columns]
    if missing:
        raise MissingColumn(
            f"{spec.side} stats: missing column(s) {', '.join(missing)}",
            path=path,
            column=missing[0],
            hint="use stats written by the same `coldrec stats` settings as in training",
        )


@dataclass
class EncodedSamples:
    """Per-sample indices into the entity and stats tables."""

    user_row: torch.Tensor  # (n,) int64 into EntityTable users
    item_row: torch.Tensor  # (n,) int64 into EntityTable items
    user_stats_row: torch.Tensor  # (n,) int64 into the user stats table, 0 = none (cold)
    item_stats_row: torch.Tensor  # (n,) int64
    label: torch.Tensor  # (n,) float32
    weight: torch.Tensor  # (n,) float32

    def __len__(self) -> int:
        return len(self.label)

    def to(self, device: torch.device | str) -> "EncodedSamples":
        return EncodedSamples(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


@dataclass
class EncodedData:
    """The whole training input as tensors: entity tables, stats tables, samples."""

    users: EntityTable
    items: EntityTable
    user_stats: torch.Tensor  # (rows + 1, n_user_stats) float32; row 0 = zeros
    item_stats: torch.Tensor  # (rows + 1, n_item_stats)
    splits: dict[str, EncodedSamples]
    frames: dict[str, pl.DataFrame]  # per split: user_id, item_id, label, day (for metrics)

    def to(self, device: torch.device | str) -> "EncodedData":
        return EncodedData(
            self.users.to(device),
            self.items.to(device),
            self.user_stats.to(device),
            self.item_stats.to(device),
            {k: v.to(device) for k, v in self.splits.items()},
            self.frames,
        )

    def entity(self, side: str) -> EntityTable:
        return self.users if side == "user" else self.items

    def stats_table(self, side: str) -> torch.Tensor:
        return self.user_stats if side == "user" else self.item_stats

    def inputs(self, side: str, rows: torch.Tensor, stats_rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """Tower inputs of entity `rows` with statistics `stats_rows` (both (batch,))."""
        return gather_inputs(self.entity(side), self.stats_table(side), rows, stats_rows)


def gather_inputs(table: EntityTable, stats: torch.Tensor, rows: torch.Tensor, stats_rows: torch.Tensor) -> dict[str, torch.Tensor]:
    inputs = {key: value.index_select(0, rows) for key, value in table.content.items()}
    inputs["id"] = table.id_index.index_select(0, rows)  # (batch,)
    inputs["stats"] = stats.index_select(0, stats_rows)  # (batch, n_stats)
    return inputs


def _stats_rows(spec: EntitySpec, samples: pl.DataFrame, stats: pl.DataFrame | None) -> tuple[np.ndarray, pl.DataFrame]:
    """For the (id, day) pairs of `samples`: the stats rows found, and each sample's row (0 = none)."""
    id_column = spec.id_column
    if stats is None or not spec.stats_columns:
        return np.zeros((1, len(spec.stats_columns)), dtype=np.float32), samples.with_columns(pl.lit(0, pl.Int64).alias(f"__{spec.side}_stats_row"))
    wanted = samples.select(id_column, "day").unique()
    found = stats.join(wanted, on=[id_column, "day"], how="semi").unique([id_column, "day"], keep="last").sort([id_column, "day"])
    found = found.with_columns(pl.int_range(1, pl.len() + 1, dtype=pl.Int64).alias(f"__{spec.side}_stats_row"))
    table = np.concatenate([np.zeros((1, len(spec.stats_columns)), dtype=np.float32), normalise_stats(spec, found)])
    joined = samples.join(found.select(id_column, "day", f"__{spec.side}_stats_row"), on=[id_column, "day"], how="left", maintain_order="left")
    return table, joined.with_columns(pl.col(f"__{spec.side}_stats_row").fill_null(0))


def encode_dataset(
    spec: FeatureSpec,
    splits: dict[str, pl.DataFrame],
    users: pl.DataFrame,
    items: pl.DataFrame,
    *,
    user_stats: pl.DataFrame | None = None,
    item_stats: pl.DataFrame | None = None,
    users_path: str | Path = "users",
    items_path: str | Path = "items",
) -> EncodedData:
    """Encode samples of every split (name -> user_id, item_id, ts, label[, weight]) at once."""
    splits = {name: with_day(frame) for name, frame in splits.items()}
    all_samples = pl.concat([f.select("user_id", "item_id", "day") for f in splits.values()])
    user_table = encode_entities(spec.user, users, all_samples["user_id"], users_path)
    item_table = encode_entities(spec.item, items, all_samples["item_id"], items_path)
    user_stats_table, _ = _stats_rows(spec.user, all_samples, user_stats)
    item_stats_table, _ = _stats_rows(spec.item, all_samples, item_stats)
    encoded: dict[str, EncodedSamples] = {}
    frames: dict[str, pl.DataFrame] = {}
    for name, frame in splits.items():
        frame = frame.with_columns(
            pl.col("label").cast(pl.Float32),
            (pl.col("weight").cast(pl.Float32).fill_null(1.0) if "weight" in frame.columns else pl.lit(1.0, pl.Float32)).alias("weight"),
        )
        frame = frame.join(user_table.row_frame("user_id").rename({"__row": "__user_row"}), on="user_id", how="left", maintain_order="left")
        frame = frame.join(item_table.row_frame("item_id").rename({"__row": "__item_row"}), on="item_id", how="left", maintain_order="left")
        _, frame = _stats_rows(spec.user, frame, user_stats)
        _, frame = _stats_rows(spec.item, frame, item_stats)
        encoded[name] = EncodedSamples(
            user_row=_long(frame["__user_row"]),
            item_row=_long(frame["__item_row"]),
            user_stats_row=_long(frame["__user_stats_row"]),
            item_stats_row=_long(frame["__item_stats_row"]),
            label=torch.from_numpy(frame["label"].to_numpy().astype(np.float32)),
            weight=torch.from_numpy(frame["weight"].to_numpy().astype(np.float32)),
        )
        frames[name] = frame.select("user_id", "item_id", "label", "day", "ts", "__user_row", "__item_row", "__user_stats_row", "__item_stats_row")
    return EncodedData(
        users=user_table,
        items=item_table,
        user_stats=torch.from_numpy(user_stats_table),
        item_stats=torch.from_numpy(item_stats_table),
        splits=encoded,
        frames=frames,
    )


def _long(series: pl.Series) -> torch.Tensor:
    return torch.from_numpy(series.to_numpy().astype(np.int64))


# --------------------------------------------------------------------------- serving


def latest_stats(stats: pl.DataFrame, id_column: str) -> pl.DataFrame:
    """One stats row per id: the latest by `day`/`as_of` when the table has one."""
    for key in STATS_KEY_COLUMNS:
        if key in stats.columns:
            return stats.sort(key).unique(id_column, keep="last")
    return stats.unique(id_column, keep="last")


def encode_for_serving(
    spec: EntitySpec,
    table: pl.DataFrame,
    *,
    stats: pl.DataFrame | None = None,
    cold: bool = False,
    path: str | Path = "table",
    stats_path: str | Path = "stats",
) -> tuple[dict[str, torch.Tensor], np.ndarray]:
    """Model inputs for every row of a users/items table, and its cold mask.

    The preference block (id embedding row + latest stats) is present for known ids; with
    `cold=True` it is zeroed for everyone (content only). `cold_mask[r]` is True when row r's
    preference block is empty.
    """
    content = encode_content(spec, table, path)
    ids = table[spec.id_column]
    id_index = id_indices(spec, ids)
    stats_values = np.zeros((len(table), len(spec.stats_columns)), dtype=np.float32)
    has_stats = np.zeros(len(table), dtype=bool)
    if stats is not None and spec.stats_columns:
        check_stats_columns(spec, stats, stats_path)
        check_id_types_match(table.schema[spec.id_column], stats.schema[spec.id_column], spec.id_column, path, stats_path)
        latest = latest_stats(stats, spec.id_column).with_columns(pl.lit(True).alias("__has_stats"))
        joined = pl.DataFrame({spec.id_column: ids}).join(latest, on=spec.id_column, how="left", maintain_order="left")
        has_stats = joined["__has_stats"].fill_null(False).to_numpy()
        stats_values = normalise_stats(spec, joined)
        stats_values[~has_stats] = 0.0
    if cold:
        id_index = np.zeros_like(id_index)
        stats_values = np.zeros_like(stats_values)
        has_stats = np.zeros_like(has_stats)
    cold_mask = (id_index == 0) & ~has_stats
    inputs = dict(content)
    inputs["id"] = torch.from_numpy(id_index)
    inputs["stats"] = torch.from_numpy(stats_values)
    return inputs, cold_mask


def slice_inputs(inputs: dict[str, torch.Tensor], start: int, stop: int) -> dict[str, torch.Tensor]:
    return {key: value[start:stop] for key, value in inputs.items()}


def finite_or_raise(values: np.ndarray, what: str, path: str | Path) -> None:
    if values.size and not np.isfinite(values).all():
        raise SchemaError(f"{what} has non-finite values", path=path, hint="drop or fill NaN/inf values")


__all__ = [
    "ColumnSpec",
    "EncodedData",
    "EncodedSamples",
    "EntitySpec",
    "EntityTable",
    "FeatureSpec",
    "encode_content",
    "encode_dataset",
    "encode_for_serving",
    "fit_spec",
    "id_indices",
    "latest_stats",
]


# --------------------------------------------------------------------------- click profiles

# model.user_profile / item_profile: a categorical / multi-hot column of the other side
# contributes its first (most frequent) PROFILE_MAX_VALUES values, the rest share the OOV slot;
# a numeric column PROFILE_NUMERIC_BUCKETS quantile buckets of its training entities plus a
# missing slot.
PROFILE_MAX_VALUES = 62
PROFILE_NUMERIC_BUCKETS = 8


def profile_groups(spec: EntitySpec) -> list[tuple[str, str, int]]:
    """(content key, role, width) of every column of `spec` a click profile counts."""
    groups = []
    for index, column in enumerate(spec.columns):
        if column.role in ("categorical", "multi_hot"):
            groups.append((f"col{index}", column.role, min(column.cardinality, FIRST + PROFILE_MAX_VALUES)))
    for position, _ in enumerate(spec.numeric_columns):
        groups.append((f"num{position}", "numeric", PROFILE_NUMERIC_BUCKETS + 1))
    return groups


def profile_width(spec: EntitySpec) -> int:
    return sum(width for _, _, width in profile_groups(spec))


def profile_edges(spec: EntitySpec, content: dict[str, torch.Tensor]) -> torch.Tensor:
    """(numeric columns, PROFILE_NUMERIC_BUCKETS - 1): the inner quantiles of each numeric
    column's (standardised) values over these entities, the bucket edges of `profile_matrix`.

    numpy's quantile, as in `fit_buckets`: torch.quantile refuses inputs above 2^24 values,
    and a users table can be larger than that.
    """
    inner = np.linspace(0.0, 1.0, PROFILE_NUMERIC_BUCKETS + 1)[1:-1]
    rows = np.zeros((len(spec.numeric_columns), len(inner)), dtype=np.float32)
    for position, _ in enumerate(spec.numeric_columns):
        values, missing = content["num"][:, 2 * position], content["num"][:, 2 * position + 1] > 0
        known = values[~missing].double().cpu().numpy()
        if len(known):
            rows[position] = np.quantile(known, inner)
    return torch.from_numpy(rows)


def _profile_slots(spec: EntitySpec, content: dict[str, torch.Tensor], edges: torch.Tensor | None) -> Iterator[tuple[str, int, torch.Tensor]]:
    """(role, width, slot indices) per column group of `profile_groups(spec)`: (entities,) for
    a categorical or numeric column, (entities, bag) padded with PAD for a multi-hot one."""
    if edges is None:
        edges = profile_edges(spec, content)
    for key, role, width in profile_groups(spec):
        if role == "numeric":
            position = int(key[3:])
            values = content["num"][:, 2 * position].contiguous()  # (entities,) standardised
            missing = content["num"][:, 2 * position + 1] > 0
            index = torch.bucketize(values, edges[position].contiguous(), right=True)
            index[missing] = PROFILE_NUMERIC_BUCKETS
        else:
            index = torch.where(content[key] < width, content[key], torch.full_like(content[key], OOV))
        yield role, width, index


def profile_matrix(spec: EntitySpec, content: dict[str, torch.Tensor], edges: torch.Tensor | None = None) -> torch.Tensor:
    """(entities, profile_width(spec)) float32: each entity's values, every column group
    summing to 1 (what one click by / on it adds to the other side's profile).

    A multi-hot bag splits its unit over its values; a numeric column falls in one of the
    buckets `edges` (default: these entities' own quantiles, `profile_edges`); the last slot
    is missing.
    """
    parts = []
    for role, width, index in _profile_slots(spec, content, edges):
        if role == "multi_hot":  # bags: (entities, bag) padded with 0
            part = torch.zeros(index.shape[0], width, device=index.device).scatter_add_(1, index, (index > 0).float())
            part[:, 0] = (part.sum(1) == 0).float()  # an empty bag counts as null
            part = part / part.sum(1, keepdim=True)
        else:
            part = torch.nn.functional.one_hot(index, width).float()
        parts.append(part)
    return torch.cat(parts, dim=1) if parts else torch.zeros(len(next(iter(content.values()))), 0)


def profile_projection(spec: EntitySpec, content: dict[str, torch.Tensor], edges: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """(entities, basis columns): `profile_matrix(spec, content, edges) @ basis` without the
    dense (entities, profile_width) matrix: each group's rows of `basis` gathered (a bag's
    averaged), so a wide vocabulary costs a few lookups per entity."""
    out = None
    offset = 0
    for role, width, index in _profile_slots(spec, content, edges):
        rows = basis[offset : offset + width]  # (width, rank)
        offset += width
        if role == "multi_hot":
            weights = (index > 0).float()  # (entities, bag)
            count = weights.sum(1, keepdim=True)  # (entities, 1)
            part = torch.nn.functional.embedding_bag(index, rows, per_sample_weights=weights, mode="sum") / count.clamp(min=1.0)
            part = torch.where(count > 0, part, rows[0])  # an empty bag counts as null
        else:
            part = torch.nn.functional.embedding(index, rows)
        out = part if out is None else out + part
    return out if out is not None else basis.new_zeros((len(next(iter(content.values()))), basis.shape[1]))
