"""Model, index and config files are data, never code.

A crafted pickle whose __reduce__ would run code is planted where coldrec reads weights,
checkpoints and index vectors: every command refuses it (exit 2, one line) and the code
never runs (its marker file is never created). Configs are TOML read with tomllib, and no
module of the package evaluates strings or unpickles anything.
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "coldrec"


class Exploit:
    """Unpickling this creates `marker` (what an attacker's payload would do instead)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def evil_pickle(marker: Path) -> bytes:
    return pickle.dumps({"model.weight": Exploit(marker)})


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One finished tiny pipeline run (model, embeddings, index)."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("make_corpus", Path(__file__).parent / "bad_inputs" / "make_corpus.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_corpus"] = module
    spec.loader.exec_module(module)
    base = module.build_base(tmp_path_factory.mktemp("security") / "base")
    return (base / "root" / "current").resolve()


def refused(run_cli, marker: Path, *args) -> str:
    code, _, err = run_cli(*args)
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not marker.exists(), "the pickle's payload ran"
    return err


def test_the_exploit_really_runs_when_unpickled(tmp_path):
    # Guard against a vacuous test: the payload works when something does unpickle it.
    marker = tmp_path / "marker"
    pickle.loads(evil_pickle(marker))
    assert marker.exists()


def test_pickled_weights_under_the_safetensors_name_are_refused(trained, tmp_path, run_cli):
    model = tmp_path / "model"
    shutil.copytree(trained / "train", model)
    marker = tmp_path / "marker"
    (model / "weights.safetensors").write_bytes(evil_pickle(marker))
    err = refused(run_cli, marker, "embed", "--model", model, "--items", trained.parent.parent.parent / "data" / "items.parquet", "--out", tmp_path / "e.parquet")
    assert "weights" in err
    assert not (tmp_path / "e.parquet").exists()


def test_a_model_with_only_a_pickled_weights_pt_is_refused(trained, tmp_path, run_cli):
    model = tmp_path / "model"
    shutil.copytree(trained / "train", model)
    marker = tmp_path / "marker"
    (model / "weights.safetensors").unlink()
    (model / "weights.pt").write_bytes(evil_pickle(marker))
    err = refused(run_cli, marker, "embed", "--model", model, "--items", trained.parent.parent.parent / "data" / "items.parquet", "--out", tmp_path / "e.parquet")
    assert "weights.safetensors" in err


def test_pickled_weights_are_refused_as_a_warm_start(trained, tmp_path, run_cli):
    model = tmp_path / "model"
    shutil.copytree(trained / "train", model)
    marker = tmp_path / "marker"
    (model / "weights.safetensors").write_bytes(evil_pickle(marker))
    data = trained.parent.parent.parent / "data"
    refused(
        run_cli, marker, "train", "--samples", trained / "prepare", "--users", data / "users.parquet", "--items", data / "items.parquet",
        "--out", tmp_path / "m2", "--init-from", model, "--epochs", "1", "--dim", "8",
    )
    assert not (tmp_path / "m2").exists()


def test_pickled_index_vectors_are_refused(trained, tmp_path, run_cli):
    index = tmp_path / "index"
    shutil.copytree(trained / "index", index)
    marker = tmp_path / "marker"
    vectors = np.empty(1, dtype=object)
    vectors[0] = Exploit(marker)
    with open(index / "vectors.npy", "wb") as handle:
        np.save(handle, vectors, allow_pickle=True)
    refused(run_cli, marker, "recall", "--index", index, "--queries", trained / "embed" / "users.parquet", "--out", tmp_path / "r.parquet")
    (index / "vectors.npy").write_bytes(evil_pickle(marker))  # a bare pickle under the .npy name
    refused(run_cli, marker, "recall", "--index", index, "--queries", trained / "embed" / "users.parquet", "--out", tmp_path / "r.parquet")
    assert not (tmp_path / "r.parquet").exists()


def test_config_values_are_data_not_code(trained, tmp_path, run_cli):
    marker = tmp_path / "marker"
    config = tmp_path / "train.toml"
    config.write_text(f"[training]\nepochs = \"__import__('os').system('touch {marker}')\"\n")
    data = trained.parent.parent.parent / "data"
    err = refused(
        run_cli, marker, "train", "--samples", trained / "prepare", "--users", data / "users.parquet", "--items", data / "items.parquet",
        "--out", tmp_path / "m", "--config", config,
    )
    assert "training.epochs" in err


EVAL_PATTERNS = [
    r"(?<![.\w])eval\(",  # model.eval() (torch's mode switch) is fine: preceded by '.'
    r"(?<![.\w])exec\(",
    r"\bimport (c?pickle|marshal|dill|shelve|joblib)\b",
    r"\b(pickle|marshal|dill|joblib)\.load",
    r"\byaml\.load\(",
    r"allow_pickle\s*=\s*True",
    r"weights_only\s*=\s*False",
]


def test_no_module_evaluates_strings_or_unpickles():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if any(re.search(pattern, code) for pattern in EVAL_PATTERNS):
                offenders.append(f"{path.name}:{number}: {line.strip()}")
            if "torch.load(" in code and "weights_only=True" not in code:
                offenders.append(f"{path.name}:{number}: torch.load without weights_only=True")
    assert not offenders, "\n".join(offenders)


def test_configs_are_parsed_with_tomllib():
    for name in ("config.py", "pipeline.py"):
        source = (PACKAGE / name).read_text()
        assert "tomllib.loads(" in source
        assert "import toml\n" not in source and "tomli" not in source
