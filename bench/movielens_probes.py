"""Serving-side probes on MovieLens-100K validation splits (never the outer test files).

    .venv/bin/python bench/movielens_probes.py ensemble --first-seed 0 --seeds 1 --models 3
    .venv/bin/python bench/movielens_probes.py views --first-seed 0 --seeds 1 --models 2
    .venv/bin/python bench/movielens_probes.py neighbours --first-seed 0 --seeds 3 --models 1
    .venv/bin/python bench/movielens_probes.py lowrank --first-seed 0 --seeds 3 --models 1
    (also usermatch, recency, coldprior, contentpop, coldalltime, exposureprior, imputedprofile,
    contentrecent, shrinkprofile, itemtowers: see below)

For each inner split of `bench/movielens.py --select` (outer split seed S, inner split seed
S + 1000), trains coldrec `--models` times with the defaults and training seeds S, S + 100,
S + 200, ..., then prints Recall@20 / NDCG@20 per scenario for:

- `ensemble`: each model alone, and the mean of the first k models' scores (k = 1..models);
  with unit vectors this is one model serving the concatenated vectors scaled by 1/sqrt(k).
- `views`: each model served with user = normalise(full + b_u x content-only view) and
  item = normalise(full + b_i x content-only view), for b_u in {0, 0.5, 1}, b_i in {0, 0.5}.
- `neighbours`: items without a train sample (the held-out ones) served as normalise(content
  view + b x mean full vector of their k nearest warm items, nearest by the cosine of the
  content views), for k in {10, 50} and b in {0.5, 1, 2}; warm items and users as usual.
- `lowrank` (trained with `model.profile_match` 0.025 served exactly, no popularity
  prior): the profile match projected onto the top r principal directions of the items'
  values, r in {4, 8, 12, 16, 24}, against the exact match and no match.
- `usermatch` (same training): plus w x (the item's audience profile . the user's content
  values), for every user or for users without a profile only, w in {0.0025 .. 0.025}.
- `recency` (trained with the match through 24 directions, no prior): plus w x log(1 +
  the item's clicks in the last 14 / 30 days of train + valid), w in {0.02 .. 0.2}, and
  that recent popularity alone; also reports the warm test split into known and new users.
- `coldprior` (the defaults): the popularity prior of users without a profile raised from
  0.1 to w x the item's value, w in {0.15, 0.2, 0.3, 0.5}.
- `contentpop` (the defaults, cold-item scenario only): plus w x a popularity predicted
  from the item's content (ridge regression of log(1 + train clicks) or of log(1 + train
  exposures) on genres, year and decade, fitted on the warm items), w in {0.05 .. 0.4}; and
  the held-out items' real click counts in the test ("oracle", a ceiling, never servable).
- `coldalltime` (the defaults): users without a profile also get w x log((c + 1) / (c_max +
  1)) over ALL train clicks, with or without their 30-day prior, w in {0.03 .. 0.2}.
- `exposureprior` (the defaults): the popularity prior counted over the last 30 / 60 days
  of clicks, of exposures, or of both added, instead of 30 days of clicks.
- `imputedprofile` (the defaults): users without a profile get a profile match from an
  imputed profile, lam x the mean served match of the known users weighted by exp(beta x
  shared demographics), or of the known users sharing each content value (what
  `model.profile_impute` builds), or of every known user.
- `contentrecent` (the defaults, with imputed profiles; cold-item scenario only): new items'
  popularity prior predicted from their content (ridge regression of the known items' served
  prior values on genres, year and decade) instead of the known items' mean, the deviation
  times w in {0.5, 1, 2, 4}; also split by whether the clicking user has a train sample.
- `shrinkprofile` (the defaults, with imputed profiles): every user's served profile shrunk
  towards their imputed one, w x own + (1 - w) x lam x imputed with w = clicks / (clicks +
  n), n in {1, 3, 10, 30} clicks' worth, lam in {1, 0.5} (so users without a click get lam
  x their imputed profile: at lam 1 exactly as served).
- `itemtowers` (the defaults): the model alone; with an independent second model (a seed
  ensemble of two: concatenated vectors / sqrt 2); and with a second item tower trained
  against the first model's frozen user tower (warm start from it, item tower re-drawn),
  alone and averaged with the first (item vectors normalise(v1 + b x v2), b in {0.5, 1}),
  which ensembles the item side without widening the vectors.

The probes before `contentrecent` train with `model.profile_impute` 0, as they were run
(round 10 added it).

These answer "would a serving-side change help?" before any of them is built into coldrec;
docs/benchmarks.md (selection log, rounds 7 to 11) has the figures.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import movielens as ml  # noqa: E402

from coldrec.model import load_model  # noqa: E402
from coldrec.train import run_train, set_threads  # noqa: E402


SCENARIOS_PLUS = (*ml.SCENARIOS, *ml.WARM_PARTS)


def line(seed: int, label: str, metrics: dict) -> None:
    print(f"seed {seed} {label}: " + " ".join(f"{s} {metrics[s]['recall@20']:.4f}/{metrics[s]['ndcg@20']:.4f}" for s in (*SCENARIOS_PLUS, *ml.COLD_ITEM_PARTS) if s in metrics), flush=True)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def cosine_units(served: np.ndarray, dim: int) -> np.ndarray:
    """Served vectors rescaled so that their first `dim` columns (the tower output) are unit:
    the extra columns (match, prior, pads) then add to dot products in cosine units."""
    return served / np.linalg.norm(served[:, :dim], axis=1, keepdims=True)


def per_item(counts: pl.DataFrame, items: pl.DataFrame, column: str = "n") -> np.ndarray:
    """(items,) float64: `counts[column]` by item_id, aligned to the items table's rows (0
    for an item without a row in `counts`)."""
    got = dict(zip(counts["item_id"].to_list(), counts[column].to_list()))
    return np.array([got.get(int(i), 0) for i in items["item_id"].to_list()], dtype=np.float64)


def content_design(items) -> np.ndarray:
    """(items, features): genres multi-hot, standardised release year and its square, decade
    one-hot, a missing-year flag and an intercept (the contentpop probe's ridge design)."""
    genres = sorted({g for row in items["genres"].to_list() for g in (row or [])})
    rows = items["genres"].to_list()
    G = np.array([[g in (row or []) for g in genres] for row in rows], dtype=np.float64)
    year = items["release_year"].to_numpy().astype(np.float64)
    missing = np.isnan(year)
    z = np.where(missing, 0.0, (year - np.nanmean(year)) / np.nanstd(year))
    decades = sorted({d for d in items["release_decade"].to_list() if d})
    D = np.array([[d == x for d in decades] for x in items["release_decade"].to_list()], dtype=np.float64)
    return np.column_stack([G, z, z**2, missing, D, np.ones(len(rows))])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("probe", choices=("ensemble", "views", "neighbours", "lowrank", "usermatch", "recency", "coldprior", "contentpop", "coldalltime", "exposureprior", "imputedprofile", "shrinkprofile", "contentrecent", "itemtowers"))
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--models", type=int, default=3)
    parser.add_argument("--movielens", help="as in bench/movielens.py")
    args = parser.parse_args()
    set_threads(1)
    data = ml.ensure_movielens(args.movielens)
    users, items = ml.content_tables(data)
    item_index = {i: r for r, i in enumerate(items["item_id"].to_list())}  # the neighbours probe's warm/cold rows
    scorer = ml.vector_scorer(users, items)
    with tempfile.TemporaryDirectory(prefix="coldrec-probes-") as tmp:
        work = Path(tmp)
        users.write_parquet(work / "users.parquet")
        items.write_parquet(work / "items.parquet")
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            outer, _ = ml.prepare_split(data, work / f"s{seed}" / "prep", seed)
            split, _ = ml.prepare_split(ml.inner_logs(outer, work / f"s{seed}" / "logs"), work / f"s{seed}" / "inner", seed + 1000)
            vectors = []
            for k in range(args.models):
                out = work / f"s{seed}" / f"model{k}"
                overrides = {"training.seed": seed + 100 * k}
                if args.probe in ("lowrank", "usermatch", "recency"):  # as run in round 9: no prior; lowrank, usermatch: the exact match
                    overrides.update({"model.profile_match": 0.025, "model.popularity_prior": 0.0})
                    overrides["model.profile_match_rank"] = 24 if args.probe == "recency" else 0
                if args.probe not in ("contentrecent", "shrinkprofile", "itemtowers"):
                    overrides["model.profile_impute"] = 0.0  # the probes before these ran before model.profile_impute
                run_train(split.dir, work / "users.parquet", work / "items.parquet", out, overrides=overrides)
                model = load_model(out)
                views = {
                    "user": (model.embed_users(users)[0], model.embed_users(users, cold=True)[0]),
                    "item": (model.embed_items(items)[0], model.embed_items(items, cold=True)[0]),
                }
                vectors.append(views)
                if args.probe == "ensemble":
                    line(seed, f"model {k}", ml.evaluate_all(split, scorer(views["user"][0], views["item"][0])))
                    U = np.concatenate([v["user"][0] for v in vectors], axis=1) / np.sqrt(k + 1)
                    V = np.concatenate([v["item"][0] for v in vectors], axis=1) / np.sqrt(k + 1)
                    line(seed, f"ensemble of {k + 1}", ml.evaluate_all(split, scorer(U, V)))
                elif args.probe == "neighbours":
                    (uf, _), (vf, vc) = views["user"], views["item"]
                    line(seed, f"model {k} as served", ml.evaluate_all(split, scorer(uf, vf)))
                    warm = np.array([item_index[int(i)] for i in split.warm_items])
                    cold = np.setdiff1d(np.arange(len(item_index)), warm)
                    similarity = vc[cold] @ vc[warm].T  # (cold, warm)
                    for n in (10, 50):
                        nearest = np.argpartition(-similarity, n - 1, axis=1)[:, :n]  # (cold, n)
                        neighbour_mean = vf[warm][nearest].mean(axis=1)  # (cold, dim)
                        for b in (0.5, 1.0, 2.0):
                            V = vf.copy()
                            V[cold] = unit(vc[cold] + b * neighbour_mean)
                            line(seed, f"model {k} cold items + {b} x mean of {n} nearest warm", ml.evaluate_all(split, scorer(uf, V), ("cold_item",)))
                elif args.probe == "lowrank":
                    (uf, _), (vf, _) = views["user"], views["item"]
                    dim, width = model.config.model.dim, model.model.match_width
                    line(seed, f"model {k} exact match ({width} slots)", ml.evaluate_all(split, scorer(uf, vf)))
                    line(seed, f"model {k} no match", ml.evaluate_all(split, scorer(uf[:, :dim], vf[:, :dim])))
                    values = vf[:, dim : dim + width]  # (items, width): c * values / norm
                    _, eigvecs = np.linalg.eigh(values.T @ values)
                    for r in (4, 8, 12, 16, 24):
                        basis = eigvecs[:, ::-1][:, :r]  # (width, r) top-r eigenvectors
                        U = np.concatenate([uf[:, :dim], uf[:, dim : dim + width] @ basis], axis=1)
                        V = np.concatenate([vf[:, :dim], values @ basis], axis=1)
                        line(seed, f"model {k} match rank {r}", ml.evaluate_all(split, scorer(U, V)))
                elif args.probe == "recency":
                    (uf, _), (vf, _) = views["user"], views["item"]
                    dim = model.config.model.dim
                    base_u, base_v = cosine_units(uf, dim), cosine_units(vf, dim)
                    history = pl.concat([split.train, split.frames["valid"]]).filter(pl.col("label") == 1)
                    end = history["ts"].max()
                    line(seed, f"model {k} as served", ml.evaluate_all(split, scorer(uf, vf), SCENARIOS_PLUS))
                    for days in (14, 30):
                        counts = history.filter(pl.col("ts") > end - pl.duration(days=days)).group_by("item_id").len("n")
                        bias = np.log1p(per_item(counts, items))[:, None]  # (items, 1)
                        ones = np.ones((len(base_u), 1))
                        line(seed, f"recent popularity {days}d alone", ml.evaluate_all(split, scorer(ones, bias), SCENARIOS_PLUS))
                        for w in (0.02, 0.05, 0.1, 0.2):
                            U = np.concatenate([base_u, w * ones], axis=1)
                            V = np.concatenate([base_v, bias], axis=1)
                            line(seed, f"model {k} + {w} x log1p(clicks last {days}d)", ml.evaluate_all(split, scorer(U, V), SCENARIOS_PLUS))
                elif args.probe == "coldprior":
                    (uf, _), (vf, _) = views["user"], views["item"]
                    cold_users = model.embed_users(users)[1]
                    dim, column, prior = model.config.model.dim, model.config.model.dim + model.model.match_width, model.model.prior
                    base_u, base_v = cosine_units(uf, dim), cosine_units(vf, dim)  # prior column: sqrt(prior), sqrt(prior) * r_v
                    line(seed, f"model {k} as served", ml.evaluate_all(split, scorer(base_u, base_v), SCENARIOS_PLUS))
                    for w in (0.15, 0.2, 0.3, 0.5):
                        U = base_u.copy()
                        U[cold_users, column] = w / prior**0.5  # cold users: w x r_v
                        line(seed, f"model {k} cold users' prior {w}", ml.evaluate_all(split, scorer(U, base_v), SCENARIOS_PLUS))
                elif args.probe == "contentpop":
                    (uf, _), (vf, _) = views["user"], views["item"]
                    dim = model.config.model.dim
                    base_u, base_v = cosine_units(uf, dim), cosine_units(vf, dim)
                    warm = np.array([item_index[int(i)] for i in split.warm_items])
                    X = content_design(items)  # (items, features)
                    clicks = split.train.filter(pl.col("label") == 1)
                    targets = {
                        "clicks": clicks.group_by("item_id").len("n"),
                        "exposures": split.train.group_by("item_id").len("n"),
                        "oracle": split.frames["test_cold_item"].filter(pl.col("label") == 1).group_by("item_id").len("n"),
                    }
                    line(seed, f"model {k} as served", ml.evaluate_all(split, scorer(uf, vf), ("cold_item",)))
                    ones = np.ones((len(base_u), 1))
                    for name, counts in targets.items():
                        y = np.log1p(per_item(counts, items))
                        if name == "oracle":
                            pred = y
                        else:
                            for alpha in (1.0, 10.0):
                                Xw = X[warm]
                                coef = np.linalg.solve(Xw.T @ Xw + alpha * np.eye(X.shape[1]), Xw.T @ (y[warm] - y[warm].mean()))
                                pred = X @ coef
                                fit = np.corrcoef(pred[warm], y[warm])[0, 1]
                                line(seed, f"content {name} (ridge {alpha}, r={fit:.2f}) alone", ml.evaluate_all(split, scorer(ones, pred[:, None]), ("cold_item",)))
                                for w in (0.05, 0.1, 0.2, 0.4):
                                    U = np.concatenate([base_u, np.sqrt(w) * ones], axis=1)
                                    V = np.concatenate([base_v, np.sqrt(w) * pred[:, None]], axis=1)
                                    line(seed, f"model {k} + {w} x content {name} (ridge {alpha})", ml.evaluate_all(split, scorer(U, V), ("cold_item",)))
                            continue
                        line(seed, f"{name} alone", ml.evaluate_all(split, scorer(ones, pred[:, None]), ("cold_item",)))
                        for w in (0.1, 0.2):
                            U = np.concatenate([base_u, np.sqrt(w) * ones], axis=1)
                            V = np.concatenate([base_v, np.sqrt(w) * pred[:, None]], axis=1)
                            line(seed, f"model {k} + {w} x {name}", ml.evaluate_all(split, scorer(U, V), ("cold_item",)))
                elif args.probe == "contentrecent":
                    (uf, _), (vf, _) = views["user"], views["item"]
                    dim, column, prior = model.config.model.dim, model.config.model.dim + model.model.match_width, model.model.prior
                    base_u, base_v = cosine_units(uf, dim), cosine_units(vf, dim)
                    warm = np.array([item_index[int(i)] for i in split.warm_items])
                    cold = np.setdiff1d(np.arange(len(item_index)), warm)
                    r = base_v[:, column] / np.sqrt(prior)  # the served prior value (new items: the known items' mean)
                    X = content_design(items)

                    def show(label: str, V: np.ndarray) -> None:  # also split by whether the clicking user has a train sample
                        line(seed, label, ml.evaluate_all(split, scorer(base_u, V), ("cold_item", *ml.COLD_ITEM_PARTS)))

                    show(f"model {k} as served", base_v)
                    for alpha in (1.0, 10.0):
                        Xw = X[warm]
                        coef = np.linalg.solve(Xw.T @ Xw + alpha * np.eye(X.shape[1]), Xw.T @ (r[warm] - r[warm].mean()))
                        pred = X @ coef  # centred on the known items' mean
                        fit = np.corrcoef(pred[warm], r[warm])[0, 1]
                        for w in (0.5, 1.0, 2.0, 4.0):
                            V = base_v.copy()
                            V[cold, column] = np.sqrt(prior) * (r[warm].mean() + w * pred[cold])
                            show(f"model {k} new items' prior from content x{w} (ridge {alpha}, r={fit:.2f})", V)
                elif args.probe == "coldalltime":
                    (uf, _), (vf, _) = views["user"], views["item"]
                    cold_users = model.embed_users(users)[1]
                    dim, column = model.config.model.dim, model.config.model.dim + model.model.match_width
                    base_u, base_v = cosine_units(uf, dim), cosine_units(vf, dim)
                    counts = split.train.filter(pl.col("label") == 1).group_by("item_id").len("n")
                    c = per_item(counts, items)
                    alltime = np.log((c + 1) / (c.max() + 1))[:, None]
                    line(seed, f"model {k} as served", ml.evaluate_all(split, scorer(base_u, base_v), ("cold_user", "warm_new")))
                    for keep in (1.0, 0.0):
                        for w in (0.03, 0.05, 0.1, 0.2):
                            U = np.concatenate([base_u, np.sqrt(w) * cold_users[:, None].astype(np.float64)], axis=1)
                            U[cold_users, column] *= keep
                            V = np.concatenate([base_v, np.sqrt(w) * alltime], axis=1)
                            line(seed, f"model {k} cold users + {w} x all-time prior, recent x{keep}", ml.evaluate_all(split, scorer(U, V), ("cold_user", "warm_new")))
                elif args.probe == "exposureprior":
                    (uf, _), (vf, _) = views["user"], views["item"]
                    dim, column = model.config.model.dim, model.config.model.dim + model.model.match_width
                    base_u, base_v = cosine_units(uf, dim), cosine_units(vf, dim)
                    prior = model.model.prior
                    warm_rows = np.array([item_index[int(i)] for i in split.warm_items])
                    end = split.train["ts"].max()
                    line(seed, f"model {k} as served", ml.evaluate_all(split, scorer(base_u, base_v), SCENARIOS_PLUS))
                    for days in (30, 60):
                        for what in ("clicks", "exposures", "mix"):
                            rows = split.train.filter(pl.col("ts") > end - pl.duration(days=days))
                            if what == "clicks":
                                rows = rows.filter(pl.col("label") == 1)
                            counts = rows.group_by("item_id").agg(pl.len().alias("n"), pl.col("label").sum().alias("c"))
                            c = per_item(counts.with_columns(mix=pl.col("n") + pl.col("c")), items, "mix" if what == "mix" else "n")
                            r = np.log((c + 1) / (c[warm_rows].max() + 1))
                            mask = np.ones(len(r), dtype=bool)
                            mask[warm_rows] = False
                            r[mask] = r[warm_rows].mean()
                            V = base_v.copy()
                            V[:, column] = np.sqrt(prior) * r
                            line(seed, f"model {k} prior over {what}, {days} days", ml.evaluate_all(split, scorer(base_u, V), SCENARIOS_PLUS))
                elif args.probe == "imputedprofile":
                    import torch

                    from coldrec.features import encode_for_serving, profile_edges, profile_matrix

                    (uf, _), (vf, _) = views["user"], views["item"]
                    no_profile = model.embed_users(users)[1]  # (users,) no id row
                    dim, width = model.config.model.dim, model.model.match_width
                    base_u, base_v = cosine_units(uf, dim), cosine_units(vf, dim)
                    known = np.flatnonzero(~no_profile)
                    matched = base_u[known, dim : dim + width]  # (known users, width): c x profile B
                    line(seed, f"model {k} as served", ml.evaluate_all(split, scorer(base_u, base_v), SCENARIOS_PLUS))

                    def serve(label: str, imputed: np.ndarray) -> None:
                        U = base_u.copy()
                        U[no_profile, dim : dim + width] = imputed[no_profile]
                        line(seed, f"model {k} imputed profile {label}", ml.evaluate_all(split, scorer(U, base_v), SCENARIOS_PLUS))

                    # First run: demographic neighbours (beta 0 = every known user alike).
                    shared = ml.shared_demographics(users, known)  # (users, known users)
                    for beta in (0.0, 1.0, 2.0):
                        neighbours = np.exp(beta * shared)
                        imputed = (neighbours / neighbours.sum(1, keepdims=True)) @ matched  # (users, width)
                        for lam in (0.5, 1.0, 2.0):
                            serve(f"beta {beta} x{lam}", lam * imputed)
                    # Second run: per content value (what model.profile_impute builds), and the mean.
                    user_spec = model.spec.side("user")
                    user_inputs, _ = encode_for_serving(user_spec, users, stats=None, cold=False, path="users", stats_path="stats")
                    with torch.inference_mode():
                        values = profile_matrix(user_spec, user_inputs, profile_edges(user_spec, user_inputs)).numpy().astype(np.float64)  # (users, W_u)
                    per_value = (values[known].T @ matched) / np.maximum(values[known].sum(0), 1e-9)[:, None]  # (W_u, width)
                    by_value = (values @ per_value) / values.sum(1, keepdims=True)  # (users, width); rows sum to the column groups
                    for lam in (2.0, 3.0, 4.0):
                        serve(f"by value x{lam}", lam * by_value)
                        serve(f"mean x{lam}", np.broadcast_to(lam * matched.mean(0), by_value.shape))
                elif args.probe == "shrinkprofile":
                    import torch

                    from coldrec.features import encode_for_serving
                    from coldrec.model import PROFILE_MATCH_CLIP

                    (uf, _), (vf, _) = views["user"], views["item"]
                    dim, width, net = model.config.model.dim, model.model.match_width, model.model
                    base_u, base_v = cosine_units(uf, dim), cosine_units(vf, dim)
                    user_inputs, _ = encode_for_serving(model.spec.side("user"), users, stats=None, cold=False, path="users", stats_path="stats")
                    with torch.inference_mode():
                        c = net.match**0.5
                        own = net.user.profile(user_inputs).clamp(-PROFILE_MATCH_CLIP, PROFILE_MATCH_CLIP) @ net.match_basis * c  # (users, width)
                        imputed = net._imputed_profile(user_inputs) * c  # (users, width)
                        clicks = net.user.profile_count.index_select(0, user_inputs["id"]).double().numpy()  # (users,)
                    own, imputed = own.double().numpy(), imputed.double().numpy()
                    assert np.allclose(np.where(clicks[:, None] > 0, own, imputed), base_u[:, dim : dim + width], atol=1e-4)
                    line(seed, f"model {k} as served", ml.evaluate_all(split, scorer(base_u, base_v), SCENARIOS_PLUS))
                    for n in (1.0, 3.0, 10.0, 30.0):
                        w = (clicks / (clicks + n))[:, None]  # the user's own share
                        for lam in (1.0, 0.5):
                            U = base_u.copy()
                            U[:, dim : dim + width] = w * own + (1.0 - w) * lam * imputed
                            line(seed, f"model {k} profile shrunk to imputed x{lam}, {n:g} clicks' worth", ml.evaluate_all(split, scorer(U, base_v), SCENARIOS_PLUS))
                elif args.probe == "itemtowers":
                    import torch

                    import coldrec.train as coldrec_train

                    (uf, _), (vf, _) = views["user"], views["item"]
                    dim = model.config.model.dim
                    base_u, base_v = cosine_units(uf, dim), cosine_units(vf, dim)
                    line(seed, f"model {k} as served", ml.evaluate_all(split, scorer(base_u, base_v), SCENARIOS_PLUS))
                    # An independent second model: the seed ensemble (concatenated vectors / sqrt 2).
                    other = work / f"s{seed}" / f"model{k}_b"
                    run_train(split.dir, work / "users.parquet", work / "items.parquet", other, overrides={"training.seed": seed + 100 * k + 50})
                    second = load_model(other)
                    ub, vb = second.embed_users(users)[0], second.embed_items(items)[0]
                    line(seed, f"model {k} + an independent model (seed ensemble)", ml.evaluate_all(split, scorer(np.concatenate([uf, ub], 1) / 2**0.5, np.concatenate([vf, vb], 1) / 2**0.5), SCENARIOS_PLUS))
                    # A second item tower trained against this model's frozen user tower.
                    original = coldrec_train.transfer_weights

                    def frozen_users(net, spec, old, loss, _seed=seed + 100 * k + 50):
                        moved = original(net, spec, old, loss)
                        torch.manual_seed(_seed)
                        for module in net.item.modules():
                            if module is not net.item and hasattr(module, "reset_parameters"):
                                module.reset_parameters()
                        for parameter in net.user.parameters():
                            parameter.requires_grad_(False)
                        return moved

                    coldrec_train.transfer_weights = frozen_users
                    try:
                        towers = work / f"s{seed}" / f"model{k}_items"
                        run_train(split.dir, work / "users.parquet", work / "items.parquet", towers, init_from=out, overrides={"training.seed": seed + 100 * k + 50})
                    finally:
                        coldrec_train.transfer_weights = original
                    second_items = load_model(towers)
                    assert np.allclose(second_items.embed_users(users)[0], uf, atol=1e-5)  # the user tower is this model's
                    vc = cosine_units(second_items.embed_items(items)[0], dim)
                    line(seed, f"model {k} users, second item tower alone", ml.evaluate_all(split, scorer(base_u, vc), SCENARIOS_PLUS))
                    for b in (0.5, 1.0):
                        V = base_v.copy()
                        V[:, :dim] = unit(base_v[:, :dim] + b * vc[:, :dim])
                        line(seed, f"model {k} users, item towers averaged (second x{b})", ml.evaluate_all(split, scorer(base_u, V), SCENARIOS_PLUS))
                elif args.probe == "usermatch":
                    import torch

                    from coldrec.features import encode_for_serving, profile_edges, profile_matrix

                    (uf, _), (vf, _) = views["user"], views["item"]
                    cold_users = model.embed_users(users)[1]
                    user_spec, item_spec = model.spec.side("user"), model.spec.side("item")
                    user_inputs, _ = encode_for_serving(user_spec, users, stats=None, cold=False, path="users", stats_path="stats")
                    item_inputs, _ = encode_for_serving(item_spec, items, stats=None, cold=False, path="items", stats_path="stats")
                    with torch.inference_mode():
                        values = profile_matrix(user_spec, user_inputs, profile_edges(user_spec, user_inputs)).numpy()  # (users, W)
                        audience = model.model.item.profile(item_inputs).numpy()  # (items, W); 0 for items without a train click
                    dim = model.config.model.dim
                    base_u, base_v = cosine_units(uf, dim), cosine_units(vf, dim)
                    line(seed, f"model {k} as served", ml.evaluate_all(split, scorer(uf, vf)))
                    for w in (0.0025, 0.005, 0.01, 0.025):
                        for scope in ("all", "cold"):
                            vals = values if scope == "all" else values * cold_users[:, None]
                            U = np.concatenate([base_u, np.sqrt(w) * vals], axis=1)
                            V = np.concatenate([base_v, np.sqrt(w) * audience], axis=1)
                            line(seed, f"model {k} user match {w} {scope}", ml.evaluate_all(split, scorer(U, V)))
                else:
                    (uf, uc), (vf, vc) = views["user"], views["item"]
                    for bu in (0.0, 0.5, 1.0):
                        for bi in (0.0, 0.5):
                            line(seed, f"model {k} user+{bu}xcontent item+{bi}xcontent", ml.evaluate_all(split, scorer(unit(uf + bu * uc), unit(vf + bi * vc))))


if __name__ == "__main__":
    main()
