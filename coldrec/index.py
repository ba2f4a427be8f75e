"""Item retrieval: one interface, two backends, and the on-disk index directory.

`ExactSearcher` (batched matrix multiply + top-k) and `AnnoySearcher` (Annoy, `angular`
metric on L2-normalised vectors) answer the same call,

    search(queries (n, dim), k) -> (indices (n, k) int64, scores (n, k) float32 cosine)


with -1 / -inf padding where fewer than k items exist. The exact searcher is the oracle the
tests hold Annoy to. (Annoy's `dot` metric is never used: annoy 1.17.3's dot search has a
known recall bug; on unit vectors angular ranks identically, cos = 1 - d²/2.)

An index directory holds

    items.ann      the Annoy forest (memory-mapped on load, shared between processes)
    vectors.npy    the same unit vectors, row = Annoy position (exact search, rebuilds)
    ids.parquet    row = Annoy position: item_id, cold, first_seen (Date, nullable)
    delta/items.parquet   items added since the build (`coldrec index --add`), searched exactly
    manifest.json  dim, metric, count, trees, model and embeddings fingerprints, delta size


It is written in a temporary directory and swapped into place atomically (`io.atomic_dir`),
so a running `recall` sees the old index or the new one, never a mixture. A full rebuild
(`coldrec index --embeddings`) folds the delta in: delta items missing from the new
embeddings are carried into the new forest (same model only), and the delta is emptied.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import polars as pl

from coldrec import io, log
from coldrec.embed import Embeddings, embeddings_table, read_embeddings
from coldrec.errors import IncompatibleModel, InputNotFound, UsageError, WrongDtype
from coldrec.options import IndexOptions
from coldrec.result import StageResult

METRIC = "angular"
FORMAT_VERSION = 1
ITEMS_FILE = "items.ann"
VECTORS_FILE = "vectors.npy"
IDS_FILE = "ids.parquet"
DELTA_DIR = "delta"
DELTA_FILE = "items.parquet"

# bench/recall.py, 100k unit vectors of dim 64, k = 100: at Annoy's own default search_k
# (n_trees * n) 100 trees reach recall@100 0.69 on structureless uniform vectors, 200 trees
# 0.90. Inspecting 4x that many nodes, 100 trees reach 0.968 (uniform) and 1.000
# (clustered) at about the query speed of 200 trees x 2, with half the build time and size.
DEFAULT_TREES = IndexOptions.trees
DEFAULT_SEARCH_K_FACTOR = 4  # search_k = factor * n_trees * items fetched
# Below this many items exact search (one matrix multiply + top-k) is the default: faster
# than Annoy at the defaults above, or as fast with perfect recall. bench/recall.py, dim 64,
# k = 100, 2 busy CPU cores, q/s exact vs Annoy: 635 vs 100 at 100k items, 178 vs 66 at 300k
# (Annoy recall@100 0.86), 139 vs 170 at 1M (Annoy recall@100 0.67): the speed crossover is
# about 0.8M-1M items, and Annoy needs more trees / search_k there to keep its recall.
EXACT_BELOW_ITEMS = 1_000_000
# Warn when the delta grows past this share of the main index: time to rebuild.
DELTA_REBUILD_SHARE = 0.10
# Exact search scores at most this many (query, item) pairs at once (~128 MB of float32).
EXACT_BLOCK_PAIRS = 1 << 25


# --------------------------------------------------------------------------- searchers


class Searcher(Protocol):
    """The retrieval interface both backends implement."""

    count: int
    dim: int

    def search(self, queries: np.ndarray, k: int | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Top-k items per query row.

        queries: (n, dim) float32, unit rows. k: an int, or (n,) ints (one per query).
        Returns indices (n, max k) int64 and cosine scores (n, max k) float32, best first;
        row i holds its own k_i results then -1 / -inf padding (also where fewer exist).
        """
        ...


def cosine_from_angular(distance: np.ndarray) -> np.ndarray:
    """Annoy's angular distance on unit vectors is sqrt(2 - 2 cos): cos = 1 - d²/2."""
    distance = np.asarray(distance, dtype=np.float32)
    return (1.0 - distance * distance / 2.0).astype(np.float32)


def _per_query_k(k: int | np.ndarray, rows: int) -> np.ndarray:
    ks = np.broadcast_to(np.asarray(k, dtype=np.int64), (rows,))
    if rows and ks.min() <= 0:
        raise UsageError(f"k must be positive, got {int(ks.min())}", hint="pass --k 1 or more")
    return ks


def _check_queries(queries: np.ndarray, dim: int) -> np.ndarray:
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if queries.ndim != 2 or queries.shape[1] != dim:
        raise IncompatibleModel(
            f"query vectors have shape {queries.shape}, the index has dim {dim}",
            hint="embed the queries with the model the index was built from",
        )
    return queries


def _empty(rows: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    return (
        np.full((rows, width), -1, dtype=np.int64),
        np.full((rows, width), -np.inf, dtype=np.float32),
    )


class ExactSearcher:
    """Brute force: scores = queries @ vectorsᵀ in blocks, then torch.topk. The test oracle."""

    def __init__(self, vectors: np.ndarray, *, threads: int | None = None) -> None:
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2:
            raise ValueError(f"vectors must be (count, dim), got shape {vectors.shape}")
        self.vectors = vectors  # (count, dim)
        self.count, self.dim = int(vectors.shape[0]), int(vectors.shape[1])
        self.threads = threads
        self._items = None  # torch (count, dim), made on first search

    def _item_tensor(self):  # noqa: ANN202 - torch imported lazily
        import torch

        if self._items is None:
            vectors = self.vectors
            if not vectors.flags.writeable or not vectors.flags.c_contiguous:
                vectors = np.array(vectors, dtype=np.float32, order="C")
            self._items = torch.from_numpy(vectors)
        return self._items

    def search(self, queries: np.ndarray, k: int | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        queries = _check_queries(queries, self.dim)
        ks = _per_query_k(k, len(queries))
        width = int(ks.max()) if len(ks) else 0
        indices, scores = _empty(len(queries), width)
        take = min(width, self.count)
        if take == 0 or len(queries) == 0:
            return indices, scores
        items = self._item_tensor()
        block = max(1, EXACT_BLOCK_PAIRS // max(self.count, 1))
        previous_threads = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode():
                for start in range(0, len(queries), block):
                    stop = min(start + block, len(queries))
                    query_block = torch.from_numpy(queries[start:stop])  # (b, dim)
                    block_scores = query_block @ items.T  # (b, count)
                    top_scores, top_indices = torch.topk(block_scores, take, dim=1)  # (b, take)
                    indices[start:stop, :take] = top_indices.numpy()
                    scores[start:stop, :take] = top_scores.numpy()
        finally:
            torch.set_num_threads(previous_threads)
        beyond = np.arange(width)[None, :] >= ks[:, None]  # (n, width): past each row's k
        indices[beyond] = -1
        scores[beyond] = -np.inf
        return indices, scores


class AnnoySearcher:
    """Annoy (angular) over unit vectors; queries run on a thread pool (Annoy drops the GIL)."""

    def __init__(
        self,
        index: Any,
        *,
        search_k: int | None = None,
        threads: int = 1,
        search_k_factor: int = DEFAULT_SEARCH_K_FACTOR,
    ) -> None:
        self.index = index
        self.count = int(index.get_n_items())
        self.dim = int(index.f)
        self.search_k = search_k
        self.search_k_factor = search_k_factor
        self.threads = max(1, int(threads))
        self.trees = int(index.get_n_trees())

    @classmethod
    def load(cls, path: str | Path, dim: int, **options: Any) -> "AnnoySearcher":
        """Memory-map an Annoy file (no prefault: pages load on use, shared between processes)."""
        from annoy import AnnoyIndex

        index = AnnoyIndex(dim, METRIC)
        try:
            index.load(str(path), prefault=False)
        except OSError as error:
            raise IncompatibleModel(
                f"cannot load the Annoy index ({error})", path=path, hint="rebuild it with `coldrec index`"
            ) from None
        return cls(index, **options)

    def _search_k(self, k: int) -> int:
        if self.search_k is not None:
            return int(self.search_k)
        return k * self.trees * self.search_k_factor

    def search(self, queries: np.ndarray, k: int | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        queries = _check_queries(queries, self.dim)
        ks = _per_query_k(k, len(queries))
        width = int(ks.max()) if len(ks) else 0
        indices, scores = _empty(len(queries), width)
        if width == 0 or len(queries) == 0 or self.count == 0:
            return indices, scores

        def run(rows: range) -> None:
            get = self.index.get_nns_by_vector
            for row in rows:
                k_row = int(ks[row])
                found, distances = get(queries[row], k_row, self._search_k(k_row), True)
                got = len(found)
                indices[row, :got] = found
                scores[row, :got] = cosine_from_angular(np.asarray(distances))

        chunks = _chunks(len(queries), self.threads)
        if len(chunks) == 1:
            run(chunks[0])
        else:
            with ThreadPoolExecutor(max_workers=self.threads) as pool:
                list(pool.map(run, chunks))
        return indices, scores


def _chunks(total: int, threads: int) -> list[range]:
    # Several chunks per thread so a slow chunk does not leave the others idle.
    pieces = max(1, min(total, threads * 4)) if threads > 1 else 1
    step = -(-total // pieces)
    return [range(start, min(start + step, total)) for start in range(0, total, step)]


# --------------------------------------------------------------------------- building


@dataclass
class IndexResult(StageResult):
    out: Path
    count: int
    delta: int
    dim: int
    trees: int
    folded: int = 0
    seconds: float = 0.0
    added: int = 0

    def summary(self) -> str:
        if self.added:
            return (
                f"index: added {self.added} item(s) to the delta of {self.out} "
                f"({self.count} in the main index, {self.delta} in the delta)"
            )
        folded = f", {self.folded} delta item(s) folded in" if self.folded else ""
        return (
            f"index: {self.count} items, dim {self.dim}, {self.trees} trees{folded} "
            f"-> {self.out} in {self.seconds:.1f}s"
        )


def _require_items(embeddings: Embeddings) -> None:
    if embeddings.id_column != "item_id":
        raise WrongDtype(
            f"an index is built from item embeddings, this file has '{embeddings.id_column}'",
            path=embeddings.path,
            column=embeddings.id_column,
            hint="pass the output of `coldrec embed --items ...`",
        )


def _existing_index(out: Path) -> dict[str, Any] | None:
    if not (out / io.MANIFEST_NAME).exists():
        return None
    manifest = io.read_manifest(out)
    return manifest if manifest.get("command") == "index" else None


def _first_seen_lookup(out: Path) -> pl.DataFrame | None:
    """item_id -> first_seen recorded by the current index (main and delta), if any."""
    frames = []
    if (out / IDS_FILE).exists():
        frames.append(pl.read_parquet(out / IDS_FILE, columns=["item_id", "first_seen"]))
    if (out / DELTA_DIR / DELTA_FILE).exists():
        frames.append(pl.read_parquet(out / DELTA_DIR / DELTA_FILE, columns=["item_id", "first_seen"]))
    frames = [f.filter(pl.col("first_seen").is_not_null()) for f in frames if "first_seen" in f.columns]
    if not frames:
        return None
    try:
        return pl.concat(frames).group_by("item_id").agg(pl.col("first_seen").min())
    except pl.exceptions.PolarsError:
        return None  # an index of another id type: nothing to carry over


def _date_new_items(ids: pl.Series, first_seen: pl.Series, references: list[Path], today: dt.date) -> pl.Series:
    """first_seen, with `today` for the items that no reference index holds (new since then)."""
    known_ids = []
    for reference in references:
        for file in (reference / IDS_FILE, reference / DELTA_DIR / DELTA_FILE):
            if file.exists():
                known_ids.append(pl.read_parquet(file, columns=["item_id"])["item_id"])
    try:
        is_new = ~ids.is_in(pl.concat(known_ids).implode()) if known_ids else pl.Series([True] * len(ids))
    except pl.exceptions.PolarsError:
        return first_seen  # a reference of another id type: nothing to compare with
    frame = pl.DataFrame({"first_seen": first_seen, "new": is_new})
    return frame.select(
        pl.when(pl.col("first_seen").is_null() & pl.col("new")).then(pl.lit(today)).otherwise(pl.col("first_seen"))
        .cast(pl.Date).alias("first_seen")
    )["first_seen"]


def _fill_first_seen(ids: pl.Series, first_seen: pl.Series | None, known: pl.DataFrame | None) -> pl.Series:
    base = first_seen if first_seen is not None else pl.Series("first_seen", [None] * len(ids), dtype=pl.Date)
    if known is None or known.schema["item_id"] != ids.dtype:
        return base.rename("first_seen")
    looked_up = (
        pl.DataFrame({"item_id": ids}).join(known, on="item_id", how="left", maintain_order="left")["first_seen"]
    )
    return base.fill_null(looked_up).rename("first_seen")


def _manifest(
    *,
    dim: int,
    count: int,
    trees: int,
    model_fingerprint: str | None,
    embeddings_fingerprint: str,
    delta: dict[str, Any],
    parameters: dict[str, Any],
    inputs: dict[str, str],
    started: float,
) -> io.Manifest:
    return io.Manifest(
        command="index",
        parameters=parameters,
        inputs=inputs,
        row_counts={"items": count, "delta": int(delta.get("count", 0))},
        extra={
            "format_version": FORMAT_VERSION,
            "build_id": uuid.uuid4().hex,
            "dim": dim,
            "metric": METRIC,
            "count": count,
            "trees": trees,
            "model_fingerprint": model_fingerprint,
            "embeddings_fingerprint": embeddings_fingerprint,
            "delta": delta,
        },
        wall_time_s=round(time.monotonic() - started, 3),
    )


def build_index(
    embeddings_path: str | Path,
    out_dir: str | Path,
    *,
    trees: int = DEFAULT_TREES,
    on_disk_build: bool = False,
    fold_delta: bool = True,
    seed: int = 0,
    threads: int = -1,
    previous: str | Path | None = None,
    today: dt.date | None = None,
) -> IndexResult:
    """Build an index directory from an item embeddings file, atomically.

    An existing index at `out_dir` keeps serving until the new one is swapped in. Its delta
    items (from `add_to_index`) that the new embeddings lack are folded into the new forest
    when `fold_delta` and the model fingerprints agree; first-seen days carry over.
    `previous` names an older index elsewhere (the pipeline's last run) whose first-seen
    days carry over too. Given a reference index (`previous`, or one already at `out_dir`),
    items it does not know are new since then: their first-seen day is `today` (UTC), so
    `recall --fresh-quota` can find them; a first-ever build leaves first-seen unknown.
    `on_disk_build` builds the forest in the output file instead of RAM (huge catalogues).
    """
    started = time.monotonic()
    if trees < 1:
        raise UsageError(f"--trees must be at least 1, got {trees}", hint="pass --trees 100")
    embeddings_path = Path(embeddings_path)
    out = Path(out_dir)
    embeddings = read_embeddings(embeddings_path)
    _require_items(embeddings)
    if len(embeddings) == 0:
        raise InputNotFound("embeddings file has no rows", path=embeddings_path, hint="embed some items first")
    embeddings_fingerprint = io.content_fingerprint(io.parquet_files(embeddings_path)[0])
    with io.output_lock(out, "coldrec index"):
        _refuse_foreign_directory(out)
        ids, vectors, cold = embeddings.ids, embeddings.vectors, embeddings.cold
        folded = 0
        references = [p for p in (out, Path(previous) if previous is not None else None) if p is not None and _existing_index(p)]
        lookups = [frame for frame in (_first_seen_lookup(p) for p in references) if frame is not None]
        known = pl.concat(lookups).group_by("item_id").agg(pl.col("first_seen").min()) if lookups else None
        if fold_delta and _existing_index(out):
            ids, vectors, cold, first_seen, folded = _fold_delta(out, embeddings, known)
        else:
            first_seen = _fill_first_seen(ids, embeddings.first_seen, known)
        if references:
            first_seen = _date_new_items(ids, first_seen, references, today or dt.datetime.now(dt.timezone.utc).date())
        with io.atomic_dir(out) as temp:
            _write_forest(temp, vectors, trees=trees, on_disk_build=on_disk_build, seed=seed, threads=threads)
            np.save(temp / VECTORS_FILE, vectors)
            pl.DataFrame({"item_id": ids, "cold": cold, "first_seen": first_seen}).write_parquet(temp / IDS_FILE)
            _manifest(
                dim=embeddings.dim,
                count=len(ids),
                trees=trees,
                model_fingerprint=embeddings.model_fingerprint,
                embeddings_fingerprint=embeddings_fingerprint,
                delta={"count": 0},
                parameters={"trees": trees, "on_disk_build": on_disk_build, "seed": seed, "fold_delta": fold_delta},
                inputs={"embeddings": embeddings_fingerprint},
                started=started,
            ).write(temp)
    result = IndexResult(
        out=out, count=len(ids), delta=0, dim=embeddings.dim, trees=trees, folded=folded,
        seconds=time.monotonic() - started,
    )
    return result


def _refuse_foreign_directory(out: Path) -> None:
    # The build replaces --out wholesale: never swap away a directory that is not an index.
    if out.is_dir() and any(out.iterdir()) and _existing_index(out) is None:
        raise UsageError(
            "--out is a non-empty directory that is not a coldrec index; refusing to replace it",
            path=out,
            hint="choose a new or empty --out directory",
        )


def _fold_delta(
    out: Path, embeddings: Embeddings, known: pl.DataFrame | None
) -> tuple[pl.Series, np.ndarray, np.ndarray, pl.Series, int]:
    first_seen = _fill_first_seen(embeddings.ids, embeddings.first_seen, known)
    delta_path = out / DELTA_DIR / DELTA_FILE
    plain = (embeddings.ids, embeddings.vectors, embeddings.cold, first_seen, 0)
    if not delta_path.exists():
        return plain
    delta = read_embeddings(delta_path, id_column="item_id")
    manifest = io.read_manifest(out)
    delta_model = manifest.get("extra", {}).get("model_fingerprint")
    if delta.dim != embeddings.dim or (
        delta_model and embeddings.model_fingerprint and delta_model != embeddings.model_fingerprint
    ):
        log.warning(
            f"{out}: the delta's {len(delta)} item(s) come from another model and are dropped; "
            "re-embed them and include them in --embeddings"
        )
        return plain
    if delta.ids.dtype != embeddings.ids.dtype:
        log.warning(f"{out}: the delta's item ids are {delta.ids.dtype}, not {embeddings.ids.dtype}; dropped")
        return plain
    missing = ~delta.ids.is_in(embeddings.ids.implode()).to_numpy()  # (n_delta,) not in the new build
    count = int(missing.sum())
    if count == 0:
        return plain
    delta_first_seen = delta.first_seen if delta.first_seen is not None else pl.Series([None] * len(delta), dtype=pl.Date)
    return (
        pl.concat([embeddings.ids, delta.ids.filter(pl.Series(missing))]),
        np.concatenate([embeddings.vectors, delta.vectors[missing]]),
        np.concatenate([embeddings.cold, delta.cold[missing]]),
        pl.concat([first_seen, delta_first_seen.filter(pl.Series(missing)).rename("first_seen")]),
        count,
    )


def _write_forest(
    directory: Path, vectors: np.ndarray, *, trees: int, on_disk_build: bool, seed: int, threads: int
) -> None:
    from annoy import AnnoyIndex

    path = directory / ITEMS_FILE
    forest = AnnoyIndex(int(vectors.shape[1]), METRIC)
    forest.set_seed(seed)
    if on_disk_build:
        forest.on_disk_build(str(path))
    with log.progress("adding items", len(vectors)) as bar:
        for position in range(len(vectors)):
            forest.add_item(position, vectors[position])
            if position % 65536 == 65535:
                bar.advance(65536)
    log.info(f"building {trees} trees over {len(vectors)} items")
    with log.progress(f"building {trees} trees", None):  # one call into Annoy: an indeterminate bar
        forest.build(trees, n_jobs=threads)
    if not on_disk_build:
        forest.save(str(path))
    forest.unload()


def add_to_index(
    embeddings_path: str | Path, index_dir: str | Path, *, today: dt.date | None = None
) -> IndexResult:
    """Add newly arrived items beside the main index (the delta), without a rebuild.

    Items already in the delta are replaced; an item also in the main index is answered from
    the delta (its newer vector). first_seen: the file's column, else what the index already
    recorded for that item, else `today` (UTC).
    """
    started = time.monotonic()
    embeddings_path = Path(embeddings_path)
    out = Path(index_dir)
    new = read_embeddings(embeddings_path)
    _require_items(new)
    with io.output_lock(out, "coldrec index --add"):
        manifest = _index_to_add_to(out)
        extra = manifest.get("extra", {})
        _check_addition(new, extra, out, embeddings_path)
        today = today or dt.datetime.now(dt.timezone.utc).date()
        first_seen = _fill_first_seen(new.ids, new.first_seen, _first_seen_lookup(out)).fill_null(today)
        ids, vectors, cold, first_seen = _merge_into_delta(
            out / DELTA_DIR / DELTA_FILE, new.ids, new.vectors, new.cold, first_seen
        )
        added_fingerprint = io.content_fingerprint(io.parquet_files(embeddings_path)[0])
        with io.atomic_dir(out) as temp:
            _write_delta(temp, out, manifest, ids, vectors, cold, first_seen, added_fingerprint, started)
    main_count = int(extra["count"])
    _warn_large_delta(out, len(ids), main_count)
    return IndexResult(
        out=out, count=main_count, delta=len(ids), dim=int(extra["dim"]), trees=int(extra["trees"]),
        seconds=time.monotonic() - started, added=len(new),
    )


def _index_to_add_to(out: Path) -> dict[str, Any]:
    """The manifest of the index at `out`; InputNotFound when there is none."""
    manifest = _existing_index(out)
    if manifest is None:
        raise InputNotFound(
            "no index here to add to",
            path=out,
            hint="build one first: coldrec index --embeddings EMB.parquet --out " + str(out),
        )
    return manifest


def _check_addition(new: Embeddings, extra: dict[str, Any], out: Path, embeddings_path: Path) -> None:
    """Refuse new items of another dim, model or id type than the index's."""
    dim, model = int(extra["dim"]), extra.get("model_fingerprint")
    if new.dim != dim:
        raise IncompatibleModel(
            f"new embeddings have dim {new.dim}, the index has dim {dim}",
            path=embeddings_path,
            hint="embed the new items with the model the index was built from, or rebuild",
        )
    if model and new.model_fingerprint and model != new.model_fingerprint:
        raise IncompatibleModel(
            f"new embeddings come from model {new.model_fingerprint}, the index from {model}",
            path=embeddings_path,
            hint="embed the new items with the index's model, or rebuild with --embeddings",
        )
    main_ids = pl.read_parquet(out / IDS_FILE, columns=["item_id"])["item_id"]
    if main_ids.dtype != new.ids.dtype:
        raise WrongDtype(
            f"item ids are {new.ids.dtype} here but {main_ids.dtype} in the index",
            path=embeddings_path,
            column="item_id",
            hint="use the same id type in every file (ids are never re-typed silently)",
        )


def _merge_into_delta(
    delta_path: Path, ids: pl.Series, vectors: np.ndarray, cold: np.ndarray, first_seen: pl.Series
) -> tuple[pl.Series, np.ndarray, np.ndarray, pl.Series]:
    """The existing delta's items that the new ones do not replace, then the new ones."""
    if not delta_path.exists():
        return ids, vectors, cold, first_seen
    old = read_embeddings(delta_path, id_column="item_id")
    keep = ~old.ids.is_in(ids.implode()).to_numpy()  # (n_old,) not replaced
    old_first = old.first_seen if old.first_seen is not None else pl.Series([None] * len(old), dtype=pl.Date)
    return (
        pl.concat([old.ids.filter(pl.Series(keep)), ids]),
        np.concatenate([old.vectors[keep], vectors]),
        np.concatenate([old.cold[keep], cold]),
        pl.concat([old_first.filter(pl.Series(keep)).rename("first_seen"), first_seen]),
    )


def _write_delta(
    temp: Path,
    out: Path,
    manifest: dict[str, Any],
    ids: pl.Series,
    vectors: np.ndarray,
    cold: np.ndarray,
    first_seen: pl.Series,
    added_fingerprint: str,
    started: float,
) -> None:
    """The new index directory in `temp`: the main index linked from `out`, the new delta,
    and a manifest that records this addition."""
    import pyarrow.parquet as pq

    extra = manifest.get("extra", {})
    model = extra.get("model_fingerprint")
    for name in (ITEMS_FILE, VECTORS_FILE, IDS_FILE):
        _link_or_copy(out / name, temp / name)
    (temp / DELTA_DIR).mkdir()
    table = embeddings_table(ids.rename("item_id"), vectors, cold, model_fingerprint=model, first_seen=first_seen)
    pq.write_table(table, temp / DELTA_DIR / DELTA_FILE)
    previous_adds = list(extra.get("delta", {}).get("added", []))
    delta_info = {"count": len(ids), "added": previous_adds + [added_fingerprint]}
    _manifest(
        dim=int(extra["dim"]),
        count=int(extra["count"]),
        trees=int(extra["trees"]),
        model_fingerprint=model,
        embeddings_fingerprint=extra.get("embeddings_fingerprint", ""),
        delta=delta_info,
        parameters=manifest.get("parameters", {}),
        inputs={**manifest.get("inputs", {}), f"delta_{len(previous_adds)}": added_fingerprint},
        started=started,
    ).write(temp)


def _warn_large_delta(out: Path, delta_count: int, main_count: int) -> None:
    if delta_count > DELTA_REBUILD_SHARE * main_count:
        log.warning(
            f"{out}: the delta holds {delta_count} items ({delta_count / max(main_count, 1):.0%} of the main "
            "index); rebuild with --embeddings to fold it in"
        )


def _link_or_copy(source: Path, target: Path) -> None:
    # A hard link shares the (possibly huge) forest; the old directory's removal after the
    # swap only drops its own link, and readers' memory maps keep their inode alive.
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


# --------------------------------------------------------------------------- loading


@dataclass
class LoadedIndex:
    """An index directory opened for search.

    Item positions are global: 0..main_count-1 are the main forest, main_count.. the delta.
    `superseded` lists main positions whose item the delta replaced (never returned).
    """

    directory: Path
    manifest: dict[str, Any]
    dim: int
    model_fingerprint: str | None
    item_ids: pl.Series  # (main_count + delta_count,)
    cold: np.ndarray  # (main_count + delta_count,) bool
    first_seen: np.ndarray  # (main_count + delta_count,) datetime64[D], NaT when unknown
    main_count: int
    main_vectors: np.ndarray  # (main_count, dim) memory-mapped
    delta_vectors: np.ndarray  # (delta_count, dim)
    superseded: np.ndarray  # (m,) int64 main positions
    forest_path: Path
    _forest: Any = field(default=None, repr=False)

    @property
    def delta_count(self) -> int:
        return int(self.delta_vectors.shape[0])

    @property
    def count(self) -> int:
        return self.main_count + self.delta_count

    @property
    def trees(self) -> int:
        return int(self.manifest["extra"]["trees"])

    def forest(self) -> Any:
        """The Annoy index, memory-mapped on first use."""
        if self._forest is None:
            from annoy import AnnoyIndex

            forest = AnnoyIndex(self.dim, METRIC)
            forest.load(str(self.forest_path), prefault=False)
            self._forest = forest
        return self._forest

    def main_searcher(
        self, *, exact: bool | None = None, search_k: int | None = None, threads: int = 1
    ) -> Searcher:
        """Exact below EXACT_BELOW_ITEMS items (or when `exact`), else Annoy."""
        if exact is None:
            exact = self.main_count < EXACT_BELOW_ITEMS
        if exact:
            return ExactSearcher(self.main_vectors, threads=threads)
        return AnnoySearcher(self.forest(), search_k=search_k, threads=threads)

    def delta_searcher(self, *, threads: int = 1) -> ExactSearcher:
        return ExactSearcher(self.delta_vectors, threads=threads)

    def vectors_at(self, positions: np.ndarray) -> np.ndarray:
        """(len(positions), dim) vectors of global positions."""
        positions = np.asarray(positions, dtype=np.int64)
        out = np.empty((len(positions), self.dim), dtype=np.float32)
        main = positions < self.main_count
        out[main] = self.main_vectors[positions[main]]
        out[~main] = self.delta_vectors[positions[~main] - self.main_count]
        return out


def load_index(index_dir: str | Path, *, attempts: int = 10) -> LoadedIndex:
    """Open an index directory. Retries if it is swapped while being opened.

    Every file is opened between two reads of the manifest's build id; a load whose ids,
    vectors and forest could come from different builds is never returned.
    """
    directory = Path(index_dir)
    for attempt in range(attempts):
        try:
            loaded = _load_once(directory)
            # Map the forest now, inside the build check: opened lazily later, it could come
            # from an index swapped in after the ids and vectors were read (a mixture).
            loaded.forest()
            again = io.read_manifest(directory)
            if again.get("extra", {}).get("build_id") == loaded.manifest["extra"].get("build_id"):
                return loaded
        except (FileNotFoundError, InputNotFound, pl.exceptions.ComputeError):
            # A file swapped away mid-read; a damaged index fails the same way every time.
            if attempt == attempts - 1:
                raise
        time.sleep(0.05 * (attempt + 1))
    raise IncompatibleModel(
        f"the index was replaced {attempts} times while being opened",
        path=directory,
        hint="retry when the index builds have finished",
    )


def _load_once(directory: Path) -> LoadedIndex:
    if not directory.is_dir():
        raise InputNotFound("no such index directory", path=directory, hint="build it with `coldrec index`")
    manifest = io.read_manifest(directory)
    extra = manifest.get("extra", {})
    if manifest.get("command") != "index" or "dim" not in extra:
        raise IncompatibleModel(
            "not an index directory (its manifest was written by "
            f"`coldrec {manifest.get('command', '?')}`)",
            path=directory,
            hint="point --index at the output of `coldrec index`",
        )
    if int(extra.get("format_version", 0)) > FORMAT_VERSION:
        raise IncompatibleModel(
            f"index format {extra.get('format_version')} is newer than this coldrec reads ({FORMAT_VERSION})",
            path=directory,
            hint="upgrade coldrec or rebuild the index",
        )
    dim = int(extra["dim"])
    for name in (ITEMS_FILE, VECTORS_FILE, IDS_FILE):
        if not (directory / name).exists():
            raise InputNotFound(f"index file {name} is missing", path=directory, hint="rebuild the index")
    # mmap_mode="c": pages shared with other readers, private only if written (never).
    try:  # allow_pickle stays False: an index is data, never code
        main_vectors = np.load(directory / VECTORS_FILE, mmap_mode="c", allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise IncompatibleModel(
            f"{VECTORS_FILE} is not a plain float array ({str(error).splitlines()[0] if str(error) else type(error).__name__})",
            path=directory / VECTORS_FILE,
            hint="the index is damaged or was not written by coldrec; rebuild it",
        ) from None
    with open(directory / IDS_FILE, "rb") as handle:  # one open: polars may reopen a path mid-read
        ids_frame = pl.read_parquet(handle)
    item_ids, cold = ids_frame["item_id"], ids_frame["cold"].to_numpy().astype(bool)
    first_seen = ids_frame["first_seen"].cast(pl.Date)
    delta_vectors = np.zeros((0, dim), dtype=np.float32)
    superseded = np.zeros(0, dtype=np.int64)
    delta_path = directory / DELTA_DIR / DELTA_FILE
    if delta_path.exists():
        delta = read_embeddings(delta_path, id_column="item_id")
        delta_vectors = delta.vectors
        superseded = np.flatnonzero(item_ids.is_in(delta.ids.implode()).to_numpy())
        item_ids = pl.concat([item_ids, delta.ids])
        cold = np.concatenate([cold, delta.cold])
        delta_first = delta.first_seen if delta.first_seen is not None else pl.Series([None] * len(delta), dtype=pl.Date)
        first_seen = pl.concat([first_seen, delta_first.rename("first_seen")])
    if main_vectors.shape != (int(extra["count"]), dim):
        raise IncompatibleModel(
            f"vectors.npy has shape {main_vectors.shape}, the manifest says ({extra['count']}, {dim})",
            path=directory,
            hint="the index is damaged; rebuild it",
        )
    return LoadedIndex(
        directory=directory,
        manifest=manifest,
        dim=dim,
        model_fingerprint=extra.get("model_fingerprint"),
        item_ids=item_ids.rename("item_id"),
        cold=cold,
        first_seen=first_seen.to_numpy().astype("datetime64[D]"),
        main_count=int(extra["count"]),
        main_vectors=main_vectors,
        delta_vectors=delta_vectors,
        superseded=superseded,
        forest_path=directory / ITEMS_FILE,
    )


def run_index(
    *,
    out: str | Path,
    embeddings: str | Path | None = None,
    add: str | Path | None = None,
    trees: int = DEFAULT_TREES,
    on_disk_build: bool = False,
    fold_delta: bool = True,
    previous: str | Path | None = None,
) -> IndexResult:
    """The `coldrec index` command: build from --embeddings, or add --add items to the delta."""
    if (embeddings is None) == (add is None):
        raise UsageError(
            "pass exactly one of --embeddings (full build) and --add (delta)",
            hint="coldrec index --embeddings EMB.parquet --out DIR, or --add NEW.parquet --out DIR",
        )
    if add is not None:
        return add_to_index(add, out)
    return build_index(embeddings, out, trees=trees, on_disk_build=on_disk_build, fold_delta=fold_delta, previous=previous)

