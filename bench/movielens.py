"""MovieLens-100K: coldrec's defaults against popularity and LightFM, warm / cold user / cold item.

    .venv/bin/python bench/movielens.py [--seeds 3] [--movielens PATH] [--quick]
    .venv/bin/python bench/movielens.py --select [--seeds 2]     # selection on validation only

Protocol (docs/benchmarks.md, "MovieLens-100K"):
1. Data: `--movielens PATH` (a GroupLens/RecBole ml-100k folder, or a directory already
   written by `coldrec datasets movielens`); otherwise the recbole==1.2.1 wheel is fetched
   with `pip download` into bench/data/ and converted with `coldrec datasets movielens`.
   Every rating is an exposure, rating >= 4 a click. The item title is left out for every
   method (it is display text; LightFM gets exactly the features coldrec gets).
2. One split per seed for every method, made by `coldrec prepare` itself:
   --holdout-items 0.2 --holdout-users 0.1 --valid-fraction 0.2 --seed S. Rows of held-out
   items / users at any time are the cold tests; the last 20% of the time range is cut in
   half: valid (coldrec's early stopping) then test_warm. Every method trains on train only.
3. Candidates: cold-item scenario ranks among the held-out items only; warm and cold-user
   scenarios rank among the warm items (items with a train sample), excluding the user's
   positives before the warm-test cut (train + valid). Positives are label-1 rows; metrics
   are coldrec.evaluate's own (per user with a positive, averaged).
4. Methods: coldrec with its DEFAULT TrainConfig (one model for all three scenarios),
   popularity (train clicks; cold items by the mean popularity of their genres), the same
   over the last 30 days of train only (a trending list), demographic neighbours (the
   train clicks of users weighted by the age group, gender and occupation they share with
   the user: warm and cold users only), LightFM hybrid (WARP, 64 dims, identity + the same
   content features), LightFM without features (warm and cold items impossible: warm only).
`--select` carves a second, inner split out of each seed's train part (the same prepare
options on train's rows, seed + 1000) and scores candidate configurations on it, and the
demographic neighbours with `--neighbours`; the test files are never read in that mode.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from coldrec import log  # noqa: E402
from coldrec.evaluate import Recs, evaluate_frames  # noqa: E402
from coldrec.prepare import PrepareConfig, run_prepare  # noqa: E402

BENCH = ROOT / "bench"
DATA = BENCH / "data"
OUT = BENCH / "out"
PEER_VENV = BENCH / ".venv-peers"
SCENARIOS = ("warm", "cold_user", "cold_item")
# The warm test is a time cut, so it also holds users whose first sample falls after the cut
# (about half of its ~120 users): they have no id row and are served from content, like cold
# users. Reported apart (never in the targets): "warm_known" = users with a train sample.
WARM_PARTS = ("warm_known", "warm_new")
# The cold-item test split the same way, by whether the clicking user has a train sample.
COLD_ITEM_PARTS = ("cold_item_known", "cold_item_new")
METRICS = ("recall@20", "ndcg@20", "recall@100")
KS = (20, 100)
SPLIT = dict(holdout_items=0.2, holdout_users=0.1, valid_fraction=0.2)
LIGHTFM = dict(components=64, lr=0.05, epochs=30)


# --------------------------------------------------------------------------- data


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _sh(args: list[str], **kwargs) -> None:
    subprocess.run(args, check=True, **kwargs)


def ensure_movielens(path: str | None, engineered: bool = False) -> Path:
    """A directory in coldrec's log format (exposures/, clicks/, users.parquet, items.parquet):
    the content columns as distributed, or `coldrec datasets movielens --engineered`'s."""
    from coldrec.datasets import run_movielens

    if path is not None:
        path = Path(path)
        if (path / "exposures").is_dir() and (path / "items.parquet").is_file():
            return path
        out = DATA / ("ml-100k-coldrec-from-path" + ("-engineered" if engineered else ""))
        run_movielens(path, out, engineered=engineered)
        return out
    out = DATA / ("ml-100k-coldrec" if engineered else "ml-100k-raw")
    marker = "release_decade" if engineered else "release_date"
    if (out / "items.parquet").is_file() and marker in pl.read_parquet_schema(out / "items.parquet"):
        return out  # (a conversion from before the marker column is redone)
    raw = DATA / "recbole" / "recbole" / "dataset_example" / "ml-100k"
    if not raw.is_dir():
        DATA.mkdir(parents=True, exist_ok=True)
        wheels = DATA / "wheels"
        say("fetching MovieLens-100K from the recbole==1.2.1 wheel (pip download)")
        _sh([sys.executable, "-m", "pip", "download", "recbole==1.2.1", "--no-deps", "-d", str(wheels), "-q"])
        wheel = next(wheels.glob("recbole-1.2.1-*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            members = [m for m in archive.namelist() if m.startswith("recbole/dataset_example/ml-100k/")]
            archive.extractall(DATA / "recbole", members)
    run_movielens(raw, out, engineered=engineered)
    return out


def ensure_peer_python(given: str | None) -> Path:
    """The bench-only venv with LightFM (built once under bench/.venv-peers)."""
    if given:
        return Path(given)
    python = PEER_VENV / "bin" / "python"
    probe = [str(python), "-c", "import lightfm, numpy, scipy, matplotlib"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    say(f"building the LightFM peer venv in {PEER_VENV} (once; a few minutes)")
    _sh([shutil.which("python3") or sys.executable, "-m", "venv", "--clear", str(PEER_VENV)])
    pip = [str(python), "-m", "pip", "install", "-q"]
    _sh(pip + ["pip<25"])
    _sh(pip + ["numpy", "scipy", "cython", "setuptools", "wheel", "matplotlib"])
    _sh(pip + ["--no-build-isolation", "--no-use-pep517", "lightfm==1.17"])
    _sh(probe)
    return python


def content_tables(data: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    users = pl.read_parquet(data / "users.parquet")
    items = pl.read_parquet(data / "items.parquet").drop("title", strict=False)
    return users, items


# --------------------------------------------------------------------------- splits


class Split:
    """One prepared split: frames by name, warm / held-out item ids, seen positives."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        manifest = json.loads((directory / "manifest.json").read_text())
        self.frames = {p.stem: pl.read_parquet(p) for p in directory.glob("*.parquet")}
        self.train = self.frames["train"]
        self.held_items = np.array(manifest["extra"]["held_out_item_ids"], dtype=np.int64)
        self.warm_items = np.sort(self.train["item_id"].unique().to_numpy())
        seen = pl.concat([self.train, self.frames["valid"]]).filter(pl.col("label") == 1)
        self.seen = seen.select("user_id", "item_id").unique()

    def scenario(self, name: str) -> tuple[pl.DataFrame, np.ndarray, pl.DataFrame | None]:
        """(truth rows, candidate item ids, excluded (user, item) pairs)."""
        if name == "warm":
            return self.frames["test_warm"], self.warm_items, self.seen
        if name in WARM_PARTS or name in COLD_ITEM_PARTS:
            known = self.train.select("user_id").unique()
            whole, candidates, seen = self.scenario("warm" if name in WARM_PARTS else "cold_item")
            truth = whole.join(known, on="user_id", how="semi" if name.endswith("_known") else "anti")
            return truth, candidates, seen
        if name == "cold_user":
            return self.frames["test_cold_user"], self.warm_items, None
        return self.frames["test_cold_item"], self.held_items, None


def prepare_split(logs: Path, out: Path, seed: int) -> tuple[Split, float]:
    started = time.perf_counter()
    run_prepare(logs / "exposures", logs / "clicks", out, PrepareConfig(seed=seed, **SPLIT))
    return Split(out), time.perf_counter() - started


def inner_logs(split: Split, out: Path) -> Path:
    """train.parquet as logs again (exposure per row, click per positive), for the inner split."""
    train = split.train
    (out / "exposures").mkdir(parents=True, exist_ok=True)
    (out / "clicks").mkdir(parents=True, exist_ok=True)
    train.select("user_id", "item_id", "ts").write_parquet(out / "exposures" / "part-0.parquet")
    train.filter(pl.col("label") == 1).select("user_id", "item_id", "ts", "weight").write_parquet(out / "clicks" / "part-0.parquet")
    return out


# --------------------------------------------------------------------------- ranking

Scorer = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (user ids, item ids) -> (U, I) scores


def evaluate_scenario(split: Split, name: str, scorer: Scorer) -> dict[str, float]:
    truth, candidates, excluded = split.scenario(name)
    users = np.sort(truth.filter(pl.col("label") == 1)["user_id"].unique().to_numpy())
    scores = np.asarray(scorer(users, candidates), dtype=np.float64)  # (U, I)
    if excluded is not None:
        user_pos = {u: r for r, u in enumerate(users.tolist())}
        item_pos = {i: c for c, i in enumerate(candidates.tolist())}
        pairs = excluded.filter(pl.col("user_id").is_in(users.tolist()) & pl.col("item_id").is_in(candidates.tolist()))
        rows = np.array([user_pos[u] for u in pairs["user_id"].to_list()], dtype=np.int64)
        cols = np.array([item_pos[i] for i in pairs["item_id"].to_list()], dtype=np.int64)
        scores[rows, cols] = -np.inf
    k = min(max(KS), len(candidates))
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]  # (U, k) unordered
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
    top = np.take_along_axis(top, order, axis=1)  # (U, k) best first
    rows = pl.DataFrame(
        {
            "user_id": np.repeat(users, k),
            "item_id": candidates[top].ravel(),
            "position": np.tile(np.arange(1, k + 1, dtype=np.int32), len(users)),
        }
    )
    valid = np.isfinite(np.take_along_axis(scores, top, axis=1)).ravel()
    rows = rows.filter(pl.Series(valid))
    recs = Recs(rows, pl.DataFrame({"user_id": users}))
    result = evaluate_frames(recs, truth.select("user_id", "item_id", "label").lazy(), ks=KS)
    return {metric: float(result["overall"][metric] or 0.0) for metric in METRICS}


def evaluate_all(split: Split, scorer: Scorer, scenarios=SCENARIOS) -> dict[str, dict[str, float]]:
    return {name: evaluate_scenario(split, name, scorer) for name in scenarios}


# --------------------------------------------------------------------------- methods


def popularity(split: Split, items: pl.DataFrame, days: float = 0.0) -> tuple[Scorer, float]:
    """Train clicks per item; with `days`, only the clicks of the last `days` days of train
    (every train item counts, with 0 clicks if none were that recent)."""
    started = time.perf_counter()
    clicks = split.train.filter(pl.col("label") == 1)
    if days:
        recent = clicks.filter(pl.col("ts") > split.train["ts"].max() - dt.timedelta(days=days)).group_by("item_id").len("n")
        counts = split.train.select("item_id").unique().join(recent, on="item_id", how="left").with_columns(pl.col("n").fill_null(0))
    else:
        counts = clicks.group_by("item_id").len("n")
    table = items.select("item_id", "genres").join(counts, on="item_id", how="left")
    # A cold item's popularity: the mean train popularity of the warm items sharing its genres.
    genre = table.filter(pl.col("n").is_not_null()).explode("genres").group_by("genres").agg(pl.col("n").mean().alias("g"))
    by_genre = table.explode("genres").join(genre, on="genres", how="left").group_by("item_id").agg(pl.col("g").mean())
    table = table.join(by_genre, on="item_id", how="left").with_columns(
        pl.when(pl.col("n").is_not_null()).then(pl.col("n") + 1e6).otherwise(pl.col("g").fill_null(0.0)).alias("score")
    )
    score = dict(zip(table["item_id"].to_list(), table["score"].to_list()))
    seconds = time.perf_counter() - started

    def scorer(users: np.ndarray, cands: np.ndarray) -> np.ndarray:
        row = np.array([score.get(int(i), 0.0) for i in cands], dtype=np.float64)
        return np.broadcast_to(row, (len(users), len(cands))).copy()

    return scorer, seconds


# The demographic-neighbour baseline: what a user's look-alikes clicked. Columns and weights
# were chosen on the validation splits (bench/LOG.md, round 10); the zip prefix hurt.
NEIGHBOUR_COLUMNS = {"age_group": 1.0, "gender": 2.0, "occupation": 1.0}
NEIGHBOUR_BETA = 1.0


def shared_demographics(users: pl.DataFrame, others: np.ndarray) -> np.ndarray:
    """(users, len(others)): the weighted count of NEIGHBOUR_COLUMNS values each user of
    `users` shares with the users at rows `others` of the same table."""
    shared = np.zeros((len(users), len(others)))
    for column, weight in NEIGHBOUR_COLUMNS.items():
        codes = users[column].cast(pl.String).fill_null("").to_numpy()
        shared += weight * (codes[:, None] == codes[None, others])
    return shared


def demographic_popularity(split: Split, users: pl.DataFrame) -> tuple[Scorer, float]:
    """Train clicks of every train user, weighted by exp(beta x their weighted count of
    demographic values shared with the scored user) and normalised per scored user: a
    popularity list conditioned on age group, gender and occupation. Warm items only (a
    held-out item has no click to count)."""
    started = time.perf_counter()
    user_ids = users["user_id"].to_list()
    u_index = {u: r for r, u in enumerate(user_ids)}
    item_ids = np.sort(split.train["item_id"].unique().to_numpy())
    i_index = {i: c for c, i in enumerate(item_ids.tolist())}
    clicks = split.train.filter(pl.col("label") == 1)
    trained = np.array(sorted({u_index[u] for u in split.train["user_id"].to_list()}))
    t_index = {r: k for k, r in enumerate(trained.tolist())}
    counts = np.zeros((len(trained), len(item_ids)))  # (train users, warm items)
    np.add.at(counts, (np.array([t_index[u_index[u]] for u in clicks["user_id"].to_list()]), np.array([i_index[i] for i in clicks["item_id"].to_list()])), 1.0)
    neighbours = np.exp(NEIGHBOUR_BETA * shared_demographics(users, trained))  # (users, train users)
    score = (neighbours / neighbours.sum(axis=1, keepdims=True)) @ counts  # (users, warm items)
    seconds = time.perf_counter() - started

    def scorer(us: np.ndarray, cands: np.ndarray) -> np.ndarray:
        return score[np.array([u_index[int(u)] for u in us])][:, np.array([i_index[int(i)] for i in cands])]

    return scorer, seconds


def _coo(entries: list[tuple[int, int]], shape: tuple[int, int], prefix: str) -> dict[str, np.ndarray]:
    rows = np.array([r for r, _ in entries], dtype=np.int32)
    cols = np.array([c for _, c in entries], dtype=np.int32)
    per_row = np.bincount(rows, minlength=shape[0]).astype(np.float32)
    vals = 1.0 / per_row[rows]  # each row sums to 1 (LightFM's Dataset(normalize=True))
    return {f"{prefix}_rows": rows, f"{prefix}_cols": cols, f"{prefix}_vals": vals, f"{prefix}_shape": np.array(shape)}


def _feature_matrix(table: pl.DataFrame, id_column: str, ids: list[int], known: set[int], prefix: str) -> dict[str, np.ndarray]:
    """identity (known ids only) + one column per categorical value / genre / year / decade."""
    names: dict[str, int] = {}
    entries: list[tuple[int, int]] = []
    rows = {r[id_column]: r for r in table.iter_rows(named=True)}

    def col(name: str) -> int:
        return names.setdefault(name, len(names))

    for row_index, entity in enumerate(ids):
        tokens = [f"id:{entity}"] if entity in known else []
        record = rows.get(entity, {})
        for key, value in record.items():
            if key == id_column or value is None:
                continue
            if isinstance(value, list):
                tokens += [f"{key}:{v}" for v in value]
            elif key == "release_year":
                tokens += [f"year:{int(value)}", f"decade:{int(value) // 10}"]
            elif key == "age":
                continue  # age_group carries it as a category
            elif key == "release_decade":
                continue  # decade:... above, from release_year
            else:
                tokens.append(f"{key}:{value}")
        entries += [(row_index, col(token)) for token in tokens]
    return _coo(entries, (len(ids), len(names)), prefix)


def lightfm(split: Split, users: pl.DataFrame, items: pl.DataFrame, peer: Path, *, features: bool, seed: int, epochs: int, work: Path) -> tuple[Scorer, float]:
    user_ids = users["user_id"].to_list()
    item_ids = items["item_id"].to_list()
    u_index = {u: r for r, u in enumerate(user_ids)}
    i_index = {i: r for r, i in enumerate(item_ids)}
    positives = split.train.filter(pl.col("label") == 1).select("user_id", "item_id").unique()
    payload: dict[str, Any] = {
        "rows": np.array([u_index[u] for u in positives["user_id"].to_list()], dtype=np.int32),
        "cols": np.array([i_index[i] for i in positives["item_id"].to_list()], dtype=np.int32),
        "shape": np.array([len(user_ids), len(item_ids)]),
        "components": LIGHTFM["components"],
        "lr": LIGHTFM["lr"],
        "epochs": epochs,
        "seed": seed,
        "threads": 2,
    }
    if features:
        known_users = set(split.train["user_id"].unique().to_list())
        known_items = set(split.train["item_id"].unique().to_list())
        payload.update(_feature_matrix(users, "user_id", user_ids, known_users, "u"))
        payload.update(_feature_matrix(items, "item_id", item_ids, known_items, "i"))
    inp, out = work / f"lfm_in_{features}.npz", work / f"lfm_out_{features}.npz"
    np.savez(inp, **payload)
    _sh([str(peer), str(BENCH / "lightfm_peer.py"), str(inp), str(out)])
    result = np.load(out)
    user_emb, item_emb, item_bias = result["user_emb"], result["item_emb"], result["item_bias"]

    def scorer(us: np.ndarray, cands: np.ndarray) -> np.ndarray:
        u = user_emb[[u_index[int(x)] for x in us]]
        c = [i_index[int(x)] for x in cands]
        return u @ item_emb[c].T + item_bias[c][None, :]

    return scorer, float(result["seconds"])


def coldrec_model(split: Split, users: pl.DataFrame, items: pl.DataFrame, work: Path, *, seed: int, overrides: dict[str, Any] | None = None, stats: bool | str = False) -> tuple[Scorer, dict[str, float]]:
    """Train with the defaults (+ overrides: selection only), embed every user and item.

    `stats`: False, True (both sides) or "user" (user statistics only: the item tables are
    removed, so `coldrec train` trains and serves without item statistics).
    """
    from coldrec.model import load_model
    from coldrec.train import run_train

    users_path, items_path = work / "users.parquet", work / "items.parquet"
    users.write_parquet(users_path)
    items.write_parquet(items_path)
    times: dict[str, float] = {}
    stats_dir = None
    if stats:
        from coldrec.stats import run_stats

        started = time.perf_counter()
        # History = train + valid only, so the latest tables are "as of the warm-test cut"
        # (stats would otherwise read test_warm.parquet and leak the test's clicks).
        history = work / "history"
        history.mkdir()
        for name in ("train", "valid"):
            (history / f"{name}.parquet").symlink_to(split.dir / f"{name}.parquet")
        stats_dir = work / "stats"
        run_stats(history, users_path, items_path, stats_dir)
        if stats == "user":
            for path in stats_dir.glob("item_stats*.parquet"):
                path.unlink()
        times["stats"] = time.perf_counter() - started
    started = time.perf_counter()
    run_train(split.dir, users_path, items_path, work / "model", stats=stats_dir, overrides={"training.seed": seed, **(overrides or {})})
    times["train"] = time.perf_counter() - started
    started = time.perf_counter()
    model = load_model(work / "model")
    user_stats = pl.read_parquet(stats_dir / "user_stats_latest.parquet") if stats_dir else None
    item_stats = pl.read_parquet(stats_dir / "item_stats_latest.parquet") if stats_dir and stats != "user" else None
    user_vecs, _ = model.embed_users(users, stats=user_stats)
    item_vecs, _ = model.embed_items(items, stats=item_stats)
    scorer = vector_scorer(users, items)(user_vecs, item_vecs)
    times["embed"] = time.perf_counter() - started
    return scorer, times


def vector_scorer(users: pl.DataFrame, items: pl.DataFrame) -> Callable[[np.ndarray, np.ndarray], Scorer]:
    """(U, V) -> a Scorer of dot products, U and V holding one row per user / item in table order."""
    u_index = {u: r for r, u in enumerate(users["user_id"].to_list())}
    i_index = {i: r for r, i in enumerate(items["item_id"].to_list())}

    def make(user_vecs: np.ndarray, item_vecs: np.ndarray) -> Scorer:
        return lambda us, cands: user_vecs[[u_index[int(x)] for x in us]] @ item_vecs[[i_index[int(x)] for x in cands]].T

    return make


# --------------------------------------------------------------------------- tables


def mean_sd(values: list[float]) -> str:
    if not values:
        return "–"
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.4f} ± {sd:.4f}"


def table(results: dict[str, list[dict]], *, scenarios=SCENARIOS, time_key: str | None = "train_s") -> str:
    header = ["method"] + [f"{s} {m}" for s in scenarios for m in ("R@20", "N@20", "R@100")] + ([time_key] if time_key else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, runs in results.items():
        cells = [method]
        for scenario in scenarios:
            for metric in METRICS:
                values = [r["metrics"][scenario][metric] for r in runs if scenario in r["metrics"]]
                cells.append(mean_sd(values))
        if time_key:
            times = [r[time_key] for r in runs if time_key in r]
            cells.append(f"{statistics.fmean(times):.1f}" if times else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary(results: dict[str, list[dict]]) -> dict[str, dict[str, dict[str, float]]]:
    out: dict[str, dict[str, dict[str, float]]] = {}
    for method, runs in results.items():
        out[method] = {}
        for scenario in SCENARIOS:
            values = {m: [r["metrics"][scenario][m] for r in runs if scenario in r["metrics"]] for m in METRICS}
            if values["recall@20"]:
                out[method][scenario] = {m: statistics.fmean(v) for m, v in values.items()}
    return out


def targets(means: dict[str, dict[str, dict[str, float]]]) -> list[str]:
    ours, hybrid, plain = means.get("coldrec (defaults)", {}), means.get("LightFM hybrid", {}), means.get("LightFM no features", {})
    if not ours or not hybrid:
        return []
    lines = []

    def check(label: str, value: float, reference: float, factor: float) -> None:
        ratio = value / reference if reference else float("inf")
        lines.append(f"- {label}: {value:.4f} vs {reference:.4f} -> x{ratio:.3f} (target x{factor:.2f}) {'MET' if ratio >= factor else 'MISSED'}")

    check("cold-item R@20 vs LightFM hybrid", ours["cold_item"]["recall@20"], hybrid["cold_item"]["recall@20"], 1.15)
    check("cold-user R@20 vs LightFM hybrid", ours["cold_user"]["recall@20"], hybrid["cold_user"]["recall@20"], 1.10)
    best_warm = max(hybrid["warm"]["recall@20"], plain.get("warm", {}).get("recall@20", 0.0))
    check("warm R@20 vs best LightFM", ours["warm"]["recall@20"], best_warm, 1.00)
    for scenario in SCENARIOS:
        refs = [m[scenario]["ndcg@20"] for m in (hybrid, plain) if scenario in m]
        check(f"{scenario} NDCG@20 vs LightFM", ours[scenario]["ndcg@20"], max(refs), 1.00)
    return lines


# --------------------------------------------------------------------------- modes

# Candidate configurations scored by --select: named override sets of the CURRENT defaults,
# each spelling out the keys it was selected on (bench/candidates.toml; the rounds in bench/LOG.md).
CANDIDATES: dict[str, dict[str, Any]] = tomllib.loads((Path(__file__).with_name("candidates.toml")).read_text())


def run_benchmark(args, data: Path, peer: Path, work: Path) -> None:
    users, items = content_tables(data)
    results: dict[str, list[dict]] = {"coldrec (defaults)": [], "popularity": [], "popularity, last 30 days": [], "demographic neighbours": [], "LightFM hybrid": [], "LightFM no features": []}
    for seed in range(args.seeds):
        seed_dir = work / f"seed{seed}"
        seed_dir.mkdir(parents=True)
        split, prepare_s = prepare_split(data, seed_dir / "prep", seed)
        scorer, times = coldrec_model(split, users, items, seed_dir, seed=seed)
        started = time.perf_counter()
        metrics = evaluate_all(split, scorer)
        rank_s = time.perf_counter() - started
        pipeline = prepare_s + sum(times.values()) + rank_s
        metrics.update(evaluate_all(split, scorer, WARM_PARTS))  # after the pipeline's clock
        results["coldrec (defaults)"].append({"metrics": metrics, "train_s": times["train"], "pipeline_s": pipeline})
        say(f"seed {seed}: coldrec {json.dumps(metrics)} train {times['train']:.1f}s pipeline {pipeline:.1f}s")
        scorer, seconds = popularity(split, items)
        results["popularity"].append({"metrics": evaluate_all(split, scorer, SCENARIOS + WARM_PARTS), "train_s": seconds})
        scorer, seconds = popularity(split, items, days=30.0)
        results["popularity, last 30 days"].append({"metrics": evaluate_all(split, scorer, SCENARIOS + WARM_PARTS), "train_s": seconds})
        scorer, seconds = demographic_popularity(split, users)
        results["demographic neighbours"].append({"metrics": evaluate_all(split, scorer, ("warm", "cold_user") + WARM_PARTS), "train_s": seconds})
        scorer, seconds = lightfm(split, users, items, peer, features=True, seed=seed, epochs=args.lightfm_epochs, work=seed_dir)
        results["LightFM hybrid"].append({"metrics": evaluate_all(split, scorer, SCENARIOS + WARM_PARTS), "train_s": seconds})
        scorer, seconds = lightfm(split, users, items, peer, features=False, seed=seed, epochs=args.lightfm_epochs, work=seed_dir)
        results["LightFM no features"].append({"metrics": evaluate_all(split, scorer, ("warm",) + WARM_PARTS), "train_s": seconds})
        users_per_part = {part: split.scenario(part)[0].filter(pl.col("label") == 1)["user_id"].n_unique() for part in WARM_PARTS}
        for runs in results.values():
            runs[-1]["warm_users"] = users_per_part
        say(f"seed {seed}: LightFM hybrid {json.dumps(results['LightFM hybrid'][-1]['metrics'])}")
    means = summary(results)
    pipelines = [r["pipeline_s"] for r in results["coldrec (defaults)"]]
    text = [
        f"MovieLens-100K, {args.seeds} seed(s), mean ± sd over seeds; train_s = model fitting wall time (s).",
        "",
        table(results),
        "",
        f"coldrec full pipeline (prepare -> train -> embed -> rank, all three scenarios): {statistics.fmean(pipelines):.1f}s mean, {max(pipelines):.1f}s max (target < 120s)",
        "",
        f"Targets ({args.seeds}-seed means, same run):",
        *targets(means),
        "",
        "The warm test split by user (not part of the targets): users with a train sample, and users whose",
        "first sample is after the time cut (no id row: served from content, like cold users).",
        "",
        table(results, scenarios=WARM_PARTS, time_key=None),
        "",
        "Users with a positive per seed: " + ", ".join(f"{p} {[r['warm_users'][p] for r in results['popularity']]}" for p in WARM_PARTS),
    ]
    report = "\n".join(text)
    print(report)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "movielens.md").write_text(report + "\n")
    (OUT / "movielens.json").write_text(json.dumps({"seeds": args.seeds, "lightfm": {**LIGHTFM, "epochs": args.lightfm_epochs}, "runs": results, "means": means}, indent=2) + "\n")


def run_select(args, data: Path, peer: Path, work: Path) -> None:
    """Score CANDIDATES (and LightFM's epochs) on inner splits carved from each train part."""
    users, items = content_tables(data)
    names = [n for n in args.candidates.split(",") if n] if args.candidates is not None else list(CANDIDATES)  # "" = none
    results: dict[str, list[dict]] = {name: [] for name in names}
    lightfm_epochs = [int(e) for e in args.lightfm_select.split(",")] if args.lightfm_select else []
    for epochs in lightfm_epochs:
        results[f"LightFM hybrid e{epochs}"] = []
    if args.neighbours:
        results["demographic neighbours"] = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        seed_dir = work / f"seed{seed}"
        seed_dir.mkdir(parents=True)
        outer, _ = prepare_split(data, seed_dir / "prep", seed)
        logs = inner_logs(outer, seed_dir / "inner_logs")
        split, _ = prepare_split(logs, seed_dir / "inner", seed + 1000)
        for name in names:
            overrides = dict(CANDIDATES[name])
            stats = overrides.pop("stats", False)
            candidate_items = items
            if overrides.pop("year_category", False):  # the release year also as a category, as LightFM sees it
                candidate_items = items.with_columns(pl.col("release_year").cast(pl.Int64).cast(pl.String).alias("release_year_category"))
            run_dir = seed_dir / name
            run_dir.mkdir()
            scorer, times = coldrec_model(split, users, candidate_items, run_dir, seed=seed, overrides=overrides, stats=stats)
            results[name].append({"metrics": evaluate_all(split, scorer), "train_s": times["train"]})
            m = results[name][-1]["metrics"]
            say(f"select seed {seed} {name}: " + " ".join(f"{s} {m[s]['recall@20']:.4f}/{m[s]['ndcg@20']:.4f}" for s in SCENARIOS) + f" ({times['train']:.1f}s)")
        for epochs in lightfm_epochs:
            scorer, seconds = lightfm(split, users, items, peer, features=True, seed=seed, epochs=epochs, work=seed_dir)
            results[f"LightFM hybrid e{epochs}"].append({"metrics": evaluate_all(split, scorer), "train_s": seconds})
        if args.neighbours:
            scorer, seconds = demographic_popularity(split, users)
            results["demographic neighbours"].append({"metrics": evaluate_all(split, scorer, ("warm", "cold_user")), "train_s": seconds})
    report = f"Selection on inner validation splits (carved from train), {args.seeds} seed(s):\n\n" + table(results)
    print(report)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"movielens_select{args.tag}.md").write_text(report + "\n")
    (OUT / f"movielens_select{args.tag}.json").write_text(json.dumps({"candidates": {n: CANDIDATES.get(n) for n in names}, "runs": results}, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--movielens", help="ml-100k folder (GroupLens or RecBole layout) or a `coldrec datasets movielens` output")
    parser.add_argument("--quick", action="store_true", help="one seed (a smoke run)")
    parser.add_argument("--select", action="store_true", help="score candidate configs on validation splits carved from train")
    parser.add_argument("--candidates", help="--select: comma-separated names from CANDIDATES (default all; \"\" for none)")
    parser.add_argument("--lightfm-select", default="", help="--select: LightFM epochs to compare, e.g. 10,30,60")
    parser.add_argument("--neighbours", action="store_true", help="--select: also score the demographic-neighbour baseline")
    parser.add_argument("--lightfm-epochs", type=int, default=LIGHTFM["epochs"])
    parser.add_argument("--peer-python", help="python of a venv with lightfm (default: bench/.venv-peers, built if missing)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--first-seed", type=int, default=0, help="--select: first seed of the inner splits")
    parser.add_argument("--tag", default="", help="--select: suffix of the output files (parallel runs)")
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds = 1
    log.configure(quiet=True)
    # One intra-op thread: on a shared 2-core machine, torch's 2-thread pool spins against the
    # other processes and trains ~10x slower than one thread (measured: 700 vs 8,500 samples/s).
    import torch

    torch.set_num_threads(args.threads)
    data = ensure_movielens(args.movielens, engineered=True)  # its protocol: the derived columns, no titles
    peer = ensure_peer_python(args.peer_python)
    work = Path(tempfile.mkdtemp(prefix="coldrec-movielens-"))
    try:
        (run_select if args.select else run_benchmark)(args, data, peer, work)
    finally:
        if args.keep:
            print(f"working directory kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
