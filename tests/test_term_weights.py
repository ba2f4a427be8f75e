"""coldrec.term_weights: the served terms' weights fitted on validation at the end of train."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from coldrec import term_weights
from coldrec.model import load_model
from coldrec.prepare import PrepareConfig, run_prepare
from coldrec.synth import SynthConfig, run_synth
from coldrec.train import run_train

torch.set_num_threads(1)
FAST = {"training.epochs": 2, "training.batch_size": 256, "model.hidden": [32], "model.dim": 16}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("terms")
    run_synth(SynthConfig(users=120, items=60, days=5, exposures_per_day=800, seed=4), root / "synth")
    run_prepare(root / "synth/exposures", root / "synth/clicks", root / "prep", PrepareConfig(valid_fraction=0.25, seed=1))
    return root


def _train(world: Path, out: Path, overrides: dict):
    return run_train(world / "prep", world / "synth/users.parquet", world / "synth/items.parquet", out, overrides={**FAST, **overrides})


def test_the_saved_model_serves_the_weights_that_were_measured(world, tmp_path):
    fitted = _train(world, tmp_path / "fitted", {"model.popularity_prior": 0.4, "model.profile_match": 0.1})
    served = fitted.served_terms
    assert served["configured"] == {"profile_match": 0.1, "profile_impute": 2.0, "popularity_prior": 0.4}
    assert served["after"] >= served["before"] and served["metric"] == "recall@20_mean_views"
    assert fitted.metrics["recall@20_mean_views"] == served["after"]
    saved = json.loads((tmp_path / "fitted/metrics.json").read_text())["served_terms"]
    assert saved["weights"] == served["weights"]
    chosen = {f"model.{key}": value for key, value in served["weights"].items()}
    # The same training served with the chosen weights as configured values, not fitted: the same figure.
    plain = _train(world, tmp_path / "plain", {**chosen, "model.fit_served": False})
    assert plain.served_terms == {} and plain.metrics["recall@20_mean_views"] == pytest.approx(served["after"], abs=1e-7)
    assert load_model(tmp_path / "fitted").config.model.popularity_prior == served["weights"]["popularity_prior"]


def test_a_weight_fitted_to_zero_leaves_its_term_out_of_the_saved_model(world, tmp_path, monkeypatch):
    monkeypatch.setattr(term_weights, "GRID", (0.0,))
    monkeypatch.setattr(term_weights, "MIN_GAIN", -1.0)  # take every candidate: every weight goes to 0
    result = _train(world, tmp_path / "m", {})
    assert result.served_terms["weights"] == {"profile_match": 0.0, "profile_impute": 0.0, "popularity_prior": 0.0}
    loaded = load_model(tmp_path / "m")  # strict: the weights file holds exactly what the config builds
    assert len(loaded.model.terms) == 0 and loaded.dim == 16
    assert loaded.config.model.profile_match == 0.0 and loaded.config.model.popularity_prior == 0.0
