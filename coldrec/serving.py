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
    encoders: dict[str, RowEncoder]  # side -> JSON rows to that tower's content-only inputs
    model_stamp: int  # spec.json's mtime: a model retrained in place is a new model

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
    encoders = reuse.encoders if reuse is not None else {side: RowEncoder(model.spec.side(side)) for side in ("user", "item")}
    return Pair(model, index, plan, fingerprint, model_dir, index_dir, index.manifest["extra"]["build_id"], user_rows, user_vectors, positions, encoders,
                model_stamp(model_dir))


def model_stamp(model_dir: Path) -> int:
    try:
        return (model_dir / "spec.json").stat().st_mtime_ns
    except OSError:
        return 0


def embed_rows(pair: Pair, side: str, rows: list[dict[str, Any]]) -> np.ndarray:
    """(len(rows), dim) normalised content-only embeddings of JSON rows (their id key aside).
    BadRequest names an unknown column; BadRow a value of the wrong type."""
    encoder = pair.encoders[side]
    for number, row in enumerate(rows):
        unknown = sorted(set(row) - encoder.columns - {f"{side}_id"})
        if unknown:
            raise BadRequest(f"{side} {number}: unknown column '{unknown[0]}' (the model reads: {', '.join(sorted(encoder.columns))})")
    with torch.inference_mode():
        vectors = pair.model.model.embed(side, encoder.encode(rows))  # (rows, dim)
    return normalise_rows(vectors.float().numpy())


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
    if content and "user_id" in content:
        raise BadRequest("user: unknown column 'user_id' (a new user has no id yet; a known one is sent as 'user_id')")
    return embed_rows(pair, "user", [content or {}])[0], True


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
        self._failed: tuple | None = None  # the last pair that failed to load: not retried until it changes
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
        key = (model_dir, model_stamp(model_dir), index_dir, build_id)
        if key == (pair.model_dir, pair.model_stamp, pair.index_dir, pair.build_id) or key == self._failed:
            return False
        with self._reload:
            try:
                reuse = pair if key[:2] == (pair.model_dir, pair.model_stamp) else None
                fresh = load_pair(model_dir, index_dir, self.users, self.stats, reuse=reuse, exact=self.exact)
            except ColdrecError as error:
                self._failed = key
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
            if any(row.get("item_id") is None for row in rows):
                raise BadRequest("items: every item needs an 'item_id'")
            ids = pl.Series("item_id", [coerce_id(row["item_id"], pair.index.item_ids.dtype) for row in rows], dtype=pair.index.item_ids.dtype, strict=False)
            if ids.null_count():
                raise BadRequest(f"items: item_id must be {'an integer' if ids.dtype.is_integer() else 'a string'}, as the index's ids")
            vectors = embed_rows(pair, "item", rows)
            with tempfile.TemporaryDirectory(prefix=".serve-items-", dir=pair.index_dir.parent) as work:
                path = write_embeddings(Path(work) / "items.parquet", ids, vectors, np.ones(len(rows), dtype=bool),
                                        model_fingerprint=pair.fingerprint, first_seen=pl.Series([dt.datetime.now(dt.timezone.utc).date()] * len(rows)))
                add_to_index(path, pair.index_dir)
            self.pair = load_pair(pair.model_dir, pair.index_dir, self.users, self.stats, reuse=pair, exact=self.exact)
        return len(rows)
