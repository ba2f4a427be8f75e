"""A run with validation ends with its best epoch's weights; removed keys are refused."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from coldrec.train import run_train

torch.set_num_threads(1)
FAST = {"training.epochs": 4, "training.patience": 0, "training.batch_size": 128, "model.hidden": [16], "model.dim": 8, "training.lr": 0.05}


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_labelled):
    root = tmp_path_factory.mktemp("restore")
    (root / "synth").symlink_to(tiny_labelled / "synth")
    with_valid, train_only = root / "with_valid", root / "train_only"
    for directory in (with_valid, train_only):
        directory.mkdir()
        shutil.copy(tiny_labelled / "train.parquet", directory / "train.parquet")
    shutil.copy(tiny_labelled / "valid.parquet", with_valid / "valid.parquet")
    return root


def _weights(path):
    return load_file(str(path / "weights.safetensors"))


def _train(world, samples, out, **overrides):
    return run_train(world / samples, world / "synth/users.parquet", world / "synth/items.parquet", out, overrides={**FAST, **overrides})


def test_the_best_validation_epoch_is_restored(world, tmp_path):
    _train(world, "train_only", tmp_path / "plain")  # no validation: the last epoch's weights
    best = _train(world, "with_valid", tmp_path / "best")
    a, c = _weights(tmp_path / "plain"), _weights(tmp_path / "best")
    assert a.keys() == c.keys() and 1 <= best.best_epoch <= best.epochs == 4
    same = all(torch.equal(a[k], c[k]) for k in a)
    assert same == (best.best_epoch == best.epochs), (best.best_epoch, best.epochs)


@pytest.mark.parametrize("key", ["training.restore_best", "model.content_aux_weight"])
def test_removed_keys_are_refused_with_the_reason(world, tmp_path, key):
    from coldrec.errors import ConfigError

    with pytest.raises(ConfigError, match="removed in 0.2"):
        _train(world, "with_valid", tmp_path / "out", **{key: False if key.startswith("training") else 0.5})
    assert not (tmp_path / "out").exists()


def test_patience_stops_after_that_many_epochs_without_a_gain(world, tmp_path):
    result = _train(world, "with_valid", tmp_path / "p", **{"training.epochs": 30, "training.patience": 2})
    history = [r for r in map(json.loads, (tmp_path / "p/train_log.jsonl").read_text().splitlines()) if "epoch" in r]
    assert result.epochs == len(history) < 30 and history[-1]["stopped"]  # it stopped early
    assert result.epochs == result.best_epoch + 2 and not any(r["improved"] for r in history[result.best_epoch:])
