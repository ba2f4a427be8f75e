"""training.restore_best: end with the best validation epoch's weights, or the last epoch's."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file

from coldrec.train import run_train

torch.set_num_threads(1)
FAST = {"training.epochs": 4, "training.batch_size": 128, "model.hidden": [16], "model.dim": 8, "training.lr": 0.05}


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


def test_restore_best_false_keeps_the_last_epoch(world, tmp_path):
    last = _train(world, "with_valid", tmp_path / "last", **{"training.restore_best": False})
    _train(world, "train_only", tmp_path / "plain")  # no validation: always the last epoch
    assert last.epochs == 4
    a, b = _weights(tmp_path / "last"), _weights(tmp_path / "plain")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    best = _train(world, "with_valid", tmp_path / "best")
    c = _weights(tmp_path / "best")
    same = all(torch.equal(a[k], c[k]) for k in a)
    assert same == (best.best_epoch == best.epochs), (best.best_epoch, best.epochs)
