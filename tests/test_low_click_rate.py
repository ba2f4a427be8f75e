"""A planted world at a 2% click rate: the default training (every click, 4 sampled
non-clicks per click, importance-weighted) still recovers the planted tastes."""

from __future__ import annotations

import os

import polars as pl

from coldrec.model import load_model
from coldrec.prepare import PrepareConfig, run_prepare
from coldrec.synth import SynthConfig, run_synth, top_k_overlap, true_affinity
from coldrec.train import run_train


def test_default_training_at_a_two_percent_click_rate_recovers_the_planted_tastes(tmp_path, capsys):
    seed = int(os.environ.get("COLDREC_TEST_SEED", "3"))  # to check other worlds by hand
    run_synth(SynthConfig(users=400, items=150, days=10, exposures_per_day=12000, click_rate=0.02, seed=seed), tmp_path / "synth")
    run_prepare(tmp_path / "synth/exposures", tmp_path / "synth/clicks", tmp_path / "prep", PrepareConfig(valid_fraction=0.2, holdout_items=0.2, seed=seed))
    train = pl.read_parquet(tmp_path / "prep/train.parquet")
    assert 0.015 < train["label"].mean() < 0.03
    run_train(tmp_path / "prep", tmp_path / "synth/users.parquet", tmp_path / "synth/items.parquet", tmp_path / "model")
    assert "(training.negative_rate)" in capsys.readouterr().err  # negatives were sampled, and it says so
    model = load_model(tmp_path / "model")
    users = pl.read_parquet(tmp_path / "synth/users.parquet").sort("user_id")
    items = pl.read_parquet(tmp_path / "synth/items.parquet").sort("item_id")
    user_vectors, _ = model.embed_users(users)
    item_vectors, cold = model.embed_items(items)  # the held-out items from content alone
    truth = true_affinity(tmp_path / "synth/truth", users["user_id"].to_list(), items["item_id"].to_list())  # (U, I)
    k = 10
    precision = top_k_overlap(truth, user_vectors @ item_vectors.T, k)
    chance = k / len(items)
    print(f"2% clicks: precision@{k} of the true top items {precision:.3f}, chance {chance:.3f}, {int(cold.sum())} items content-only")
    assert precision > 2 * chance, (precision, chance)  # measured 0.23, 0.21, 0.23 (worlds 3, 4, 5) against 0.06
