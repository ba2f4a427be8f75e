"""What `coldrec serve` serves, without the HTTP: a model and index pair, answered per request.

A `Pair` is one model directory and the index built from it, loaded together and checked
(the index records the fingerprint of the model that embedded its items; a pair whose
fingerprints differ is refused). Known users are embedded once per pair, as `coldrec embed`
would (with the latest statistics when given). A new user's content attributes (JSON) go
through the user tower alone, a new item's through the item tower into the index's delta
(the same delta as `coldrec index --add`, written atomically, so a restart keeps it).

`Served` holds the current pair. Each request takes the pair once and uses only it, so a
user vector of one model is never scored against another model's index. `refresh()` loads a
new pair when the model or index directory now resolves elsewhere (a pipeline's `current`
link moved) or the index was rebuilt, and swaps it in only once it is complete.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from coldrec import io, log
from coldrec.embed import embed_entities, model_fingerprint, normalise_rows, write_embeddings
from coldrec.errors import ColdrecError, IncompatibleModel
from coldrec.index import LoadedIndex, add_to_index, load_index
from coldrec.model import LoadedModel, load_model
from coldrec.recall import RecallPlan, make_plan, search_batch
from coldrec.row_inputs import RowEncoder

MAX_K = 1000


class BadRequest(ValueError):
    """A request that cannot be answered as given; the message names the field."""


class UnknownId(LookupError):
    """A user id the served users table does not have."""


@dataclass
class Pair:
    """A model and its index, loaded together."""

    model: LoadedModel
    index: LoadedIndex
    plan: RecallPlan
    fingerprint: str
    model_dir: Path  # resolved
    index_dir: Path  # resolved
    build_id: str
    user_rows: dict[Any, int]  # known user id -> row of user_vectors
    user_vectors: np.ndarray  # (users, dim)
    item_positions: dict[Any, int]  # item id -> global index position
    new_users: RowEncoder  # a new user's attributes -> the user tower's content-only inputs

    def version(self) -> dict[str, Any]:
        return {"model": self.fingerprint, "model_dir": str(self.model_dir), "index": self.build_id,
                "index_dir": str(self.index_dir), "items": self.index.count - len(self.index.superseded), "known_users": len(self.user_rows)}


def load_pair(model_dir: Path, index_dir: Path, users: Path | None, stats: Path | None, reuse: Pair | None = None, exact: bool | None = None) -> Pair:
    """Load and check a model / index pair (IncompatibleModel when the index was built from
    another model's embeddings). `reuse`: a pair of the same model, whose model and known
    users are taken as they are. `exact`: brute force / Annoy / None = by the index's size."""
    model_dir, index_dir = model_dir.resolve(), index_dir.resolve()
    model = reuse.model if reuse is not None else load_model(model_dir)
    fingerprint = model_fingerprint(model)
    index = load_index(index_dir)
    if index.model_fingerprint and index.model_fingerprint != fingerprint:
        raise IncompatibleModel(f"the index was built from model {index.model_fingerprint}, not {fingerprint}", path=index_dir,
                                hint="serve the model and index of the same pipeline run")
    if index.dim != model.dim:
        raise IncompatibleModel(f"the index has dim {index.dim}, the model {model.dim}", path=index_dir, hint="serve a matching pair")
    user_rows, user_vectors = {}, np.zeros((0, model.dim), dtype=np.float32)
    if reuse is not None:
        user_rows, user_vectors = reuse.user_rows, reuse.user_vectors
    elif users is not None:
        known = embed_entities(model, users=users, stats=stats)
        user_rows = {user: row for row, user in enumerate(known.ids.to_list())}
        user_vectors = known.vectors
    plan = make_plan(index, k=MAX_K, exact=exact, search_k=None, threads=1, fresh_quota=0.0, fresh_days=1, as_of=None)
    positions = {item: position for position, item in enumerate(index.item_ids.to_list())}
    encoder = reuse.new_users if reuse is not None else RowEncoder(model.spec.user)
    return Pair(model, index, plan, fingerprint, model_dir, index_dir, index.manifest["extra"]["build_id"], user_rows, user_vectors, positions, encoder)


def content_frame(model: LoadedModel, side: str, rows: list[dict[str, Any]]) -> pl.DataFrame:
    """JSON objects -> a content table with the columns the model was trained on (missing ones
    null). BadRequest names an unknown column or a value of the wrong type."""
    entity = model.spec.side(side)
    dtypes = {entity.id_column: pl.Int64 if entity.id_dtype == "int" else pl.String}
    for column in entity.columns:
        dtypes.setdefault(column.name, _dtype(column, entity.roles))
    for number, row in enumerate(rows):
        unknown = sorted(set(row) - set(dtypes))
        if unknown:
            raise BadRequest(f"{side} {number}: unknown column '{unknown[0]}' (the model reads: {', '.join(sorted(dtypes))})")
    data = {name: [row.get(name) for row in rows] for name in dtypes}
    try:
        return pl.DataFrame({name: pl.Series(name, values, dtype=_json_dtype(dtypes[name]), strict=True) for name, values in data.items()}).with_columns(
            [pl.col(name).str.to_date() for name, dtype in dtypes.items() if dtype == pl.Date])
    except (TypeError, ValueError, pl.exceptions.PolarsError) as error:
        name = next((n for n, values in data.items() if not _fits(values, _json_dtype(dtypes[n]))), "?")
        raise BadRequest(f"{side}: column '{name}' has a value of the wrong type (expected {_describe(dtypes.get(name))})") from error


def _dtype(column: Any, roles: list[dict[str, Any]]) -> pl.DataType:
    trained = next((r["dtype"] for r in roles if r["column"] == column.name), "")
    if column.role in ("numeric", "numeric_bucket"):
        return pl.Date if trained == "Date" else pl.Float64
    if column.role == "multi_hot":
        return pl.List(pl.String)
    if column.role == "vector":
        return pl.List(pl.Float64)
    return pl.String


def _json_dtype(dtype: pl.DataType) -> pl.DataType:
    return pl.String if dtype == pl.Date else dtype  # dates arrive as "YYYY-MM-DD"


def _fits(values: list[Any], dtype: pl.DataType) -> bool:
    try:
        pl.Series(values, dtype=dtype, strict=True)
        return True
    except (TypeError, ValueError, pl.exceptions.PolarsError):
        return False


def _describe(dtype: pl.DataType | None) -> str:
    return {pl.Float64: "a number", pl.String: "a string", pl.Date: "a date YYYY-MM-DD"}.get(dtype, "a list" if isinstance(dtype, pl.List) else "?")


def recommend(pair: Pair, query: np.ndarray, k: int, exclude: list[Any]) -> list[dict[str, Any]]:
    """Top-k items of the pair's index for one normalised query vector, `exclude` ids left out."""
    dtype = pair.index.item_ids.dtype
    positions = [pair.item_positions[item] for item in (coerce_id(x, dtype) for x in exclude) if item in pair.item_positions]
    plan = dataclasses.replace(pair.plan, k=k)  # the pair's plan is shared by concurrent requests
    found, scores = search_batch(plan, query[None, :], np.array([0, len(positions)]), np.asarray(positions, dtype=np.int64))
    ids = pair.index.item_ids
    return [{"item_id": ids[int(p)], "score": round(float(s), 6)} for p, s in zip(found[0], scores[0]) if p >= 0]


def user_query(pair: Pair, user_id: Any | None, content: dict[str, Any] | None) -> tuple[np.ndarray, bool]:
    """(normalised vector, from content alone?) of a known user id, or of new content."""
    if user_id is not None:
        row = pair.user_rows.get(coerce_id(user_id, pl.Int64 if pair.model.spec.user.id_dtype == "int" else pl.String))
        if row is None:
            raise UnknownId(f"unknown user_id {user_id!r}: send the user's content attributes as 'user' instead")
        return pair.user_vectors[row], False
    content = content or {}
    unknown = sorted(set(content) - pair.new_users.columns)
    if unknown:
        raise BadRequest(f"user: unknown column '{unknown[0]}' (the model reads: {', '.join(sorted(pair.new_users.columns))})")
    with torch.inference_mode():
        vector = pair.model.model.embed("user", pair.new_users.encode([content]))  # (1, dim)
    return normalise_rows(vector.float().numpy())[0], True


def coerce_id(value: Any, dtype: pl.DataType) -> Any:
    """A JSON id as the table's id type ("42" -> 42 for integer ids, 42 -> "42" for strings)."""
    if dtype.is_integer():
        try:
            return int(value)
        except (TypeError, ValueError):
            return value
    return str(value)


class Served:
    """The pair being served, its reload, and the additions to its index."""

    def __init__(self, model_dir: Path, index_dir: Path, users: Path | None = None, stats: Path | None = None, exact: bool | None = None) -> None:
        self.model_dir, self.index_dir, self.users, self.stats, self.exact = Path(model_dir), Path(index_dir), users, stats, exact
        self.pair = load_pair(self.model_dir, self.index_dir, users, stats, exact=exact)
        self._reload = threading.Lock()
        self.reloads = 0

    def refresh(self) -> bool:
        """Swap in a new pair if the directories moved or the index changed; True if swapped.
        A pair that fails to load or check is logged and the current one kept."""
        pair = self.pair
        model_dir, index_dir = self.model_dir.resolve(), self.index_dir.resolve()
        try:
            build_id = io.read_manifest(index_dir).get("extra", {}).get("build_id")
        except ColdrecError:
            return False
        if (model_dir, index_dir, build_id) == (pair.model_dir, pair.index_dir, pair.build_id):
            return False
        with self._reload:
            try:
                reuse = pair if model_dir == pair.model_dir else None
                fresh = load_pair(model_dir, index_dir, self.users, self.stats, reuse=reuse, exact=self.exact)
            except ColdrecError as error:
                log.warning(f"serve: kept model {pair.fingerprint} / index {pair.build_id}: {error}")
                return False
            self.pair = fresh
            self.reloads += 1
        log.info(f"serve: now model {fresh.fingerprint} / index {fresh.build_id} ({fresh.index.count:,} items)")
        return True

    def add_items(self, rows: list[dict[str, Any]]) -> int:
        """Embed new items from content and add them to the index's delta (persisted), then
        serve the index with them. Returns the number added."""
        with self._reload:
            pair = self.pair
            table = content_frame(pair.model, "item", rows)
            if table["item_id"].null_count():
                raise BadRequest("items: every item needs an 'item_id'")
            vectors, _ = pair.model.embed("item", table, cold=True)
            with tempfile.TemporaryDirectory(prefix=".serve-items-", dir=pair.index_dir.parent) as work:
                path = write_embeddings(Path(work) / "items.parquet", table["item_id"], np.asarray(vectors), np.ones(len(table), dtype=bool),
                                        model_fingerprint=pair.fingerprint, first_seen=pl.Series([dt.datetime.now(dt.timezone.utc).date()] * len(table)))
                add_to_index(path, pair.index_dir)
            self.pair = load_pair(pair.model_dir, pair.index_dir, self.users, self.stats, reuse=pair, exact=self.exact)
        return len(table)
