"""Embeddings files: the contract between `embed`, `index` and `recall`.

An embeddings file is one Parquet file with the id column under its input name (`user_id` or
`item_id`, integer or string, kept as given), `embedding` (fixed-size list of float32,
L2-normalised) and `cold` (bool). An optional `first_seen` column (Date or Datetime) tells
`index` when an item arrived (used by `recall --fresh-quota`). The model that produced the
vectors is recorded in the file's key-value metadata (`coldrec.model_fingerprint`,
`coldrec.dim`), so an index and a query file from different models are told apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from coldrec import io, log
from coldrec.errors import BadValues, DuplicateIds, MissingColumn, NullValues, WrongDtype

FINGERPRINT_KEY = b"coldrec.model_fingerprint"
DIM_KEY = b"coldrec.dim"
ID_COLUMNS = ("user_id", "item_id")
# Vectors whose norm is off by more than this are renormalised on read (with a warning).
UNIT_TOLERANCE = 1e-3


@dataclass
class Embeddings:
    """Vectors read from an embeddings file; row i of `vectors` belongs to `ids[i]`."""

    ids: pl.Series  # (n,) Int64 or String, as written
    vectors: np.ndarray  # (n, dim) float32, unit norm, C-contiguous
    cold: np.ndarray  # (n,) bool
    id_column: str
    model_fingerprint: str | None
    first_seen: pl.Series | None = None  # (n,) Date, nullable
    path: Path | None = None

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return int(self.vectors.shape[0])


def normalise_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32). Zero rows stay zero."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)  # (n, 1)
    return np.ascontiguousarray(vectors / np.where(norms > 0, norms, 1.0), dtype=np.float32)


def _arrow_ids(ids: pl.Series, name: str) -> pa.Array:
    array = ids.rename(name).to_arrow()
    if pa.types.is_large_string(array.type) or pa.types.is_string_view(array.type):
        array = array.cast(pa.string())
    return array


def embeddings_table(
    ids: pl.Series,
    vectors: np.ndarray,
    cold: np.ndarray,
    *,
    model_fingerprint: str | None,
    id_column: str | None = None,
    first_seen: pl.Series | None = None,
) -> pa.Table:
    """The Arrow table of an embeddings file (with its key-value metadata)."""
    id_column = id_column or ids.name
    if id_column not in ID_COLUMNS:
        raise MissingColumn(
            f"embeddings need an id column named user_id or item_id, got '{id_column}'",
            hint="name the ids Series user_id or item_id",
        )
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != len(ids) or len(cold) != len(ids):
        raise BadValues(
            f"{len(ids)} ids, vectors of shape {vectors.shape} and {len(cold)} cold flags do not line up",
            hint="pass one vector and one cold flag per id",
        )
    dim = int(vectors.shape[1])
    flat = pa.array(vectors.reshape(-1), type=pa.float32())
    columns = {
        id_column: _arrow_ids(ids, id_column),
        "embedding": pa.FixedSizeListArray.from_arrays(flat, dim),
        "cold": pa.array(np.asarray(cold, dtype=bool)),
    }
    if first_seen is not None:
        columns["first_seen"] = first_seen.cast(pl.Date).to_arrow()
    table = pa.table(columns)
    metadata = {DIM_KEY: str(dim).encode()}
    if model_fingerprint:
        metadata[FINGERPRINT_KEY] = model_fingerprint.encode()
    return table.replace_schema_metadata(metadata)


def write_embeddings(
    path: str | Path,
    ids: pl.Series,
    vectors: np.ndarray,
    cold: np.ndarray,
    *,
    model_fingerprint: str | None,
    first_seen: pl.Series | None = None,
) -> Path:
    """Write an embeddings file atomically. `ids.name` must be user_id or item_id.

    vectors: (n, dim), normalised here if they are not already. cold: (n,) bool.
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.size and not np.isfinite(vectors).all():
        raise BadValues(
            "embedding vectors contain NaN or inf", path=path, hint="check the model weights and inputs"
        )
    table = embeddings_table(
        ids, normalise_rows(vectors), cold, model_fingerprint=model_fingerprint, first_seen=first_seen
    )
    path = Path(path)
    with io.atomic_file(path) as temp:
        pq.write_table(table, temp)
    return path


def read_fingerprint(path: str | Path) -> str | None:
    """The model fingerprint stored in an embeddings file's metadata (None if absent)."""
    files = io.parquet_files(path)
    metadata = pq.read_schema(files[0]).metadata or {}
    value = metadata.get(FINGERPRINT_KEY)
    return value.decode() if value else None


def read_embeddings(path: str | Path, *, id_column: str | None = None) -> Embeddings:
    """Read and validate an embeddings file.

    Checks: exactly one id column (or `id_column`), no null or duplicate ids, `embedding` a
    float vector of one fixed length, every value finite and no zero vector. Vectors that are
    not unit length are renormalised (with a warning), so cosine = dot product downstream.
    """
    path = Path(path)
    frame = io.read_parquet(path)
    schema = frame.schema
    if id_column is None:
        present = [name for name in ID_COLUMNS if name in schema]
        if len(present) != 1:
            raise MissingColumn(
                "embeddings file needs exactly one id column (user_id or item_id), found "
                + (", ".join(present) if present else "none"),
                path=path,
                hint=f"found columns: {', '.join(schema.names())}; write it with `coldrec embed`",
            )
        id_column = present[0]
    elif id_column not in schema:
        raise MissingColumn(
            f"missing column '{id_column}'",
            path=path,
            hint=f"found columns: {', '.join(schema.names())}; pass {id_column.split('_')[0]} embeddings",
        )
    id_dtype = schema[id_column]
    if not (id_dtype.is_integer() or id_dtype == pl.String):
        raise WrongDtype(
            f"id column should be integer or string, found {id_dtype}",
            path=path,
            column=id_column,
            hint="cast the ids before writing the file",
        )
    if "embedding" not in schema:
        raise MissingColumn(
            "missing column 'embedding'",
            path=path,
            hint=f"found columns: {', '.join(schema.names())}; write it with `coldrec embed`",
        )
    vectors = _vectors(frame["embedding"], path)
    ids = frame[id_column]
    if ids.null_count():
        raise NullValues(
            f"{ids.null_count()} null id(s)", path=path, column=id_column, hint="drop rows with null ids"
        )
    if ids.n_unique() != len(ids):
        raise DuplicateIds(
            f"{len(ids) - ids.n_unique()} duplicate id(s)",
            path=path,
            column=id_column,
            hint="keep one embedding per id",
        )
    cold = np.zeros(len(frame), dtype=bool)
    if "cold" in schema:
        if schema["cold"] != pl.Boolean:
            raise WrongDtype(
                f"should be boolean, found {schema['cold']}", path=path, column="cold", hint="cast it to bool"
            )
        cold = frame["cold"].fill_null(False).to_numpy().astype(bool)
    first_seen = None
    if "first_seen" in schema:
        dtype = schema["first_seen"]
        if not (dtype == pl.Date or isinstance(dtype, pl.Datetime)):
            raise WrongDtype(
                f"should be Date or Datetime, found {dtype}",
                path=path,
                column="first_seen",
                hint="cast it to a date (the day the item arrived)",
            )
        first_seen = frame["first_seen"].cast(pl.Date)
    return Embeddings(
        ids=ids,
        vectors=vectors,
        cold=cold,
        id_column=id_column,
        model_fingerprint=read_fingerprint(path),
        first_seen=first_seen,
        path=path,
    )


def _vectors(column: pl.Series, path: Path) -> np.ndarray:
    dtype = column.dtype
    if not (isinstance(dtype, (pl.Array, pl.List)) and dtype.inner.is_float()):
        raise WrongDtype(
            f"should be a fixed-size list of float, found {dtype}",
            path=path,
            column="embedding",
            hint="write float32 vectors (pl.Array(pl.Float32, dim))",
        )
    if column.null_count():
        raise NullValues(
            f"{column.null_count()} null vector(s)", path=path, column="embedding", hint="drop those rows"
        )
    if isinstance(dtype, pl.List):
        lengths = column.list.len().unique()
        if len(lengths) > 1:
            raise BadValues(
                f"vectors of different lengths {sorted(lengths.to_list())}",
                path=path,
                column="embedding",
                hint="every embedding must have the model's dim",
            )
        width = int(lengths[0]) if len(lengths) else 0
        column = column.list.to_array(width)
    if len(column) == 0:
        return np.zeros((0, column.dtype.size), dtype=np.float32)
    vectors = np.ascontiguousarray(column.to_numpy(), dtype=np.float32)  # (n, dim)
    finite = np.isfinite(vectors).all(axis=1)
    if not finite.all():
        raise BadValues(
            f"{int((~finite).sum())} vector(s) contain NaN or inf",
            path=path,
            column="embedding",
            hint="re-embed with a healthy model (check its training metrics)",
        )
    norms = np.linalg.norm(vectors, axis=1)  # (n,)
    zero = norms == 0
    if zero.any():
        raise BadValues(
            f"{int(zero.sum())} zero vector(s) (no direction, cosine undefined)",
            path=path,
            column="embedding",
            hint="drop those rows or re-embed them",
        )
    off = np.abs(norms - 1.0) > UNIT_TOLERANCE
    if off.any():
        log.warning(f"{path}: {int(off.sum())} embedding(s) not unit length; renormalised")
        vectors = np.ascontiguousarray(vectors / norms[:, None], dtype=np.float32)
    return vectors
