"""The tuned rows of bench/worlds.py: `coldrec tune` against LightFM tuned with the same budget.

    .venv/bin/python bench/worlds.py --tune 30m --methods "coldrec,LightFM hybrid,coldrec tuned,LightFM tuned"

Both searches see train and the validation split only (never a test file), on one thread,
with the same wall-time budget and the same objective: the mean validation Recall@20 as
served, with content-only items and with content-only users (the world's held-out sides).
- coldrec tuned: `coldrec tune --budget B --seed S`, then `coldrec train --config best.toml`
  and `coldrec embed`. Its time is the tune's plus the retrain's.
- LightFM tuned: an Optuna study with the same sampler (TPE, seed S, 5 random startup
  trials) over components, epochs, learning rate and user / item alpha. Each trial fits in
  the peer venv; trials start until the budget is spent. The best trial's fit is the one
  tested (a refit with its seed is the same model). Its time is the study's.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from worlds import World, coldrec, coldrec_defaults, content_tables, dot_scorer, lightfm_payload, lightfm_vectors, rank, run_lightfm

from coldrec.tune import parse_budget  # noqa: E402 (worlds puts the repository on sys.path)

# LightFM's search space: components, epochs, learning rate, regularisation.
LIGHTFM_SPACE = {
    "components": lambda t: t.suggest_categorical("components", [16, 32, 64, 128]),
    "epochs": lambda t: t.suggest_int("epochs", 5, 80, step=5),
    "lr": lambda t: t.suggest_float("lr", 0.005, 0.2, log=True),
    "user_alpha": lambda t: t.suggest_float("user_alpha", 1e-8, 1e-3, log=True),
    "item_alpha": lambda t: t.suggest_float("item_alpha", 1e-8, 1e-3, log=True),
}
VIEWS = {"warm": ("", ""), "cold_user": ("_c", ""), "cold_item": ("", "_c")}


def coldrec_tuned(world: World, seed: int, work: Path, budget: str) -> tuple:
    """`coldrec tune` within the budget, then the defaults' train + embed with best.toml."""
    tune = work / "tune"
    users, items = content_tables(world, work)
    seconds, rss = coldrec("tune", "--samples", world.prep, "--users", users, "--items", items,
                           "--out", tune, "--budget", budget, "--seed", seed, "--threads", 1)
    manifest = json.loads((tune / "manifest.json").read_text())
    best = {"objective": manifest["extra"]["best_value"], "trials": manifest["row_counts"]["trials"], "tune_s": seconds}
    scorer, train_s, train_rss = coldrec_defaults(world, seed, work, {}, config=tune / "best.toml")
    world.valid.update(best)
    return scorer, seconds + train_s, max(rss, train_rss)


def lightfm_objective(world: World, result: dict[str, np.ndarray]) -> dict[str, float]:
    """Validation Recall@20 of a LightFM fit as served and through the content-only views."""
    return {name: rank(world, "valid", dot_scorer(*lightfm_vectors(result, *views)))["recall@20"] for name, views in VIEWS.items()}


def lightfm_tuned(world: World, peer: Path, seed: int, work: Path, budget: str) -> tuple:
    """An Optuna TPE study of LightFM's settings on the validation split, within the budget."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    payload, limit = lightfm_payload(world, seed), parse_budget(budget)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=5))
    best: dict[str, Any] = {"value": -math.inf}
    rss_max, started = 0.0, time.perf_counter()
    while time.perf_counter() - started < limit:
        trial = study.ask()
        params = {name: draw(trial) for name, draw in LIGHTFM_SPACE.items()}
        result, _, rss = run_lightfm(peer, payload, params, work)
        rss_max = max(rss_max, rss)
        values = lightfm_objective(world, result)
        value = sum(values.values()) / len(values)
        study.tell(trial, value)
        if value > best["value"]:
            best = {"value": value, "result": result, "params": params, "values": values}
    seconds = time.perf_counter() - started
    world.valid = {"objective": best["value"], "trials": len(study.trials), **best["values"],
                   **{f"param {k}": v for k, v in best["params"].items()}}
    return dot_scorer(*lightfm_vectors(best["result"])), seconds, rss_max
