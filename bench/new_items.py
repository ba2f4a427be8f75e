"""New items in a mixed catalogue: how the served prior of a new item trades their room in
each user's list against overall recall (model.new_item_prior).

    make demo
    .venv/bin/python bench/new_items.py demo_out --users sample_data/users.parquet --items sample_data/items.parquet

Reads a `coldrec prepare` output (`OUT/prep`) and a model trained on it (`OUT/model`), embeds
every user and every item as served (items without an id row are content only), ranks every
item for each user of the `--split` file (default `valid`: a choice made on it does not read
the test files), excluding the user's earlier clicks, and scores the top 100 with `coldrec
evaluate`'s own metrics (`evaluate_frames` with the train samples): Recall@20/100, Recall@100
per train-popularity bucket (head / mid / tail, new = no train sample) and the share of the
top 20/100 slots taken by new items (its cold share). The same weights are scored with the
new items' prior value set to the known items' mean (the value before model.new_item_prior),
to several quantiles of the known items' values (never below the mean, as trained), and with
no prior at all.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from coldrec.evaluate import ITEM_BUCKETS as BUCKETS  # noqa: E402
from coldrec.evaluate import Recs, evaluate_frames  # noqa: E402
from coldrec.model import load_model  # noqa: E402
from coldrec.train import set_threads  # noqa: E402


def cosine_units(served: np.ndarray, dim: int) -> np.ndarray:
    """Served vectors rescaled so that their first `dim` columns (the tower output) are unit:
    the extra columns (match, prior, pads) then add to dot products in cosine units."""
    return served / np.linalg.norm(served[:, :dim], axis=1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="a directory with prep/ (coldrec prepare) and model/ (coldrec train)")
    parser.add_argument("--users", type=Path, required=True)
    parser.add_argument("--items", type=Path, required=True)
    parser.add_argument("--split", default="valid", help="the file of prep/ whose positives are ranked (default valid)")
    parser.add_argument("--quantiles", default="0.5,0.6,0.7,0.75,0.8,0.85,0.9")
    args = parser.parse_args()
    set_threads(1)
    model = load_model(args.out / "model")
    terms = model.model.terms
    if terms.get("prior") is None:
        sys.exit("the model has no popularity prior (model.popularity_prior 0): nothing to compare")
    users, items = pl.read_parquet(args.users), pl.read_parquet(args.items)
    dim = model.config.model.dim
    U = cosine_units(model.embed_users(users)[0], dim)  # extra columns add to dot products as served
    V, new = model.embed_items(items)
    V = cosine_units(V, dim)
    column = dim + (terms.match.width if terms.get("match") is not None else 0)  # the prior's column: sqrt(prior) x the item's value
    root = np.sqrt(terms.prior.weight)
    known = V[~new, column] / root  # the known items' prior values

    prep = args.out / "prep"
    train = pl.read_parquet(prep / "train.parquet")
    earlier = [train] if args.split == "valid" else [train, pl.read_parquet(prep / "valid.parquet")]
    clicked = pl.concat(earlier).filter(pl.col("label") == 1)
    truth = pl.read_parquet(prep / f"{args.split}.parquet")
    user_ids = np.sort(truth.filter(pl.col("label") == 1)["user_id"].unique().to_numpy())
    user_row = {u: r for r, u in enumerate(users["user_id"].to_list())}
    item_row = {i: r for r, i in enumerate(items["item_id"].to_list())}
    rows = np.array([user_row[u] for u in user_ids.tolist()])
    excluded = clicked.filter(pl.col("user_id").is_in(user_ids.tolist()))
    position = {u: p for p, u in enumerate(user_ids.tolist())}
    drop_rows = np.array([position[u] for u in excluded["user_id"].to_list()], dtype=np.int64)
    drop_cols = np.array([item_row[i] for i in excluded["item_id"].to_list()], dtype=np.int64)
    item_ids = items["item_id"].to_numpy()
    positives = truth.filter(pl.col("label") == 1).unique(["user_id", "item_id"])
    n_new = positives.join(train.select("item_id").unique(), on="item_id", how="anti").height
    print(f"{args.split}: {len(rows):,} users, {positives.height:,} positives, {n_new:,} on new items; "
          f"{int(new.sum()):,} of {len(new):,} items new; served new-item prior {float(terms.prior.item_popularity[0]):.3f}")
    print("| new items' prior | value | Recall@20 | Recall@100 | " + " | ".join(f"{b} Recall@100" for b in BUCKETS) + " | new share@20 | new share@100 |")
    print("|---|---|---|---|" + "---|" * (len(BUCKETS) + 2))

    def report(label: str, value: float | None) -> None:
        served = V.copy()
        if value is None:
            served[:, column] = 0.0
        else:
            served[new, column] = root * value
        scores = U[rows] @ served.T  # (users, items)
        scores[drop_rows, drop_cols] = -np.inf
        top = np.argsort(-scores, axis=1, kind="stable")[:, :100]  # (users, 100) best first
        recs = Recs(
            pl.DataFrame({
                "user_id": np.repeat(user_ids, top.shape[1]),
                "item_id": item_ids[top].ravel(),
                "position": np.tile(np.arange(1, top.shape[1] + 1, dtype=np.int32), len(user_ids)),
            }),
            pl.DataFrame({"user_id": user_ids}),
        )
        result = evaluate_frames(recs, truth.lazy(), ks=(20, 100), train=train.lazy())
        overall, buckets = result["overall"], {row["bucket"]: row for row in result["item_buckets"]}
        cells = " | ".join("–" if buckets[b]["recall@100"] is None else f"{buckets[b]['recall@100']:.3f}" for b in BUCKETS)
        shown = "–" if value is None else f"{value:.3f}"
        print(f"| {label} | {shown} | {overall['recall@20']:.4f} | {overall['recall@100']:.4f} | {cells} | "
              f"{overall['cold_share@20']:.3f} | {overall['cold_share@100']:.3f} |")

    report("the known items' mean", float(known.mean()))
    for q in (float(x) for x in args.quantiles.split(",")):
        report(f"quantile {q:g}", max(float(np.quantile(known, q)), float(known.mean())))
    report("no prior", None)


if __name__ == "__main__":
    main()
