"""`coldrec tune`: search the training configuration on the validation split, with Optuna.

Each trial is a real `coldrec train` (run_train) with the base config and a drawn setting of
SPACE's keys, scored on the validation split at the epoch that training keeps. The score is
the mean Recall@K of the objective's scenarios, each read from validation as the model will
meet it:
- warm: Recall@K as served (the split's users and items, ids and statistics included);
- cold_user: with every user's preference block zeroed (content-only users);
- cold_item: with every item's preference block zeroed (content-only items).
By default the objective holds warm and the cold scenarios that `coldrec prepare` held users
or items out for: one model must serve all of them.

Optuna's TPE sampler draws the settings; its median pruner stops a trial whose per-epoch
score falls below the median of earlier trials at the same epoch. The study lives in
OUT/study.db (SQLite), so an interrupted tune resumes where it stopped, and records the
inputs it was started on: a study that has finished trials refuses other inputs. Each trial
trains in a temporary directory under OUT that is removed afterwards; OUT gets best.toml
(for `coldrec train --config`), trials.csv, report.html and manifest.json, rewritten
atomically after the search, and after a failure with what there is.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import polars as pl

from coldrec import io, log
from coldrec.config import TrainConfig, load_config
from coldrec.errors import Diverged, UsageError
from coldrec.result import StageResult
from coldrec.train import run_train
from coldrec.tune_report import render_report

STUDY_FILE = "study.db"
STUDY_NAME = "coldrec-tune"
DEFAULT_TRIALS = 20
# Scenario -> the suffix of its validation Recall@K in a train epoch record.
SCENARIOS = {"warm": "", "cold_user": "_user_view", "cold_item": "_item_view"}


@dataclass(frozen=True)
class Param:
    """One searched config key: a float range (log-scaled or not) or a list of choices."""

    key: str
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    choices: tuple = ()

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.choices:
            value = trial.suggest_categorical(self.key, self.choices)
            return [int(w) for w in value.split("-")] if self.key == "model.hidden" else value
        return trial.suggest_float(self.key, self.low, self.high, log=self.log)


# What a trial draws; every other key comes from the base --config (or the defaults).
SPACE = (
    Param("training.lr", 1e-3, 1e-2, log=True),
    Param("training.weight_decay", 1e-6, 1e-3, log=True),
    Param("training.negative_rate", choices=(1.0, 2.0, 4.0, 8.0)),
    Param("model.dim", choices=(32, 64, 128)),
    Param("model.hidden", choices=("128", "256-128", "512-256")),
    Param("model.embedding_dim", choices=(16, 32, 64)),
    Param("model.user_dropout_rate", 0.1, 0.8),
    Param("model.item_dropout_rate", 0.1, 0.8),
    Param("loss.scale", 10.0, 30.0),
    Param("loss.pointwise_weight", choices=(0.0, 0.1, 0.3)),
)


@dataclass
class TuneResult(StageResult):
    SKIPPED = ("best_values",)

    out: Path
    trials: int  # in the study, earlier runs included
    complete: int
    pruned: int
    failed: int
    best_trial: int
    best_value: float
    seconds: float
    best_values: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        counts = f"{self.trials} trial(s): {self.complete} complete, {self.pruned} pruned, {self.failed} failed"
        parts = ", ".join(f"{name} {value:.4f}" for name, value in self.best_values.items())
        return f"tune: {counts}; best {self.best_value:.4f} (trial {self.best_trial}: {parts}) -> {self.out / 'best.toml'} ({self.seconds:.1f}s)"

    def extra_fields(self) -> dict[str, Any]:
        return {f"best_{name}": value for name, value in self.best_values.items()}


def parse_budget(budget: str | None) -> float | None:
    """"30m" / "2h" / "90s" / "1.5h" -> seconds; None -> None."""
    if budget is None:
        return None
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh])\s*", budget)
    if not match or float(match.group(1)) <= 0:
        raise UsageError(f"--budget must be a positive duration with a unit, got '{budget}'", hint="e.g. --budget 30m, 2h or 90s")
    return float(match.group(1)) * {"s": 1, "m": 60, "h": 3600}[match.group(2)]


def objective_scenarios(objective: str | None, samples_dir: Path) -> tuple[str, ...]:
    """The scenarios the score averages: as given, or warm plus the split's held-out sides."""
    manifest = io.read_manifest(samples_dir)
    if manifest.get("row_counts", {}).get("valid", 1) == 0:
        raise UsageError("the validation split is empty: tune scores trials on it", path=samples_dir / "valid.parquet",
                         hint="rerun coldrec prepare with --valid-fraction > 0 (e.g. 0.1)")
    if objective is None:
        held = manifest.get("parameters", {})
        return ("warm",) + (("cold_user",) if held.get("holdout_users") else ()) + (("cold_item",) if held.get("holdout_items") else ())
    names = tuple(dict.fromkeys(name.strip() for name in objective.split(",") if name.strip()))
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown or not names:
        raise UsageError(f"--objective: unknown scenario '{unknown[0] if unknown else objective}'", hint=f"a comma-separated list of {', '.join(SCENARIOS)}")
    return names


def scenario_values(record: dict[str, Any], k: int, scenarios: tuple[str, ...]) -> dict[str, float]:
    """{scenario: validation Recall@K} of a train epoch record (or a model's metrics)."""
    return {name: float(record[f"recall@{k}{SCENARIOS[name]}"]) for name in scenarios if f"recall@{k}{SCENARIOS[name]}" in record}


def run_tune(
    samples_dir: str | Path,
    users: str | Path,
    items: str | Path,
    out: str | Path,
    *,
    stats: str | Path | None = None,
    config: str | Path | None = None,
    trials: int | None = None,
    budget: str | None = None,
    objective: str | None = None,
    seed: int = 0,
    threads: int = 0,
) -> TuneResult:
    """Search SPACE on the validation split; write OUT/best.toml, trials.csv, report.html."""
    started = time.perf_counter()
    samples_dir, out = Path(samples_dir), Path(out)
    base = load_config(config)
    scenarios = objective_scenarios(objective, samples_dir)
    if any(name != "warm" for name in scenarios) and base.training.select_on != "mean_views":
        raise UsageError("the cold scenarios are scored on the content-only views of validation", path=config,
                         hint='set training.select_on = "mean_views" or use --objective warm')
    seconds = parse_budget(budget)
    if trials is not None and trials < 1:
        raise UsageError(f"--trials must be >= 1, got {trials}")
    trials = DEFAULT_TRIALS if trials is None and seconds is None else trials
    inputs = io.input_fingerprints(samples=samples_dir, users=users, items=items, stats=stats)
    with io.output_lock(out, "tune"):
        study = _open_study(out, seed, {"inputs": inputs, "objective": list(scenarios), "base": _digest(base)})
        objective_fn = _Trial(samples_dir, Path(users), Path(items), Path(stats) if stats else None, base, scenarios, out, threads, started, seconds)
        try:
            _optimize(study, objective_fn, trials, seconds)
        finally:
            _write_outputs(out, study, config, scenarios, base, inputs, time.perf_counter() - started)
    return _result(out, study, scenarios, time.perf_counter() - started)


def _digest(config: TrainConfig) -> str:
    return hashlib.sha256(config.to_toml().encode()).hexdigest()[:16]


def _open_study(out: Path, seed: int, identity: dict[str, Any]) -> optuna.Study:
    """OUT/study.db, created or resumed; a study with finished trials must match `identity`."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / STUDY_FILE).is_file())):
        raise UsageError(f"exists and is not a coldrec tune directory (no {STUDY_FILE})", path=out, hint="choose a new --out")
    out.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    study = optuna.create_study(
        storage=f"sqlite:///{out / STUDY_FILE}", study_name=STUDY_NAME, load_if_exists=True, direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=5),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1),
    )
    finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    before = study.user_attrs.get("identity")
    if finished and before is not None and before != identity:
        changed = ", ".join(key for key in identity if identity[key] != before.get(key))
        raise UsageError(f"holds a study of other {changed} ({len(finished)} finished trial(s))", path=out / STUDY_FILE,
                         hint="tune into a new --out, or delete the study file to start over")
    study.set_user_attr("identity", identity)
    for trial in study.trials:  # left running by a run that was killed: this run holds the lock
        if trial.state == optuna.trial.TrialState.RUNNING:
            study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
    if len(study.trials):
        log.info(f"resuming the study in {out / STUDY_FILE}: {len(study.trials)} trial(s) so far")
    return study


def _optimize(study: optuna.Study, objective_fn: "_Trial", trials: int | None, seconds: float | None) -> None:
    done = len([t for t in study.trials if t.state.is_finished()])
    remaining = None if trials is None else max(0, trials - done)
    if remaining == 0:
        log.info(f"the study already has {done} finished trial(s) (--trials {trials}): nothing to run")
        return
    with log.progress("tune", total=remaining) as bar:
        def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            best = _best(study)
            status = f"best {best.value:.4f} (trial {best.number})" if best else "no trial finished yet"
            bar.advance(status=status)
            log.info(f"trial {trial.number} {_describe(trial)}; {status}")

        study.optimize(objective_fn, n_trials=remaining, timeout=seconds, callbacks=[after_trial], catch=())


class _Trial:
    """The objective: one training run with the trial's setting, scored on validation."""

    def __init__(self, samples_dir: Path, users: Path, items: Path, stats: Path | None, base: TrainConfig,
                 scenarios: tuple[str, ...], out: Path, threads: int, started: float, budget_s: float | None) -> None:
        self.samples_dir, self.users, self.items, self.stats = samples_dir, users, items, stats
        self.base, self.scenarios, self.out, self.threads = base, scenarios, out, threads
        self.started, self.budget_s = started, budget_s
        self.k = base.training.recall_k

    def __call__(self, trial: optuna.Trial) -> float:
        overrides: dict[str, Any] = {param.key: param.suggest(trial) for param in SPACE}
        if self.budget_s is not None:  # a trial ends within the budget: no epoch starts past it
            left = max(self.budget_s - (time.perf_counter() - self.started), 1.0) / 60.0
            overrides["training.max_minutes"] = min(left, self.base.training.max_minutes or left)
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(dir=self.out, prefix=".trial-") as work, log.muted():
            try:
                result = run_train(self.samples_dir, self.users, self.items, Path(work) / "model", stats=self.stats,
                                   config=self.base, overrides=overrides, threads=self.threads, on_epoch_end=self._pruner(trial))
            except Diverged as error:
                trial.set_user_attr("error", str(error))
                return math.nan  # a failed trial: the study goes on
        values = scenario_values(result.metrics, self.k, self.scenarios)
        for name, value in values.items():
            trial.set_user_attr(name, value)
        trial.set_user_attr("best_epoch", result.best_epoch)
        trial.set_user_attr("epochs", result.epochs)
        trial.set_user_attr("seconds", round(time.perf_counter() - started, 1))
        return sum(values.values()) / len(values) if len(values) == len(self.scenarios) else math.nan

    def _pruner(self, trial: optuna.Trial):
        def on_epoch_end(epoch: int, record: dict[str, Any]) -> None:
            values = scenario_values(record, self.k, self.scenarios)
            if len(values) == len(self.scenarios):
                trial.report(sum(values.values()) / len(values), epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"epoch {epoch} below the median of earlier trials")

        return on_epoch_end


def _best(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    return max(complete, key=lambda t: t.value) if complete else None


def _describe(trial: optuna.trial.FrozenTrial) -> str:
    if trial.state == optuna.trial.TrialState.COMPLETE:
        return f"{trial.value:.4f} in {trial.user_attrs.get('seconds', 0):.0f}s"
    if trial.state == optuna.trial.TrialState.PRUNED:
        return f"pruned after epoch {trial.last_step}"
    return f"failed: {trial.user_attrs.get('error', 'see the log above')}"


def best_overrides(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """The trial's setting as config overrides ({"model.hidden": [256, 128], ...})."""
    return {key: [int(w) for w in value.split("-")] if key == "model.hidden" else value for key, value in trial.params.items()}


def trials_frame(study: optuna.Study, scenarios: tuple[str, ...]) -> pl.DataFrame:
    """One row per trial: number, state, value, each scenario, epochs, seconds, the setting."""
    rows = []
    for trial in study.trials:
        row: dict[str, Any] = {"trial": trial.number, "state": trial.state.name.lower(), "value": trial.value}
        row.update({name: trial.user_attrs.get(name) for name in (*scenarios, "best_epoch", "epochs", "seconds")})
        row["pruned_at_epoch"] = trial.last_step if trial.state == optuna.trial.TrialState.PRUNED else None
        row.update({param.key: _plain(trial.params.get(param.key)) for param in SPACE})
        rows.append(row)
    return pl.DataFrame(rows, infer_schema_length=None) if rows else pl.DataFrame()


def _plain(value: Any) -> Any:
    return str(value) if value is not None else None


def _write_outputs(out: Path, study: optuna.Study, config: str | Path | None, scenarios: tuple[str, ...], base: TrainConfig,
                   inputs: dict[str, str], seconds: float) -> None:
    frame = trials_frame(study, scenarios)
    if frame.height:
        with io.atomic_file(out / "trials.csv") as temp:
            frame.write_csv(temp)
    best = _best(study)
    if best is not None:
        chosen = load_config(config, best_overrides(best))
        header = (f"# chosen by coldrec tune: trial {best.number} of {len(study.trials)}, validation objective {best.value:.4f} "
                  f"(mean Recall@{base.training.recall_k} of " + ", ".join(f"{n} {best.user_attrs.get(n, float('nan')):.4f}" for n in scenarios)
                  + f"; best epoch {best.user_attrs.get('best_epoch')})\n# use: coldrec train --config best.toml ...\n")
        with io.atomic_file(out / "best.toml") as temp:
            temp.write_text(header + chosen.to_toml())
    with io.atomic_file(out / "report.html") as temp:
        temp.write_text(render_report(study, frame, scenarios, best))
    io.Manifest(command="tune", parameters={"objective": list(scenarios), "space": [p.key for p in SPACE]}, inputs=inputs,
                row_counts={"trials": len(study.trials)},
                extra={"best_trial": best.number if best else None, "best_value": best.value if best else None,
                       "best_params": json.loads(json.dumps(best.params)) if best else None},
                wall_time_s=round(seconds, 3)).write(out)


def _result(out: Path, study: optuna.Study, scenarios: tuple[str, ...], seconds: float) -> TuneResult:
    states = [t.state for t in study.trials]
    best = _best(study)
    if best is None:
        raise UsageError(f"no trial finished ({len(states)} in the study)", path=out,
                         hint="give tune a larger --budget or more --trials; rerunning resumes the study")
    return TuneResult(
        out=out, trials=len(states),
        complete=states.count(optuna.trial.TrialState.COMPLETE), pruned=states.count(optuna.trial.TrialState.PRUNED),
        failed=states.count(optuna.trial.TrialState.FAIL),
        best_trial=best.number, best_value=best.value, seconds=seconds,
        best_values={name: best.user_attrs[name] for name in scenarios if name in best.user_attrs},
    )


__all__ = ["SPACE", "TuneResult", "run_tune", "parse_budget", "objective_scenarios", "trials_frame", "best_overrides"]
