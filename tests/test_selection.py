"""training.select_on: choosing the epoch on Recall@K averaged with its content-only views."""

from __future__ import annotations

import copy
import json

import polars as pl
import pytest
import torch

from coldrec.config import load_config
from coldrec.errors import ConfigError
from coldrec.features import encode_dataset, fit_spec
from coldrec.model import build_model
from coldrec.train import build_validation, evaluate_recall, run_train

torch.set_num_threads(1)
FAST = {"training.epochs": 4, "training.patience": 0, "training.batch_size": 128, "model.hidden": [16], "model.dim": 8, "training.lr": 0.05}


def test_views_are_recall_with_the_preference_blocks_zeroed(tiny_labelled):
    config = load_config(None, {**FAST, "training.select_on": "mean_views"})
    train = pl.read_parquet(tiny_labelled / "train.parquet")
    valid = pl.read_parquet(tiny_labelled / "valid.parquet")
    users = pl.read_parquet(tiny_labelled / "synth/users.parquet")
    items = pl.read_parquet(tiny_labelled / "synth/items.parquet")
    spec = fit_spec(train, users, items, config.features)
    data = encode_dataset(spec, {"train": train, "valid": valid}, users, items)
    validation = build_validation(data, config)
    torch.manual_seed(0)
    model = build_model(spec, config.model)
    cpu = torch.device("cpu")
    metrics = evaluate_recall(model, data, validation, 20, cpu, views=True)
    assert "recall@20_item_view" not in evaluate_recall(model, data, validation, 20, cpu)  # views only on request
    three = (metrics["recall@20"], metrics["recall@20_item_view"], metrics["recall@20_user_view"])
    assert metrics["recall@20_mean_views"] == pytest.approx(sum(three) / 3)
    # No stats here, so the preference block is the id embedding: zeroing a side's id table
    # serves every entity of that side as a cold one, which is what each view ranks with.
    for side, key in (("item", "recall@20_item_view"), ("user", "recall@20_user_view")):
        cold = copy.deepcopy(model)
        with torch.no_grad():
            getattr(cold, side).id_embedding.weight.zero_()
        assert evaluate_recall(cold, data, validation, 20, cpu)["recall@20"] == pytest.approx(metrics[key], abs=1e-9)
    # The preference blocks matter to this model, so the views are not the plain recall.
    assert metrics["recall@20_item_view"] != metrics["recall@20"] or metrics["recall@20_user_view"] != metrics["recall@20"]


def test_select_on_mean_views_restores_its_best_epoch(tiny_labelled, tmp_path):
    out = tmp_path / "model"
    result = run_train(tiny_labelled, tiny_labelled / "synth/users.parquet", tiny_labelled / "synth/items.parquet", out, overrides={**FAST, "training.select_on": "mean_views"})
    history = [r for r in map(json.loads, (out / "train_log.jsonl").read_text().splitlines()) if "epoch" in r]
    scores = [record["recall@20_mean_views"] for record in history]
    assert len(history) == 4 and all("recall@20_item_view" in r and "recall@20_user_view" in r for r in history)
    assert result.metric == "recall@20_mean_views"
    assert result.best_epoch == scores.index(max(scores)) + 1  # the first epoch with the best mean
    assert result.best_metric == pytest.approx(max(scores))
    plain = run_train(tiny_labelled, tiny_labelled / "synth/users.parquet", tiny_labelled / "synth/items.parquet", tmp_path / "plain", overrides={**FAST, "training.select_on": "recall"})
    assert plain.metric == "recall@20"  # Recall@K alone, no views computed
    assert not any("recall@20_mean_views" in line for line in (tmp_path / "plain/train_log.jsonl").read_text().splitlines())


def test_select_on_is_validated():
    assert load_config(None).training.select_on == "mean_views"  # the default
    with pytest.raises(ConfigError, match="select_on"):
        load_config(None, {"training.select_on": "ndcg"})
