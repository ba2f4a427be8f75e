"""New items in a mixed catalogue: how the served prior of a new item trades their room in
each user's list against overall recall (model.new_item_prior).

    make demo
    .venv/bin/python bench/new_items.py demo_out --users sample_data/users.parquet --items sample_data/items.parquet

Reads a `coldrec prepare` output (`OUT/prep`) and a model trained on it (`OUT/model`), embeds
every user and every item as served (items without an id row are content only), ranks every
item for each user of the `--split` file (default `valid`: a choice made on it does not read
the test files), excluding the user's earlier clicks, and reports Recall@20/100, the share of
the positives of each train-popularity bucket (head / mid / tail by thirds of the train
clicks, new = no train sample) found in the top 100, and the share of the top 20/100 slots
taken by new items. The same weights are scored with the new items' prior value set to the
known items' mean (the value before model.new_item_prior), to several quantiles of the known
items' values (never below the mean, as trained), and with no prior at all.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from coldrec.model import load_model  # noqa: E402
from coldrec.train import set_threads  # noqa: E402

BUCKETS = ("head", "mid", "tail", "new")


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
    if not model.model.prior:
        sys.exit("the model has no popularity prior (model.popularity_prior 0): nothing to compare")
    users, items = pl.read_parquet(args.users), pl.read_parquet(args.items)
    U, _ = model.embed_users(users)
    V, new = model.embed_items(items)
    dim = model.config.model.dim
    column = dim + model.model.match_width  # the prior's column: sqrt(prior) x the item's value
    U = U / np.linalg.norm(U[:, :dim], axis=1, keepdims=True)  # cosine units: extra columns add as served
    V = V / np.linalg.norm(V[:, :dim], axis=1, keepdims=True)
    root = np.sqrt(model.model.prior)
    known = V[~new, column] / root  # the known items' prior values

    prep = args.out / "prep"
    train = pl.read_parquet(prep / "train.parquet")
    earlier = [train] if args.split == "valid" else [train, pl.read_parquet(prep / "valid.parquet")]
    clicked = pl.concat(earlier).filter(pl.col("label") == 1)
    truth = pl.read_parquet(prep / f"{args.split}.parquet").filter(pl.col("label") == 1)
    user_row = {u: r for r, u in enumerate(users["user_id"].to_list())}
    item_row = {i: r for r, i in enumerate(items["item_id"].to_list())}
    counts = np.zeros(len(item_row))
    for item, n in train.filter(pl.col("label") == 1).group_by("item_id").len("n").iter_rows():
        counts[item_row[item]] = n
    order = np.argsort(-counts)
    share = np.cumsum(counts[order]) / counts.sum()
    bucket = np.full(len(item_row), "tail", dtype=object)
    bucket[order[share <= 1 / 3]] = "head"
    bucket[order[(share > 1 / 3) & (share <= 2 / 3)]] = "mid"
    bucket[new] = "new"
    positives: dict[int, set[int]] = {}
    for user, item in truth.select("user_id", "item_id").iter_rows():
        positives.setdefault(user_row[user], set()).add(item_row[item])
    excluded: dict[int, list[int]] = {}
    for user, item in clicked.select("user_id", "item_id").iter_rows():
        if user in user_row:
            excluded.setdefault(user_row[user], []).append(item_row[item])
    rows = np.array(sorted(positives))
    n_new = sum(bucket[i] == "new" for found in positives.values() for i in found)
    print(f"{args.split}: {len(rows):,} users, {sum(map(len, positives.values())):,} positives, {n_new:,} on new items; "
          f"{int(new.sum()):,} of {len(new):,} items new; served new-item prior {float(model.model.item_popularity[0]):.3f}")
    print("| new items' prior | value | Recall@20 | Recall@100 | " + " | ".join(f"{b} found@100" for b in BUCKETS) + " | new share@20 | new share@100 |")
    print("|---|---|---|---|" + "---|" * (len(BUCKETS) + 2))

    def report(label: str, value: float | None) -> None:
        items_served = V.copy()
        if value is None:
            items_served[:, column] = 0.0
        else:
            items_served[new, column] = root * value
        scores = U[rows] @ items_served.T  # (users, items)
        for r, user in enumerate(rows):
            scores[r, excluded.get(user, [])] = -np.inf
        top = np.argsort(-scores, axis=1)[:, :100]
        recall = {k: np.mean([len(set(top[r, :k].tolist()) & positives[u]) / len(positives[u]) for r, u in enumerate(rows)]) for k in (20, 100)}
        found = {b: [0, 0] for b in BUCKETS}
        for r, user in enumerate(rows):
            listed = set(top[r].tolist())
            for item in positives[user]:
                found[bucket[item]][0] += item in listed
                found[bucket[item]][1] += 1
        cells = " | ".join(f"{hit / total:.3f}" if total else "–" for hit, total in found.values())
        shown = "–" if value is None else f"{value:.3f}"
        print(f"| {label} | {shown} | {recall[20]:.4f} | {recall[100]:.4f} | {cells} | {new[top[:, :20]].mean():.3f} | {new[top].mean():.3f} |")

    report("the known items' mean", float(known.mean()))
    for q in (float(x) for x in args.quantiles.split(",")):
        report(f"quantile {q:g}", max(float(np.quantile(known, q)), float(known.mean())))
    report("no prior", None)


if __name__ == "__main__":
    main()
