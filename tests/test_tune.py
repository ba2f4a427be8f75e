"""coldrec tune: trials scored on validation, a study that resumes, best.toml that trains
the model its trial measured, and failures that exit 2 without losing the study."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import polars as pl
import pytest

from coldrec import tune
from coldrec.errors import Diverged, UsageError
from coldrec.prepare import PrepareConfig, run_prepare
from coldrec.synth import SynthConfig, run_synth

BASE = "[training]\nepochs = 2\nbatch_size = 256\n"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tune")
    run_synth(SynthConfig(users=80, items=40, days=4, exposures_per_day=500, seed=3), root / "synth")
    run_prepare(root / "synth/exposures", root / "synth/clicks", root / "prep",
                PrepareConfig(valid_fraction=0.25, holdout_items=0.1, holdout_users=0.1, seed=1))
    (root / "base.toml").write_text(BASE)
    return root


def _args(world: Path, out: Path, *extra) -> list:
    return ["tune", "--samples", world / "prep", "--users", world / "synth/users.parquet", "--items", world / "synth/items.parquet",
            "--config", world / "base.toml", "--out", out, *extra]


def _states(out: Path) -> list[tuple[int, str]]:
    with sqlite3.connect(out / "study.db") as db:
        return db.execute("SELECT number, state FROM trials ORDER BY number").fetchall()


def test_budgets_and_objectives_are_parsed_or_refused(world):
    assert tune.parse_budget("30m") == 1800 and tune.parse_budget("1.5h") == 5400 and tune.parse_budget("90s") == 90
    for bad in ("30", "-1m", "0m", "soon"):
        with pytest.raises(UsageError, match="--budget"):
            tune.parse_budget(bad)
    assert tune.objective_scenarios(None, world / "prep") == ("warm", "cold_user", "cold_item")  # prepare held both out
    assert tune.objective_scenarios("cold_item, warm", world / "prep") == ("cold_item", "warm")
    with pytest.raises(UsageError, match="unknown scenario 'cold'"):
        tune.objective_scenarios("warm,cold", world / "prep")


def test_a_resumed_study_continues_and_best_toml_trains_the_model_its_trial_measured(world, tmp_path, run_cli):
    out = tmp_path / "tune"
    code, _, err = run_cli(*_args(world, out, "--trials", 2))
    assert code == 0, err
    first = pl.read_csv(out / "trials.csv")
    assert first["trial"].to_list() == [0, 1] and first["state"].to_list() == ["complete", "complete"]
    code, _, err = run_cli(*_args(world, out, "--trials", 3))  # the same command, one more trial
    assert code == 0, err
    assert "resuming the study" in err and "3 trial(s)" in err
    trials = pl.read_csv(out / "trials.csv")
    assert trials.height == 3 and trials.head(2).equals(first)  # the earlier trials are kept as they were
    best = trials.filter(pl.col("state") == "complete").sort("value", descending=True).row(0, named=True)
    assert f"trial {best['trial']} of 3" in (out / "best.toml").read_text()
    assert "Objective by trial" in (out / "report.html").read_text()

    code, _, err = run_cli("train", "--samples", world / "prep", "--users", world / "synth/users.parquet",
                           "--items", world / "synth/items.parquet", "--config", out / "best.toml", "--out", tmp_path / "model")
    assert code == 0, err
    metrics = json.loads((tmp_path / "model/metrics.json").read_text())
    measured = tune.scenario_values(metrics, 20, ("warm", "cold_user", "cold_item"))
    assert measured == pytest.approx({name: best[name] for name in measured}, abs=1e-6)  # the same model, retrained


def test_a_trial_that_fails_on_bad_input_exits_2_and_the_study_goes_on_after_the_fix(world, tmp_path, run_cli):
    bad_items = tmp_path / "items.parquet"
    pl.read_parquet(world / "synth/items.parquet").rename({"item_id": "id"}).write_parquet(bad_items)
    out = tmp_path / "tune"
    args = _args(world, out, "--trials", 2)
    code, _, err = run_cli(*[bad_items if a == world / "synth/items.parquet" else a for a in args])
    assert code == 2 and "item_id" in err
    assert _states(out) == [(0, "FAIL")]  # the study survives with the failed trial
    code, _, err = run_cli(*args)
    assert code == 0, err
    assert _states(out) == [(0, "FAIL"), (1, "COMPLETE")]  # --trials counts every finished trial


def test_a_study_with_finished_trials_refuses_other_inputs(world, tmp_path, run_cli):
    out = tmp_path / "tune"
    assert run_cli(*_args(world, out, "--trials", 1))[0] == 0
    users = pl.read_parquet(world / "synth/users.parquet")
    users.head(users.height - 1).write_parquet(tmp_path / "users.parquet")
    args = [tmp_path / "users.parquet" if a == world / "synth/users.parquet" else a for a in _args(world, out, "--trials", 2)]
    code, _, err = run_cli(*args)
    assert code == 2 and "holds a study of other inputs" in err and "study.db" in err
    assert _states(out) == [(0, "COMPLETE")]


def test_a_diverged_trial_fails_alone(world, tmp_path, monkeypatch):
    calls = []
    real = tune.run_train

    def first_diverges(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise Diverged("the loss became nan in epoch 1")
        return real(*args, **kwargs)

    monkeypatch.setattr(tune, "run_train", first_diverges)
    result = tune.run_tune(world / "prep", world / "synth/users.parquet", world / "synth/items.parquet", tmp_path / "t",
                           config=world / "base.toml", trials=2, objective="warm")
    assert (result.failed, result.complete, result.best_trial) == (1, 1, 1)
    assert set(result.best_values) == {"warm"} and result.best_value == result.best_values["warm"]
