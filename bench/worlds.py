"""Worlds x scenarios: coldrec's defaults against LightFM, popularity and the planted truth.

    .venv/bin/python bench/worlds.py                      # MovieLens + S and M worlds, 3 seeds
    .venv/bin/python bench/worlds.py --large              # + the L world (10M exposures, 1 seed)
    .venv/bin/python bench/worlds.py --worlds S,M --seeds 1 --jobs 2
    .venv/bin/python bench/worlds.py --worlds L --out bench/out/large   # L alone, ~40 min

Every world is made by coldrec's own commands: `coldrec synth` (seeded by the run's seed) or
MovieLens-100K converted by `coldrec datasets movielens` (bench/movielens.py fetches it): the columns as
GroupLens ships them, or with --engineered the derived ones ("MovieLens-100K engineered", not a default world).
Each (world, seed) is one task, in the same run for every method:
1. `coldrec prepare --holdout-items 0.2 --holdout-users 0.1 --valid-fraction 0.2 --seed S`:
   held-out items / users are the cold tests, the last 20% of time is cut in half into valid
   (coldrec's early stopping) and test_warm. Every method fits on train only.
2. Candidates: cold items are ranked among the held-out items; warm and cold users among the
   warm items (a train sample), excluding each user's train + valid positives for warm.
   Metrics are coldrec.evaluate's own (Recall@20, NDCG@20 per user with a positive, averaged).
3. Methods: `coldrec train` with its defaults (no stats, one thread) and `coldrec embed`;
   LightFM hybrid (WARP, 64 components, 30 epochs, identity + every content column: strings
   one-hot, lists multi-hot, numerics and vector dimensions as decile buckets; one thread,
   in the bench-only venv of bench/movielens.py); popularity (train clicks; a cold item gets
   the mean count of the warm items sharing its content values); for synth worlds the
   planted affinity taste . topic from truth/ (what the world allows from perfect knowledge).
4. Train time is the wall time of the fitting process (`coldrec train`; the LightFM worker
   from loading its matrices to writing its vectors), peak RSS that process's maximum.
Writes bench/out/worlds.md, worlds.json and worlds.png (the plot is drawn in the peer venv).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Callable

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from movielens import ensure_movielens, ensure_peer_python  # noqa: E402

from coldrec.config import dump_toml  # noqa: E402
from coldrec.evaluate import Recs, evaluate_frames  # noqa: E402

BENCH = ROOT / "bench"
OUT = BENCH / "out"
SCENARIOS = ("warm", "cold_user", "cold_item")
METRICS = ("recall@20", "ndcg@20")
SPLIT = ["--holdout-items", "0.2", "--holdout-users", "0.1", "--valid-fraction", "0.2"]
LIGHTFM = dict(components=64, lr=0.05, epochs=30)
METHODS = ("coldrec", "LightFM hybrid", "coldrec tuned", "LightFM tuned", "popularity", "planted truth")
DEFAULT_METHODS = [m for m in METHODS if "tuned" not in m]
PAIRS = (("coldrec", "LightFM hybrid"), ("coldrec tuned", "LightFM tuned"))  # the ratio table's rows

_M = dict(users=15000, items=4000, days=30, exposures_per_day=33000)
# World name -> `coldrec synth` options (None: MovieLens-100K). S / M / L: ~100k / 1M / 10M exposures.
WORLDS: dict[str, dict | None] = {
    "MovieLens-100K": None,  # the columns as GroupLens ships them (roles read from the data)
    "MovieLens-100K engineered": None,  # coldrec datasets movielens --engineered: derived columns
    "S": dict(users=1500, items=400, days=30, exposures_per_day=3300),
    "M": dict(_M),
    "M interactions": dict(_M, interactions=True),
    "M 2% clicks": dict(_M, click_rate=0.02),
    "M content-poor": dict(_M, latent_strength=1.5),
    "L": dict(users=150000, items=40000, days=30, exposures_per_day=333000),
}
DEFAULT_WORLDS = [name for name in WORLDS if name not in ("L", "MovieLens-100K engineered")]

Scorer = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (user rows, item rows) -> (U, I) scores


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# The measured command runs under this small launcher, which reports its peak RSS. Measured
# from the benchmark's worker directly, ru_maxrss would include the worker's own memory: the
# kernel keeps a forked child's high-water mark across exec, and the child starts as a copy
# of the worker (hundreds of MiB once a world is loaded).
LAUNCHER = (
    "import resource, subprocess, sys\n"
    "code = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL)\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    "sys.exit(code)\n"
)


def measured(args: list[str], **kwargs) -> tuple[float, float]:
    """Run a process to completion: (wall seconds, peak RSS in MiB); raises on failure."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", LAUNCHER, *map(str, args)], stdout=subprocess.PIPE, text=True, **kwargs)
    seconds = time.perf_counter() - started
    if done.returncode:
        raise RuntimeError(f"{' '.join(map(str, args[:3]))} ... exited {done.returncode}")
    return seconds, int(done.stdout.split()[-1]) / 1024


def coldrec(*args) -> tuple[float, float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return measured([sys.executable, "-m", "coldrec", "--quiet", *map(str, args)], env=env)


# --------------------------------------------------------------------------- one world


def _rows(ids: pl.Series, column: str, alias: str) -> pl.Expr:
    """`column`'s ids as their row numbers in `ids` (null where unknown)."""
    return pl.col(column).replace_strict(ids, pl.int_range(len(ids), eager=True), default=None).alias(alias)


class World:
    """A prepared split of one world: content tables, row indices, scenarios."""

    def __init__(self, logs: Path, prep: Path) -> None:
        self.logs, self.prep = logs, prep
        self.valid: dict[str, float] = {}  # coldrec's own validation figures, once trained
        self.users = pl.read_parquet(logs / "users.parquet")
        self.items = pl.read_parquet(logs / "items.parquet")
        self.frames = {p.stem: pl.read_parquet(p) for p in prep.glob("*.parquet")}
        self.train = self.frames["train"].with_columns(self.user_rows("user_id"), self.item_rows("item_id"))
        self.held_items = self.item_index(json.loads((prep / "manifest.json").read_text())["extra"]["held_out_item_ids"])
        self.warm_items = np.unique(self.train["item_row"].to_numpy())
        seen = pl.concat([self.frames["train"], self.frames["valid"]]).filter(pl.col("label") == 1)
        self.seen = seen.select(self.user_rows("user_id"), self.item_rows("item_id")).unique()
        # Validation as coldrec train ranks it: train positives excluded unless also valid ones.
        valid_positives = self.frames["valid"].filter(pl.col("label") == 1).select(self.user_rows("user_id"), self.item_rows("item_id"))
        self.train_seen = self.train.filter(pl.col("label") == 1).select("user_row", "item_row").unique().join(
            valid_positives, on=["user_row", "item_row"], how="anti")

    def user_rows(self, column: str) -> pl.Expr:
        return _rows(self.users["user_id"], column, "user_row")

    def item_rows(self, column: str) -> pl.Expr:
        return _rows(self.items["item_id"], column, "item_row")

    def item_index(self, ids: list) -> np.ndarray:
        wanted = pl.DataFrame({"x": pl.Series(ids, dtype=self.items["item_id"].dtype)})
        return wanted.select(self.item_rows("x"))["item_row"].to_numpy()

    def facts(self) -> dict[str, int]:
        train = self.frames["train"]
        return {"train_samples": train.height, "train_clicks": int(train["label"].sum()),
                "users": self.users.height, "items": self.items.height}

    def scenario(self, name: str) -> tuple[pl.DataFrame, np.ndarray, pl.DataFrame | None]:
        """(truth rows, candidate item rows, excluded (user_row, item_row) pairs or None).
        "valid" is the validation split as coldrec train ranks it (a tuner's objective): its
        exposed items, train positives excluded."""
        if name == "valid":
            valid = self.frames["valid"]
            return valid, np.unique(valid.select(self.item_rows("item_id"))["item_row"].drop_nulls().to_numpy()), self.train_seen
        file = {"warm": "test_warm", "cold_user": "test_cold_user", "cold_item": "test_cold_item"}[name]
        if name == "cold_item":
            return self.frames[file], self.held_items, None
        return self.frames[file], self.warm_items, self.seen if name == "warm" else None


def rank(world: World, name: str, scorer: Scorer, k: int = 20, chunk: int = 2048) -> dict[str, float]:
    """Top-k of `scorer` over the scenario's candidates, scored by coldrec.evaluate."""
    truth, candidates, excluded = world.scenario(name)
    positives = truth.filter(pl.col("label") == 1).select(world.user_rows("user_id"))
    users = np.unique(positives["user_row"].drop_nulls().to_numpy())
    column_of = np.full(world.items.height, -1)
    column_of[candidates] = np.arange(len(candidates))
    if excluded is not None:
        excluded = excluded.filter(pl.col("user_row").is_in(users.tolist())).sort("user_row")
        ex_users, ex_cols = excluded["user_row"].to_numpy(), column_of[excluded["item_row"].to_numpy()]
    tops = []
    for start in range(0, len(users), chunk):
        rows = users[start:start + chunk]
        scores = np.asarray(scorer(rows, candidates), dtype=np.float64)  # (U, C)
        if excluded is not None:
            lo, hi = np.searchsorted(ex_users, [rows[0], rows[-1] + 1])
            hit = ex_cols[lo:hi] >= 0
            local = np.searchsorted(rows, ex_users[lo:hi][hit])
            scores[local, ex_cols[lo:hi][hit]] = -np.inf
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
        tops.append(np.take_along_axis(top, order, axis=1))
    top = np.concatenate(tops) if tops else np.zeros((0, k), dtype=np.int64)
    recs = pl.DataFrame({
        "user_id": world.users["user_id"].gather(np.repeat(users, k)),
        "item_id": world.items["item_id"].gather(candidates[top].ravel()),
        "position": np.tile(np.arange(1, k + 1, dtype=np.int32), len(users)),
    })
    user_ids = pl.DataFrame({"user_id": world.users["user_id"].gather(users)})
    result = evaluate_frames(Recs(recs, user_ids), truth.select("user_id", "item_id", "label").lazy(), ks=(k,))
    return {metric: float(result["overall"][metric] or 0.0) for metric in METRICS}


def dot_scorer(user_vecs: np.ndarray, item_vecs: np.ndarray) -> Scorer:
    return lambda users, items: user_vecs[users] @ item_vecs[items].T


# --------------------------------------------------------------------------- methods


def content_tokens(table: pl.DataFrame, id_column: str) -> pl.DataFrame:
    """(row, token) for every content value: strings as is, list values, numerics and vector
    dimensions as decile buckets (null values give no token)."""
    indexed = table.with_row_index("row")
    parts = []
    for name, dtype in table.schema.items():
        if name == id_column:
            continue
        column = pl.col(name)
        if dtype == pl.String or dtype == pl.Categorical:
            parts.append(indexed.select("row", token=pl.lit(f"{name}=") + column.cast(pl.String)))
        elif isinstance(dtype, pl.List):
            parts.append(indexed.select("row", column).explode(name).select("row", token=pl.lit(f"{name}=") + column.cast(pl.String)))
        elif dtype.is_numeric():
            parts.append(_deciles(indexed, column, name))
        elif dtype == pl.Date or isinstance(dtype, pl.Datetime):
            parts.append(_deciles(indexed, column.dt.epoch("d").cast(pl.Float64), name))
        elif isinstance(dtype, pl.Array):
            parts += [_deciles(indexed, column.arr.get(d), f"{name}[{d}]") for d in range(dtype.size)]
    return pl.concat(parts).drop_nulls()


def _deciles(indexed: pl.DataFrame, value: pl.Expr, name: str) -> pl.DataFrame:
    bucket = value.fill_nan(None).rank("ordinal") * 10 // (value.fill_nan(None).count() + 1)
    return indexed.select("row", token=pl.lit(f"{name}#") + bucket.cast(pl.Int64).cast(pl.String))


def _coo(tokens: pl.DataFrame, vocab: pl.DataFrame, n_rows: int, prefix: str) -> dict[str, np.ndarray]:
    """Rows normalised to sum 1, as LightFM's Dataset(normalize=True)."""
    entries = tokens.join(vocab, on="token").with_columns((1.0 / pl.len().over("row")).alias("val"))
    return {f"{prefix}_rows": entries["row"].to_numpy().astype(np.int32), f"{prefix}_cols": entries["col"].to_numpy().astype(np.int32),
            f"{prefix}_vals": entries["val"].to_numpy().astype(np.float32), f"{prefix}_shape": np.array([n_rows, vocab.height])}


def hybrid_features(table: pl.DataFrame, id_column: str, known_rows: np.ndarray, prefix: str) -> dict[str, np.ndarray]:
    """Identity + content features (PREFIX_...) and the content ones alone over the same
    columns (PREFIXc_...: how LightFM represents a cold user / item)."""
    identity = pl.DataFrame({"row": known_rows.astype(np.uint32)}).with_columns(token=pl.lit("id:") + pl.col("row").cast(pl.String))
    content = content_tokens(table, id_column)
    tokens = pl.concat([identity, content])
    vocab = tokens.select("token").unique(maintain_order=True).with_row_index("col")
    return {**_coo(tokens, vocab, table.height, prefix), **_coo(content, vocab, table.height, f"{prefix}c")}


def lightfm_payload(world: World, seed: int) -> dict[str, np.ndarray]:
    """Train positives and both sides' feature matrices, for bench/lightfm_peer.py."""
    positives = world.train.filter(pl.col("label") == 1).select("user_row", "item_row").unique(maintain_order=True)
    return {
        "rows": positives["user_row"].to_numpy().astype(np.int32),
        "cols": positives["item_row"].to_numpy().astype(np.int32),
        "shape": np.array([world.users.height, world.items.height]),
        "seed": seed, "threads": 1,
        **hybrid_features(world.users, "user_id", np.unique(world.train["user_row"].to_numpy()), "u"),
        **hybrid_features(world.items, "item_id", world.warm_items, "i"),
    }


def run_lightfm(peer: Path, payload: dict[str, np.ndarray], params: dict[str, Any], work: Path) -> tuple[dict[str, np.ndarray], float, float]:
    """Fit LightFM with `params` in the peer venv: (its representations, wall s, peak RSS MiB)."""
    inp, out = work / "lightfm_in.npz", work / "lightfm_out.npz"
    np.savez(inp, **payload, **params)
    seconds, rss = measured([str(peer), str(BENCH / "lightfm_peer.py"), str(inp), str(out)], env={**os.environ, "OMP_NUM_THREADS": "1"})
    with np.load(out) as result:
        return dict(result), seconds, rss


def lightfm_vectors(result: dict[str, np.ndarray], users_view: str = "", items_view: str = "") -> tuple[np.ndarray, np.ndarray]:
    """(user, item) vectors whose dot product is LightFM's score; view "_c": content only."""
    users = result[f"user_emb{users_view}"]
    users = np.hstack([users, np.ones((users.shape[0], 1), dtype=np.float32)])
    items = np.hstack([result[f"item_emb{items_view}"], result[f"item_bias{items_view}"][:, None]])
    return users, items


def lightfm(world: World, peer: Path, seed: int, work: Path) -> tuple[Scorer, float, float]:
    result, seconds, rss = run_lightfm(peer, lightfm_payload(world, seed), LIGHTFM, work)
    return dot_scorer(*lightfm_vectors(result)), seconds, rss


def popularity(world: World) -> tuple[Scorer, float, float]:
    started = time.perf_counter()
    clicks = world.train.filter(pl.col("label") == 1).group_by("item_row").len("n")
    tokens = content_tokens(world.items, "item_id").join(clicks, left_on="row", right_on="item_row", how="left")
    token_mean = tokens.group_by("token").agg(pl.col("n").fill_null(0).filter(pl.col("row").is_in(world.warm_items.tolist())).mean().alias("m"))
    by_content = tokens.join(token_mean, on="token").group_by("row").agg(pl.col("m").mean())
    score = np.zeros(world.items.height)
    score[by_content["row"].to_numpy()] = by_content["m"].fill_null(0.0).to_numpy()
    score[clicks["item_row"].to_numpy()] = clicks["n"].to_numpy() + 1e6  # warm items by their clicks
    return dot_scorer(np.ones((world.users.height, 1)), score[:, None]), time.perf_counter() - started, 0.0


def planted(world: World) -> tuple[Scorer, float, float]:
    """log P(shown) + log P(click | shown) as the world draws them: the item's popularity
    (what the logging recommender samples candidates by) and sigmoid(alpha taste.topic + beta)."""
    from coldrec.synth import click_probability, load_truth

    taste, topic, params = load_truth(world.logs / "truth")
    user_vecs = world.users.select("user_id").join(taste, on="user_id", how="left", maintain_order="left")["taste"].to_numpy()
    items = world.items.select("item_id").join(topic, on="item_id", how="left", maintain_order="left")
    item_vecs, log_popularity = items["topic"].to_numpy(), np.log(items["popularity"].to_numpy())

    def scorer(users: np.ndarray, cands: np.ndarray) -> np.ndarray:
        clicks = click_probability(user_vecs[users] @ item_vecs[cands].T, params["alpha"], params["beta"])
        return np.log(clicks) + log_popularity[cands][None, :]

    return scorer, 0.0, 0.0


VALID_KEYS = ("recall@20", "recall@20_item_view", "recall@20_user_view")


def content_tables(world: World, work: Path) -> tuple[Path, Path]:
    """The world's users and items tables as coldrec reads them (written once per task)."""
    users, items = work / "users.parquet", work / "items.parquet"
    if not items.exists():
        world.users.write_parquet(users)
        world.items.write_parquet(items)
    return users, items


def coldrec_defaults(world: World, seed: int, work: Path, train_set: dict[str, Any], config: Path | None = None) -> tuple[Scorer, float, float]:
    """coldrec's defaults (with `train_set`'s config overrides, or a `config` file, if any). The
    model's own validation figures (its metrics.json: Recall@20 on the valid split as served and
    with content-only items / users, and the epochs) go to `world.valid`: what a default is chosen on."""
    users, items = content_tables(world, work)
    if train_set:
        config = work / "train.toml"
        config.write_text(dump_toml(_nested(train_set)))
    shutil.rmtree(work / "model", ignore_errors=True)
    seconds, rss = coldrec("train", "--samples", world.prep, "--users", users, "--items", items, "--out", work / "model", "--seed", seed,
                           *(["--config", config] if config else []))
    metrics = json.loads((work / "model" / "metrics.json").read_text())
    world.valid = {key: metrics[key] for key in (*VALID_KEYS, "epochs", "best_epoch") if key in metrics}
    for side, table in (("users", users), ("items", items)):
        coldrec("embed", "--model", work / "model", f"--{side}", table, "--out", work / f"{side}_emb.parquet", "--threads", 1)
    vectors = [_embedding_rows(work / f"{side}_emb.parquet", table, key) for side, table, key in
               (("users", world.users, "user_id"), ("items", world.items, "item_id"))]
    return dot_scorer(*vectors), seconds, rss


def _nested(dotted: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for key, value in dotted.items():
        section, name = key.split(".", 1)
        out.setdefault(section, {})[name] = value
    return out


def _embedding_rows(path: Path, table: pl.DataFrame, key: str) -> np.ndarray:
    frame = table.select(key).join(pl.read_parquet(path), on=key, how="left", maintain_order="left")
    return frame["embedding"].to_numpy().astype(np.float32)


# --------------------------------------------------------------------------- one task


def make_world(name: str, seed: int, work: Path) -> Path:
    options = WORLDS[name]
    if options is None:
        return ensure_movielens(None, engineered=name.endswith("engineered"))
    flags = [f"--{k.replace('_', '-')}" if v is True else f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
    coldrec("synth", "--out", work / "logs", "--seed", seed, *flags)
    return work / "logs"


def run_task(name: str, seed: int, peer: str, root: str, train_set: dict[str, Any], chosen: list[str], budget: str) -> dict:
    """One world at one seed: every method (of `chosen`) on the same split."""
    work = Path(root) / f"{name.replace(' ', '_')}_s{seed}"
    work.mkdir(parents=True)
    import tuned  # noqa: PLC0415 (it imports this module's helpers)

    logs = make_world(name, seed, work)
    coldrec("prepare", "--exposures", logs / "exposures", "--clicks", logs / "clicks", "--out", work / "prep", "--seed", seed, *SPLIT)
    world = World(logs, work / "prep")
    methods = {
        "coldrec": lambda: coldrec_defaults(world, seed, work, train_set),
        "LightFM hybrid": lambda: lightfm(world, Path(peer), seed, work),
        "coldrec tuned": lambda: tuned.coldrec_tuned(world, seed, work, budget),
        "LightFM tuned": lambda: tuned.lightfm_tuned(world, Path(peer), seed, work, budget),
        "popularity": lambda: popularity(world),
    }
    if (logs / "truth").is_dir():
        methods["planted truth"] = lambda: planted(world)
    runs = {}
    for method, fit in methods.items():
        if method not in chosen:
            continue
        world.valid = {}
        scorer, seconds, rss = fit()
        metrics = {scenario: rank(world, scenario, scorer) for scenario in SCENARIOS}
        runs[method] = {"metrics": metrics, "train_s": seconds, "rss_mb": rss, "valid": world.valid}
    shutil.rmtree(work, ignore_errors=True)
    return {"world": name, "seed": seed, "facts": world.facts(), "runs": runs}


# --------------------------------------------------------------------------- report


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def means(tasks: list[dict]) -> dict:
    """world -> method -> {"scenario metric": mean over seeds, "train_s", "rss_mb", "seeds"}."""
    out: dict = {}
    for task in tasks:
        for method, run in task["runs"].items():
            cell = out.setdefault(task["world"], {}).setdefault(method, {"values": {}})
            for scenario, metrics in run["metrics"].items():
                for metric, value in metrics.items():
                    cell["values"].setdefault(f"{scenario} {metric}", []).append(value)
            for key, value in run.get("valid", {}).items():
                cell["values"].setdefault(f"valid {key}", []).append(value)
            cell["values"].setdefault("train_s", []).append(run["train_s"])
            cell["values"].setdefault("rss_mb", []).append(run["rss_mb"])
    for methods in out.values():
        for method, cell in methods.items():
            values = cell.pop("values")
            cell.update({key: _mean(v) for key, v in values.items()}, seeds=len(values["train_s"]))
            cell["sd"] = {key: statistics.stdev(v) if len(v) > 1 else 0.0 for key, v in values.items()}
    return out


def ratio_table(summary: dict) -> str:
    """coldrec / LightFM per world: the defaults' row, and the tuned row where both were tuned."""
    header = ["world", "settings"] + [f"{s} {m}" for s in SCENARIOS for m in ("R@20", "N@20")] + ["train time"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for world, methods in summary.items():
        for ours_name, peer_name in PAIRS:
            if ours_name not in methods or peer_name not in methods:
                continue
            ours, peer = methods[ours_name], methods[peer_name]
            cells = [f"×{ours[f'{s} {m}'] / peer[f'{s} {m}']:.2f}" if peer[f"{s} {m}"] else "–" for s in SCENARIOS for m in METRICS]
            settings = "tuned" if "tuned" in ours_name else "defaults"
            lines.append(f"| {world} | {settings} | " + " | ".join(cells) + f" | ×{ours['train_s'] / peer['train_s']:.1f} |")
    return "\n".join(lines)


def tuned_table(summary: dict) -> str:
    """Each tuner's validation objective, trials and the settings LightFM's chose."""
    lines = ["| world | method | valid objective | warm | content-only users | content-only items | trials | search + fit s |", "|---|---|---|---|---|---|---|---|"]
    views = {"coldrec tuned": ("recall@20", "recall@20_user_view", "recall@20_item_view"),
             "LightFM tuned": ("warm", "cold_user", "cold_item")}
    for world, methods in summary.items():
        for method, keys in views.items():
            cell = methods.get(method)
            if cell is None:
                continue
            values = " | ".join(f"{cell.get(f'valid {key}', float('nan')):.4f}" for key in ("objective", *keys))
            lines.append(f"| {world} | {method} | {values} | {cell.get('valid trials', float('nan')):.0f} | {cell['train_s']:.0f} |")
    return "\n".join(lines)


def valid_table(summary: dict) -> str:
    """coldrec's own validation figures: what a default is chosen on (never the test files)."""
    header = ["world", "valid R@20", "valid R@20 content-only items", "valid R@20 content-only users", "epochs (best)", "train s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for world, methods in summary.items():
        cell = methods.get("coldrec", {})
        if f"valid {VALID_KEYS[0]}" not in cell:
            continue
        values = [f"{cell.get(f'valid {key}', float('nan')):.4f}" for key in VALID_KEYS]
        epochs = f"{cell.get('valid epochs', float('nan')):.1f} ({cell.get('valid best_epoch', float('nan')):.1f})"
        lines.append(f"| {world} | " + " | ".join(values) + f" | {epochs} | {cell['train_s']:.1f} |")
    return "\n".join(lines)


def full_table(summary: dict, facts: dict) -> str:
    header = ["world", "method"] + [f"{s} {m}" for s in SCENARIOS for m in ("R@20", "N@20")] + ["train s", "peak RSS MiB"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for world, methods in summary.items():
        for method in METHODS:
            if method not in methods:
                continue
            cell = methods[method]
            values = [f"{cell[f'{s} {m}']:.4f}" for s in SCENARIOS for m in METRICS]
            timing = [f"{cell['train_s']:.1f}", f"{cell['rss_mb']:.0f}"] if method in (*PAIRS[0], *PAIRS[1]) else ["–", "–"]
            lines.append(f"| {world} | {method} | " + " | ".join(values + timing) + " |")
    lines += ["", "| world | seeds | users | items | train samples | train clicks |", "|---|---|---|---|---|---|"]
    for world, fact in facts.items():
        lines.append(f"| {world} | {summary[world]['coldrec']['seeds']} | {fact['users']:,} | {fact['items']:,} | {fact['train_samples']:,} | {fact['train_clicks']:,} |")
    return "\n".join(lines)


def report(tasks: list[dict], args, started: float) -> None:
    order = {name: i for i, name in enumerate(WORLDS)}
    tasks = sorted(tasks, key=lambda t: (order[t["world"]], t["seed"]))
    summary = means(tasks)
    facts = {t["world"]: t["facts"] for t in tasks if t["seed"] == 0}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    text = "\n".join([
        f"Worlds benchmark, {time.strftime('%Y-%m-%d')}, commit {commit}; {args.seeds} seed(s) "
        f"(L: 1), means over seeds; {args.jobs} task(s) at a time, one thread per method; "
        f"whole run {(time.perf_counter() - started) / 60:.1f} min."
        + (f" coldrec with {', '.join(f'{k} = {v}' for k, v in args.train_set_parsed.items())}." if args.train_set_parsed else ""),
        "",
        "coldrec's validation figures (the valid split of train's time range; what defaults are chosen on):",
        "",
        valid_table(summary),
        "",
        "coldrec / LightFM hybrid (R@20, N@20 ratios; train time ratio, lower is faster):",
        "",
        ratio_table(summary),
        "",
        *([f"The tuned rows: each search's validation figures (budget {args.tune} each, one thread):", "", tuned_table(summary), ""]
          if any("tuned" in m for m in args.methods_parsed) else []),
        "Every method (means over seeds):",
        "",
        full_table(summary, facts),
    ])
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "worlds.md").write_text(text + "\n")
    (out / "worlds.json").write_text(json.dumps({"worlds": {w: WORLDS[w] for w in summary}, "lightfm": LIGHTFM, "coldrec_config": args.train_set_parsed, "tune_budget": args.tune,
                                                "tasks": tasks, "means": summary}, indent=2) + "\n")


def plot(peer: Path, out: Path) -> None:
    """worlds.png from worlds.json, drawn by matplotlib in the bench-only venv."""
    probe = subprocess.run([str(peer), "-c", "import matplotlib"], capture_output=True)
    if probe.returncode:
        subprocess.run([str(peer), "-m", "pip", "install", "-q", "matplotlib"], check=True)
    subprocess.run([str(peer), str(BENCH / "worlds_plot.py"), str(out / "worlds.json"), str(out / "worlds.png")], check=True)


def _setting(item: str, parser: argparse.ArgumentParser) -> tuple[str, Any]:
    """"training.negative_rate=4" -> ("training.negative_rate", 4): the value read as TOML (a
    bare word is a string)."""
    key, sep, value = item.partition("=")
    if not sep or "." not in key:
        parser.error(f"--train-set takes SECTION.KEY=VALUE, got {item!r}")
    try:
        return key, tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return key, value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worlds", default=",".join(DEFAULT_WORLDS), help=f"comma-separated, from: {', '.join(WORLDS)}".replace("%", "%%"))
    parser.add_argument("--large", action="store_true", help="also the L world (10M exposures, one seed)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per world (L: 1)")
    parser.add_argument("--jobs", type=int, default=1, help="(world, seed) tasks run at once; each method uses one thread")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS), help=f"comma-separated, from: {', '.join(METHODS)} (tuned ones: bench/tuned.py)")
    parser.add_argument("--tune", default="30m", metavar="BUDGET", help="wall time of each tuned method's search (default: 30m)")
    parser.add_argument("--train-set", action="append", default=[], metavar="KEY=VALUE",
                        help="a `coldrec train` config key for coldrec (repeatable), e.g. training.negative_rate=4")
    parser.add_argument("--out", default=str(OUT), help="directory of worlds.md, worlds.json and worlds.png (default: bench/out)")
    parser.add_argument("--peer-python", help="python of a venv with lightfm (default: bench/.venv-peers, built if missing)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.worlds.split(",") if n.strip()] + (["L"] if args.large else [])
    unknown = [n for n in names if n not in WORLDS]
    if unknown:
        parser.error(f"unknown world(s) {unknown}; choose from {list(WORLDS)}")
    methods = args.methods_parsed = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not set(methods) <= set(METHODS):
        parser.error(f"unknown method(s) {sorted(set(methods) - set(METHODS))}; choose from {list(METHODS)}")
    train_set = args.train_set_parsed = dict(_setting(item, parser) for item in args.train_set)
    started = time.perf_counter()
    peer = ensure_peer_python(args.peer_python)
    for name in names:
        if WORLDS[name] is None:
            ensure_movielens(None, engineered=name.endswith("engineered"))
    # Largest first, so that the last tasks to finish are short ones.
    tasks = sorted(((n, s) for n in dict.fromkeys(names) for s in range(1 if n == "L" else args.seeds)),
                   key=lambda t: -(WORLDS[t[0]] or {}).get("exposures_per_day", 3000) * (WORLDS[t[0]] or {}).get("days", 1))
    root = tempfile.mkdtemp(prefix="coldrec-worlds-")
    results = []
    try:
        # spawn, not fork: a forked child inherits polars' thread pool locked (deadlock).
        with ProcessPoolExecutor(max_workers=args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(run_task, n, s, str(peer), root, train_set, methods, args.tune): (n, s) for n, s in tasks}
            for future in as_completed(futures):
                result = future.result()
                results.append(result)
                line = " ".join(f"{m} " + "/".join(f"{r['metrics'][s]['recall@20']:.3f}" for s in SCENARIOS) + f" {r['train_s']:.0f}s"
                                for m, r in result["runs"].items())
                say(f"{result['world']} seed {result['seed']}: {line}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report(results, args, started)
    if {"coldrec", "LightFM hybrid"} <= set(methods):
        plot(peer, Path(args.out))


if __name__ == "__main__":
    main()
