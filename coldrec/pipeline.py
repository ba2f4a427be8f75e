"""`coldrec pipeline`: every stage, from one TOML config, safely from cron.

    prepare -> stats -> train -> embed (users, items) -> index -> recall

Each run writes `ROOT/runs/<UTC timestamp>/<stage>/` and, once every stage has finished,
points the symlink `ROOT/current` at the run (a temporary symlink renamed over the old one,
so readers see the old run or the new one). The whole root is locked for the duration:
a second pipeline on the same root exits 75 before touching anything (or waits, `wait`).

A stage is skipped when its *key* — a hash of its parameters, the fingerprints of the
external files it reads and the keys of the stages it reads — equals the key stored in the
`pipeline` entry of a previous stage output's manifest.json (any earlier run, including a
failed one, so a rerun after a failure resumes where it stopped). A skipped stage's output
is hard-linked (copied where links are impossible) into the new run, so every run directory
is complete on its own and deleting old runs never breaks a newer one.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import shutil
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from coldrec import io, log
from coldrec.config import build_section, load_config_dict, suggest
from coldrec.errors import ConfigError, InputNotFound, OutputLocked, UsageError
from coldrec.options import STAGE_OPTIONS

STAGES = ("prepare", "stats", "train", "embed", "index", "recall")
RUN_MANIFEST = "pipeline.json"
KEY_ENTRY = "pipeline"  # the entry of a stage's manifest.json holding its key

# Options of each stage (the `coldrec <stage>` flags, underscored) and their defaults:
# coldrec.options, shared with the command line.
INPUT_KEYS = ("exposures", "clicks", "users", "items")
TRAIN_SECTIONS = ("features", "model", "loss", "training")  # [train.<section>]: the model's config
SECTIONS = STAGE_OPTIONS


# --------------------------------------------------------------------------- config


@dataclass
class PipelineConfig:
    """The parsed config: input paths, the output root and each stage's options."""

    source: Path
    inputs: dict[str, Path]
    root: Path
    stages: dict[str, dict[str, Any]]  # stage -> options (defaults filled in)
    train_config: Any  # coldrec.config.TrainConfig

    @classmethod
    def load(cls, path: str | Path) -> PipelineConfig:
        """Parse and validate a pipeline TOML file (relative paths are relative to it)."""
        path = Path(path)
        if not path.is_file():
            raise InputNotFound("no such config file", path=path, hint="check the --config path")
        try:
            data = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
            raise ConfigError(f"not valid TOML ({error})", path=path, hint="fix the syntax") from None
        return cls.from_dict(data, source=path)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: Path) -> PipelineConfig:
        for section, body in data.items():
            if section not in SECTIONS:
                raise ConfigError(f"unknown section '{section}'", path=source, hint=suggest(section, SECTIONS))
            if not isinstance(body, dict):
                raise ConfigError(f"'{section}' must be a table", path=source, hint=f"write it as [{section}]")
        train_raw = dict(data.get("train", {}))
        train_sections = {name: train_raw.pop(name) for name in list(train_raw) if name in TRAIN_SECTIONS}
        for key, value in train_raw.items():
            if isinstance(value, dict):  # a [train.<section>] that is not one
                raise ConfigError(f"unknown section 'train.{key}'", path=source, hint=suggest(key, TRAIN_SECTIONS, "train."))
        stages = {section: dataclasses.asdict(build_section(options, train_raw if section == "train" else data.get(section, {}), str(source), f"{section}."))
                  for section, options in SECTIONS.items()}
        base = source.parent
        missing = [key for key in INPUT_KEYS if not stages["inputs"].get(key)]
        if missing:
            raise ConfigError(f"[inputs] lacks '{missing[0]}'", path=source, hint=f'add {missing[0]} = "PATH" under [inputs]')
        if not stages["output"].get("root"):
            raise ConfigError("[output] lacks 'root'", path=source, hint='add root = "DIR" under [output]')
        if stages["train"]["init_from"] not in ("", "previous"):
            raise ConfigError(
                f"train.init_from must be \"previous\" or \"\", got {stages['train']['init_from']!r}",
                path=source,
                hint='use init_from = "previous" to warm-start from the last run\'s model',
            )
        train_config = load_config_dict(train_sections, TRAIN_SECTIONS, source=str(source)).validate()
        # Fail on bad stage options now, not after an hour of training.
        _prepare_config(stages["prepare"])
        return cls(
            source=source,
            inputs={key: _resolve(base, stages["inputs"][key]) for key in INPUT_KEYS},
            root=_resolve(base, stages["output"]["root"]),
            stages={name: stages[name] for name in STAGES},
            train_config=train_config,
        )


def _resolve(base: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def _prepare_config(options: dict[str, Any]):
    from coldrec.prepare import PrepareConfig

    return PrepareConfig.from_options(**options)


# --------------------------------------------------------------------------- plan


@dataclass
class StagePlan:
    name: str
    key: str
    inputs: dict[str, str]  # name -> fingerprint (external files) or key (upstream stages)
    parameters: dict[str, Any]
    action: str = "run"  # "run" | "reuse"
    reason: str = ""
    reuse_from: Path | None = None


def _key(name: str, parameters: dict[str, Any], inputs: dict[str, str]) -> str:
    document = json.dumps({"stage": name, "parameters": parameters, "inputs": inputs}, sort_keys=True, default=str)
    return hashlib.sha256(document.encode()).hexdigest()[:20]


def _stage_parameters(config: PipelineConfig) -> dict[str, dict[str, Any]]:
    parameters = {name: dict(config.stages[name]) for name in STAGES}
    parameters["train"] = {
        # Warm-starting changes where training begins, not what it is asked to learn: it is
        # not part of the key, so unchanged data and options reuse the last model.
        "threads": config.stages["train"]["threads"],
        "config": config.train_config.to_dict(),
    }
    return parameters


UPSTREAM: dict[str, tuple[str, ...]] = {
    "prepare": (),
    "stats": ("prepare",),
    "train": ("prepare", "stats"),
    "embed": ("train", "stats"),
    "index": ("embed",),
    "recall": ("index", "embed", "prepare"),
}
EXTERNAL: dict[str, tuple[str, ...]] = {
    "prepare": ("exposures", "clicks"),
    "stats": ("users", "items"),
    "train": ("users", "items"),
    "embed": ("users", "items"),
    "index": (),
    "recall": (),
}


def plan(config: PipelineConfig, *, from_stage: str | None = None, only: str | None = None) -> list[StagePlan]:
    """What each stage would do and why; reads manifests and fingerprints, writes nothing."""
    for option, value in (("--from", from_stage), ("--only", only)):
        if value is not None and value not in STAGES:
            raise UsageError(f"{option} {value!r} is not a stage", hint=f"use one of {', '.join(STAGES)}")
    if from_stage and only:
        raise UsageError("--from and --only exclude each other", hint="pass one of them")
    for name in INPUT_KEYS:
        if not config.inputs[name].exists():
            raise InputNotFound(f"[inputs] {name}: no such file or directory", path=config.inputs[name], hint=f"fix inputs.{name} in {config.source}")
    external = {name: io.fingerprint(path) for name, path in config.inputs.items()}
    parameters = _stage_parameters(config)
    previous = _previous_outputs(config.root)
    keys: dict[str, str] = {}
    plans: list[StagePlan] = []
    forced = set(STAGES[STAGES.index(from_stage):]) if from_stage else set()
    if only:
        forced = {only}
    for name in STAGES:
        inputs = {f"stage:{up}": keys[up] for up in UPSTREAM[name]}
        inputs.update({f"file:{ext}": external[ext] for ext in EXTERNAL[name]})
        key = _key(name, parameters[name], inputs)
        keys[name] = key
        stage = StagePlan(name, key, inputs, parameters[name])
        match = previous.get(name, {}).get(key)
        if name in forced:
            stage.action, stage.reason = "run", ("forced by --only" if only else "forced by --from")
        elif match is not None:
            stage.action, stage.reason, stage.reuse_from = "reuse", f"unchanged since {match.parent.name}", match
        else:
            stage.reason = _why_changed(previous.get(name, {}), inputs, parameters[name])
        if only and STAGES.index(name) > STAGES.index(only):
            stage.action, stage.reason = "skip", f"not run with --only {only}"
        elif only and name != only and stage.action == "run":  # an earlier stage, out of date
            raise UsageError(
                f"--only {only}: stage {name} has no up-to-date output to start from ({stage.reason})",
                path=config.root,
                hint=f"run `coldrec pipeline --config {config.source}` without --only first",
            )
        plans.append(stage)
    return plans


def _why_changed(previous: dict[str, Path], inputs: dict[str, str], parameters: dict[str, Any]) -> str:
    if not previous:
        return "no previous output"
    latest = max(previous.values(), key=lambda path: path.parent.name)
    recorded = _read_json(latest / io.MANIFEST_NAME).get(KEY_ENTRY, {})
    changed = [name.split(":", 1)[1] for name, value in inputs.items() if recorded.get("inputs", {}).get(name) != value]
    if recorded.get("parameters") != json.loads(json.dumps(parameters, default=str)):
        changed.append("parameters")
    return f"changed since {latest.parent.name}: {', '.join(changed) or 'key'}"


def _previous_outputs(root: Path) -> dict[str, dict[str, Path]]:
    """stage -> key -> the newest finished output with that key, across every earlier run."""
    found: dict[str, dict[str, Path]] = {}
    runs = root / "runs"
    if not runs.is_dir():
        return found
    for run in sorted((p for p in runs.iterdir() if p.is_dir() and not p.name.startswith(".")), reverse=True):
        for name in STAGES:
            entry = _read_json(run / name / io.MANIFEST_NAME).get(KEY_ENTRY)
            if isinstance(entry, dict) and "key" in entry:
                found.setdefault(name, {}).setdefault(entry["key"], run / name)
    return found


def _read_json(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return document if isinstance(document, dict) else {}


# --------------------------------------------------------------------------- run


@dataclass
class StageOutcome:
    name: str
    action: str
    reason: str
    seconds: float
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass
class PipelineResult:
    root: Path
    run_dir: Path | None
    dry_run: bool
    stages: list[StageOutcome]
    current_updated: bool
    seconds: float

    def summary(self) -> str:
        ran = [s.name for s in self.stages if s.action == "run"]
        reused = [s.name for s in self.stages if s.action == "reuse"]
        if self.dry_run:
            return f"pipeline (dry run): would run {', '.join(ran) or 'nothing'}; reuse {', '.join(reused) or 'nothing'}"
        current = f"; current -> {self.run_dir.name}" if self.current_updated and self.run_dir else ""
        return (
            f"pipeline: ran {', '.join(ran) or 'nothing'}; reused {', '.join(reused) or 'nothing'} "
            f"-> {self.run_dir}{current} ({self.seconds:.1f}s)"
        )

    def fields(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "run": str(self.run_dir) if self.run_dir else None,
            "dry_run": self.dry_run,
            "ran": [s.name for s in self.stages if s.action == "run"],
            "reused": [s.name for s in self.stages if s.action == "reuse"],
            "current_updated": self.current_updated,
            "seconds": round(self.seconds, 3),
        }


def run_pipeline(
    config: PipelineConfig | str | Path,
    *,
    dry_run: bool = False,
    from_stage: str | None = None,
    only: str | None = None,
    wait: bool = False,
    echo: Callable[[str], None] = print,
) -> PipelineResult:
    """Run (or, with `dry_run`, describe) the pipeline of `config`.

    `from_stage` reruns that stage and every later one; `only` runs just that stage (earlier
    ones must have reusable outputs; `current` moves only when the run is complete).
    `wait` blocks on a locked root instead of raising OutputLocked (exit 75). A dry run
    prints one line per stage with `echo` and writes nothing at all (no lock file either).
    """
    started = time.perf_counter()
    if not isinstance(config, PipelineConfig):
        config = PipelineConfig.load(config)
    if dry_run:
        plans = plan(config, from_stage=from_stage, only=only)
        for stage in plans:
            echo(f"{stage.name}: {stage.action} ({stage.reason})")
        outcomes = [StageOutcome(s.name, s.action, s.reason, 0.0) for s in plans]
        return PipelineResult(config.root, None, True, outcomes, False, time.perf_counter() - started)
    with _lock(config.root, wait):
        plans = plan(config, from_stage=from_stage, only=only)
        current = (config.root / "current").resolve() if (config.root / "current").exists() else None
        if current is not None and all(
            s.action == "reuse" and s.reuse_from is not None and Path(s.reuse_from).resolve() == current / s.name
            for s in plans
        ):
            # Nothing changed since the run `current` points at: no new run directory.
            outcomes = [StageOutcome(s.name, "reuse", s.reason, 0.0) for s in plans]
            for s in plans:
                log.event("pipeline.stage", f"pipeline: {s.name} up to date ({s.reason})", stage=s.name, action="reuse", reason=s.reason, seconds=0.0)
            log.info(f"pipeline: nothing changed since {current.name}; current stays")
            return PipelineResult(config.root, current, False, outcomes, False, time.perf_counter() - started)
        run_dir = _new_run_dir(config.root)
        outcomes = []
        for stage in plans:
            if stage.action == "skip":
                outcomes.append(StageOutcome(stage.name, "skip", stage.reason, 0.0))
                continue
            stage_started = time.perf_counter()
            if stage.action == "reuse":
                _link_tree(stage.reuse_from, run_dir / stage.name)
                fields: dict[str, Any] = {"from": str(stage.reuse_from)}
            else:
                fields = RUNNERS[stage.name](config, run_dir)
                _record_key(run_dir / stage.name, stage)
            seconds = time.perf_counter() - stage_started
            outcome = StageOutcome(stage.name, stage.action, stage.reason, seconds, fields)
            outcomes.append(outcome)
            log.event(
                "pipeline.stage",
                f"pipeline: {stage.name} {'reused' if stage.action == 'reuse' else 'ran'} ({stage.reason}) in {seconds:.1f}s",
                stage=stage.name,
                action=stage.action,
                reason=stage.reason,
                seconds=round(seconds, 3),
                **{k: v for k, v in fields.items() if k not in ("stage", "action", "reason", "seconds")},
            )
        complete = all(o.action in ("run", "reuse") for o in outcomes)
        io.write_json_atomic(
            {
                "complete": complete,
                "config": str(config.source),
                "stages": {o.name: {"action": o.action, "reason": o.reason, "seconds": round(o.seconds, 3)} for o in outcomes},
                "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            },
            run_dir / RUN_MANIFEST,
        )
        if complete:
            point_current(config.root, run_dir)
    return PipelineResult(config.root, run_dir, False, outcomes, complete, time.perf_counter() - started)


class _lock:
    """io.output_lock on the root; with `wait`, retry until the other run lets go."""

    def __init__(self, root: Path, wait: bool) -> None:
        self.root, self.wait, self.context = root, wait, None

    def __enter__(self) -> None:
        announced = False
        while True:
            context = io.output_lock(self.root, "coldrec pipeline")
            try:
                context.__enter__()
            except OutputLocked as error:
                if not self.wait:
                    raise
                if not announced:
                    log.info(f"pipeline: waiting for the lock ({error.message})")
                    announced = True
                time.sleep(1.0)
                continue
            self.context = context
            return

    def __exit__(self, *exc: Any) -> None:
        assert self.context is not None
        self.context.__exit__(*exc)


def _new_run_dir(root: Path) -> Path:
    runs = root / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    candidate, suffix = runs / stamp, 0
    while True:
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            suffix += 1
            candidate = runs / f"{stamp}-{suffix}"


def point_current(root: Path, run_dir: Path) -> Path:
    """Atomically point `root/current` at `run_dir` (a relative symlink renamed into place)."""
    link = root / "current"
    temp = root / f".current.tmp-{os.getpid()}-{time.time_ns()}"
    os.symlink(os.path.relpath(run_dir, root), temp)
    try:
        os.replace(temp, link)
    finally:
        if temp.is_symlink():
            temp.unlink()
    return link


def _link_tree(source: Path, target: Path) -> None:
    """Hard-link (or copy) a finished stage output into the new run, atomically."""

    def link_or_copy(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    with io.atomic_dir(target) as temp:
        shutil.rmtree(temp)
        shutil.copytree(source, temp, copy_function=link_or_copy)


def _record_key(directory: Path, stage: StagePlan) -> None:
    manifest_path = directory / io.MANIFEST_NAME
    document = _read_json(manifest_path) or {"command": f"pipeline {stage.name}"}
    document[KEY_ENTRY] = {"key": stage.key, "inputs": stage.inputs, "parameters": stage.parameters}
    io.write_json_atomic(document, manifest_path)


# --------------------------------------------------------------------------- stage runners
# Each takes the config and the run directory, writes run_dir/<stage>/ and returns counts.


def _run_prepare(config: PipelineConfig, run_dir: Path) -> dict[str, Any]:
    from coldrec.prepare import run_prepare

    result = run_prepare(config.inputs["exposures"], config.inputs["clicks"], run_dir / "prepare", _prepare_config(config.stages["prepare"]))
    return result.fields()


def _run_stats(config: PipelineConfig, run_dir: Path) -> dict[str, Any]:
    from coldrec.stats import run_stats

    options = config.stages["stats"]
    result = run_stats(
        run_dir / "prepare",
        config.inputs["users"],
        config.inputs["items"],
        run_dir / "stats",
        windows=options["windows"],
        user_category_columns=options["user_category_columns"],
        item_category_columns=options["item_category_columns"],
        prior_strength=float(options["prior_strength"]),
        max_category_values=options["max_category_values"],
    )
    return result.fields()


def _run_train(config: PipelineConfig, run_dir: Path) -> dict[str, Any]:
    from coldrec.train import run_train

    init_from = None
    if config.stages["train"]["init_from"] == "previous":
        previous = config.root / "current" / "train"
        if (previous / io.MANIFEST_NAME).exists():
            init_from = previous.resolve()
        else:
            log.info("pipeline: no previous model under current/; training from scratch")
    result = run_train(
        run_dir / "prepare",
        config.inputs["users"],
        config.inputs["items"],
        run_dir / "train",
        stats=run_dir / "stats",
        config=config.train_config,
        init_from=init_from,
        threads=config.stages["train"]["threads"],
    )
    fields = result.fields()
    fields["init_from"] = str(init_from) if init_from else None
    return fields


def _run_embed(config: PipelineConfig, run_dir: Path) -> dict[str, Any]:
    from coldrec.embed import run_embed

    options = config.stages["embed"]
    target = run_dir / "embed"
    fields: dict[str, Any] = {}
    with io.atomic_dir(target) as temp:
        for side in ("users", "items"):
            result = run_embed(
                model=run_dir / "train",
                out=temp / f"{side}.parquet",
                stats=run_dir / "stats",
                batch_size=options["batch_size"],
                threads=options["threads"],
                **{side: config.inputs[side]},
            )
            fields[f"{side}_rows"] = result.rows
            fields[f"{side}_cold"] = result.cold_rows
        io.Manifest(
            command="pipeline embed",
            parameters=dict(options),
            row_counts={"users": fields["users_rows"], "items": fields["items_rows"]},
        ).write(temp)
    return fields


def _run_index(config: PipelineConfig, run_dir: Path) -> dict[str, Any]:
    from coldrec.index import run_index

    # The last run's index carries first-seen days over, so --fresh-quota sees new items.
    previous = config.root / "current" / "index"
    result = run_index(
        out=run_dir / "index",
        embeddings=run_dir / "embed" / "items.parquet",
        trees=config.stages["index"]["trees"],
        previous=previous if previous.exists() else None,
    )
    return result.fields()


def _run_recall(config: PipelineConfig, run_dir: Path) -> dict[str, Any]:
    from coldrec.recall import run_recall

    options = config.stages["recall"]
    target = run_dir / "recall"
    with io.atomic_dir(target) as temp:
        result = run_recall(
            index=run_dir / "index",
            out=temp / "recs.parquet",
            queries=run_dir / "embed" / "users.parquet",
            k=options["k"],
            exclude=run_dir / "prepare" if options["exclude_seen"] else None,
            search_k=options["search_k"],
            exact=options["exact"],
            threads=options["threads"],
            fresh_quota=float(options["fresh_quota"]),
            fresh_days=options["fresh_days"],
            strict=True,
        )
        io.Manifest(command="pipeline recall", parameters=dict(options), row_counts={"recs": result.rows}).write(temp)
    fields = result.fields()
    fields["out"] = str(target / "recs.parquet")
    return fields


RUNNERS: dict[str, Callable[[PipelineConfig, Path], dict[str, Any]]] = {
    "prepare": _run_prepare,
    "stats": _run_stats,
    "train": _run_train,
    "embed": _run_embed,
    "index": _run_index,
    "recall": _run_recall,
}
