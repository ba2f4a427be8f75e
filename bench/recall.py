"""Benchmark: Annoy at coldrec's defaults vs exact search, on synthetic unit vectors.

For each catalogue size: build the index with `coldrec.index.build_index` (the real code
path: embeddings Parquet -> items.ann + vectors.npy), then answer the same queries with the
exact searcher and the Annoy searcher. Reports recall@k of Annoy against exact, queries/s of
each, build time and index size, and the catalogue size where the two cross over.

Two kinds of vectors: `uniform` (directions drawn uniformly: no structure, the hardest case
for trees) and `clustered` (1000 topic centres plus noise, closer to learned embeddings).

    .venv/bin/python bench/recall.py                       # 100k, 10k queries, both kinds
    .venv/bin/python bench/recall.py --sizes 100000 1000000 --kinds uniform
    .venv/bin/python bench/recall.py --crossover 10000 30000 100000 300000 --queries 2000
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from coldrec import index as index_mod  # noqa: E402
from coldrec.embed import write_embeddings  # noqa: E402
from coldrec.index import AnnoySearcher, ExactSearcher, build_index, load_index  # noqa: E402


def unit_rows(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def make_vectors(kind: str, count: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((count, dim), dtype=np.float32)
    centres = unit_rows(rng.standard_normal((1000, dim)).astype(np.float32))
    for start in range(0, count, 262_144):
        stop = min(start + 262_144, count)
        noise = rng.standard_normal((stop - start, dim)).astype(np.float32)
        if kind == "uniform":
            out[start:stop] = unit_rows(noise)
        else:
            out[start:stop] = unit_rows(centres[rng.integers(0, 1000, stop - start)] + 0.06 * noise)
    return out


def make_queries(kind: str, items: np.ndarray, count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed + 1)
    noise = rng.standard_normal((count, items.shape[1])).astype(np.float32)
    if kind == "uniform":
        return unit_rows(noise)
    # Users near the catalogue's topics (a user likes what exists), not on top of one item.
    return unit_rows(items[rng.integers(0, len(items), count)] + 0.06 * noise)


def timed_search(searcher, queries: np.ndarray, k: int, batch: int = 4096) -> tuple[np.ndarray, float]:
    started = time.perf_counter()
    parts = [searcher.search(queries[s : s + batch], k)[0] for s in range(0, len(queries), batch)]
    return np.concatenate(parts), time.perf_counter() - started


def recall_at_k(approx: np.ndarray, exact: np.ndarray) -> float:
    hits = [len(np.intersect1d(a[a >= 0], e[e >= 0], assume_unique=True)) / max((e >= 0).sum(), 1) for a, e in zip(approx, exact)]
    return float(np.mean(hits))


def bench_size(kind: str, count: int, args: argparse.Namespace, workdir: Path, queries_count: int) -> dict:
    items = make_vectors(kind, count, args.dim, seed=count)
    queries = make_queries(kind, items, queries_count, seed=count)
    emb = workdir / f"{kind}_{count}.parquet"
    write_embeddings(emb, pl.Series("item_id", np.arange(count, dtype=np.int64)), items, np.zeros(count, dtype=bool), model_fingerprint="bench")
    out = workdir / f"index_{kind}_{count}"
    started = time.perf_counter()
    build_index(emb, out, trees=args.trees, threads=args.threads)
    build_s = time.perf_counter() - started
    loaded = load_index(out)
    exact = ExactSearcher(loaded.main_vectors, threads=args.threads)
    annoy = AnnoySearcher(loaded.forest(), threads=args.threads, search_k_factor=args.search_k_factor)
    exact.search(queries[:8], args.k)  # warm: torch import, page-in
    exact_ids, exact_s = timed_search(exact, queries, args.k)
    annoy.search(queries[:8], args.k)
    annoy_ids, annoy_s = timed_search(annoy, queries, args.k)
    row = {
        "kind": kind,
        "items": count,
        "queries": queries_count,
        "trees": args.trees,
        "search_k": args.k * args.trees * args.search_k_factor,
        f"recall@{args.k}": round(recall_at_k(annoy_ids, exact_ids), 4),
        "exact_qps": round(queries_count / exact_s, 1),
        "annoy_qps": round(queries_count / annoy_s, 1),
        "build_s": round(build_s, 1),
        "items_ann_mb": round((out / index_mod.ITEMS_FILE).stat().st_size / 2**20, 1),
        "vectors_npy_mb": round((out / index_mod.VECTORS_FILE).stat().st_size / 2**20, 1),
    }
    print(json.dumps(row), flush=True)
    del loaded, exact, annoy
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    emb.unlink()
    return row


def table(rows: list[dict], k: int) -> str:
    head = f"| vectors | items | trees | search_k | recall@{k} | exact q/s | Annoy q/s | build s | items.ann MB | vectors.npy MB |"
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        lines.append(
            f"| {r['kind']} | {r['items']:,} | {r['trees']} | {r['search_k']:,} | {r[f'recall@{k}']:.3f} | "
            f"{r['exact_qps']:,.0f} | {r['annoy_qps']:,.0f} | {r['build_s']} | {r['items_ann_mb']} | {r['vectors_npy_mb']} |"
        )
    return "\n".join(lines)


def crossover(rows: list[dict]) -> str:
    """Exact cost grows ~linearly with the catalogue; Annoy's at fixed search_k barely does."""
    notes = []
    for kind in sorted({r["kind"] for r in rows}):
        mine = sorted((r for r in rows if r["kind"] == kind), key=lambda r: r["items"])
        faster = [r["items"] for r in mine if r["annoy_qps"] > r["exact_qps"]]
        if faster:
            notes.append(f"{kind}: Annoy is faster from {faster[0]:,} items (measured)")
            continue
        largest = mine[-1]
        estimate = largest["items"] * largest["exact_qps"] / largest["annoy_qps"]
        notes.append(
            f"{kind}: exact is faster at every measured size; extrapolating exact q/s ∝ 1/items from "
            f"{largest['items']:,}, Annoy would win above ≈{estimate:,.0f} items"
        )
    return "\n".join(notes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    parser.add_argument("--kinds", nargs="+", default=["uniform", "clustered"], choices=["uniform", "clustered"])
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--crossover", type=int, nargs="*", default=[], help="extra sizes (fewer queries) to locate the crossover")
    parser.add_argument("--crossover-queries", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--trees", type=int, default=index_mod.DEFAULT_TREES)
    parser.add_argument("--search-k-factor", type=int, default=index_mod.DEFAULT_SEARCH_K_FACTOR)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="coldrec-bench-") as tmp:
        for kind in args.kinds:
            for count in args.sizes:
                rows.append(bench_size(kind, count, args, Path(tmp), args.queries))
            for count in args.crossover:
                rows.append(bench_size(kind, count, args, Path(tmp), args.crossover_queries))
    print()
    print(table(rows, args.k))
    print()
    print(crossover(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
