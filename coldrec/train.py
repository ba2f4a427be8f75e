"""The training loop: encode once, train on tensors, validate, checkpoint, save.

`run_train` reads prepared samples, content tables and (optionally) statistics, fits a
FeatureSpec, encodes everything into tensors once, and trains the two-tower model with
AdamW: shuffled batches by random permutation, a cosine or constant learning rate,
gradient clipping, early stopping on validation Recall@K (keeping the best weights; with
training.select_on = "mean_views" the epoch is chosen on Recall@K averaged with its
content-only item and user views).

Determinism: every epoch reseeds its own generators from (seed, epoch, rank), so the batch
order, the input-dropout masks and the loss's negatives depend only on those. A checkpoint
written after every epoch (weights, optimiser, best weights, history) is therefore all
`--resume` needs to end with exactly the weights of an uninterrupted run.

Distributed: under `torchrun` (WORLD_SIZE > 1) the same code runs DistributedDataParallel,
gloo on CPU and nccl on GPU. Every rank encodes the data; each global batch is split into
equal per-rank shards; the softmax sees the item embeddings all-gathered from every rank.
Rank 0 validates, checkpoints and writes the model directory.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import json
import math
import os
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from torch import Tensor, nn

from coldrec import io, log
from coldrec.batches import EpochSampler
from coldrec.checkpoint import CHECKPOINT_META, checkpoint_dir, load_checkpoint, load_state_into, save_checkpoint
from coldrec.config import TrainConfig, load_config
from coldrec.errors import Diverged, EmptyInput, InputNotFound, SchemaError, UsageError, WrongDtype
from coldrec.features import EncodedData, FeatureSpec, encode_dataset, fit_spec, warn_missing_content, with_day
from coldrec.losses import RetrievalLoss, dropoutnet_mse
from coldrec.model import LoadedModel, TwoTower, build_model, load_model, model_state, write_model_files
from coldrec.profiles import fill_click_profiles, leave_one_out
from coldrec.result import StageResult
from coldrec.schema import SAMPLES, check_content_table, check_id_types_match, check_schema
from coldrec.term_weights import fit_term_weights
from coldrec.validation import ValidationSet, build_validation, evaluate_for_selection, evaluate_recall, selection_metric
from coldrec.warmstart import extend_spec, transfer_weights

# --------------------------------------------------------------------------- result


@dataclass
class TrainResult(StageResult):
    SKIPPED = ("metric", "metrics")

    out: Path
    epochs: int
    best_epoch: int
    metric: str
    best_metric: float
    train_samples: int
    valid_samples: int
    seconds: float
    samples_per_s: float
    positives_per_s: float = 0.0  # clicked samples: what the retrieval losses learn from
    metrics: dict[str, float] = field(default_factory=dict)
    served_terms: dict[str, Any] = field(default_factory=dict)  # coldrec.term_weights: weights fitted on validation

    def summary(self) -> str:
        best = f"best {self.metric} {self.best_metric:.4f} at epoch {self.best_epoch}" if self.best_epoch else "no validation"
        return (
            f"train: {self.epochs} epoch(s) on {self.train_samples:,} samples, {best}, "
            f"{self.samples_per_s:,.0f} samples/s ({self.positives_per_s:,.0f} positives/s) -> {self.out} ({self.seconds:.1f}s)"
        )

    def extra_fields(self) -> dict[str, Any]:
        return dict(self.metrics)  # recall@K, warm, cold users, cold items, views


# --------------------------------------------------------------------------- inputs


def _read_samples(path: Path, required: bool) -> pl.DataFrame | None:
    if not path.exists():
        if required:
            raise InputNotFound("no such file", path=path, hint="point --samples at a directory written by `coldrec prepare`")
        return None
    frame = io.scan_parquet(path)
    schema = frame.collect_schema()
    check_schema(schema, SAMPLES, path)
    columns = ["user_id", "item_id", "ts", "label"] + (["weight"] if "weight" in schema else [])
    data = frame.select(columns).collect()
    if data.height == 0 and required:
        raise EmptyInput("samples table has no rows", path=path, hint="check `coldrec prepare`'s date range")
    nulls = [c for c in ("user_id", "item_id", "ts", "label") if data[c].null_count()]
    if nulls:
        raise SchemaError(f"samples table: null values in {', '.join(nulls)}", path=path, column=nulls[0], hint="rerun `coldrec prepare`")
    return data.with_columns(pl.col("label").cast(pl.Int8))


def _read_content(path: Path, id_column: str) -> pl.DataFrame:
    frame = io.scan_parquet(path)
    check_content_table(frame, id_column, path)
    return frame.collect()


def _read_stats(directory: Path | None, side: str) -> tuple[pl.DataFrame | None, Path | None]:
    if directory is None:
        return None, None
    directory = Path(directory)
    if not directory.is_dir():
        raise InputNotFound("no such stats directory", path=directory, hint="point --stats at a directory written by `coldrec stats`")
    path = directory / f"{side}_stats.parquet"
    if not path.exists():
        log.warning(f"{path} not found: training without {side} statistics")
        return None, None
    stats = io.read_parquet(path)
    id_column = f"{side}_id"
    for column in (id_column, "day"):
        if column not in stats.columns:
            raise SchemaError(f"{side} stats: missing column", path=path, column=column, hint="use a directory written by `coldrec stats`")
    if stats.schema["day"] != pl.Date:
        stats = stats.with_columns(pl.col("day").cast(pl.Date))
    bad = [n for n, t in stats.schema.items() if n not in (id_column, "day", "as_of") and not (t.is_numeric() or t == pl.Boolean)]
    if bad:
        raise WrongDtype(f"{side} stats: non-numeric stats column", path=path, column=bad[0], hint="stats columns must be numeric")
    return stats, path


def _read_vectors(path: Path, id_column: str) -> tuple[pl.Series, np.ndarray]:
    frame = io.read_parquet(path)
    if id_column not in frame.columns:
        raise SchemaError("pretrained vectors: missing id column", path=path, column=id_column, hint=f"write ({id_column}, vector) rows")
    vector_columns = [n for n, t in frame.schema.items() if n != id_column and isinstance(t, (pl.Array, pl.List)) and t.inner.is_float()]
    if len(vector_columns) != 1:
        raise SchemaError(
            f"pretrained vectors: expected exactly one float vector column, found {vector_columns or 'none'}",
            path=path,
            hint=f"write two columns: {id_column} and a fixed-size list of floats",
        )
    column = frame[vector_columns[0]]
    lengths = column.list.len() if isinstance(column.dtype, pl.List) else None
    if lengths is not None and (lengths.n_unique() != 1 or column.null_count()):
        raise SchemaError("pretrained vectors differ in length or are null", path=path, column=vector_columns[0], hint="every id needs one vector of the same length")
    matrix = np.asarray(column.cast(pl.List(pl.Float32)).to_list(), dtype=np.float32)
    if not np.isfinite(matrix).all():
        raise SchemaError("pretrained vectors hold NaN/inf", path=path, column=vector_columns[0], hint="fix the factorisation output")
    return frame[id_column], matrix


# --------------------------------------------------------------------------- distributed


@dataclass
class Dist:
    world: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device_name: str) -> tuple[Dist, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dist = Dist(world, int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")))
    device = _resolve_device(device_name, dist.local_rank)
    if dist.enabled and not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend=backend)
    return dist, device


def _resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UsageError("--device cuda but no CUDA device is available", hint="use --device cpu or auto")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


# --------------------------------------------------------------------------- speed

def default_threads() -> int:
    """OMP_NUM_THREADS when set (torchrun sets 1 per process), else 1.

    The towers' matrices are small (batch x a few hundred), so extra threads gain little
    even on an idle machine, and on a shared one a thread waiting for a busy core stalls
    every step: measured on 2 loaded cores, 2 threads trained at 335 samples/s, 1 thread at
    17,000. The default is also independent of the machine's load and core count, so the
    same seed gives the same weights (the thread count can change float rounding). Scale
    out with torchrun (one process per core) or pass --threads on a dedicated machine.
    """
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return 1


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op threads (None or 0 = default_threads()); returns the number used."""
    if threads is not None and threads < 0:
        raise UsageError(f"--threads must be >= 0 (0 = automatic), got {threads}", hint="e.g. --threads 1 on a shared machine")
    count = threads or default_threads()
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    return count


def make_optimizer(parameters: list[nn.Parameter], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW with the fused kernel where the device has one (CPU and CUDA).

    The same update rule as the default implementation, but one pass over all tensors: the
    per-tensor loop over the large id-embedding tables cost ~20% of a CPU training step.
    """
    try:
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, ValueError):  # a device or dtype without a fused kernel
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)


def clip_gradients(parameters: list[nn.Parameter], max_norm: float) -> Tensor:
    """`clip_grad_norm_(parameters, max_norm)`, without its rescaling pass when nothing is clipped.

    clip_grad_norm_ always multiplies every gradient by min(1, max_norm / (norm + 1e-6));
    when that factor is 1 the multiply is the identity, bit for bit, so on CPU (where reading
    the norm costs no device sync) it is skipped: one pass over the id-embedding gradients
    less. Returns the total norm.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    total = torch.nn.utils.get_total_norm(grads, foreach=True)
    if total.device.type != "cpu" or not float(total) + 1e-6 <= max_norm:  # NaN: rescale, as torch does
        torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, total, foreach=True)
    return total


# --------------------------------------------------------------------------- the step


class TrainStep(nn.Module):
    """Model + loss in one module, so DDP sees (and all-reduces) every parameter."""

    def __init__(self, model: TwoTower, loss: RetrievalLoss | None, objective: str, dist: Dist) -> None:
        super().__init__()
        self.model = model
        self.loss = loss
        self.objective = objective
        self.dist = dist

    def forward(
        self,
        user_inputs: dict[str, Tensor],
        item_inputs: dict[str, Tensor],
        label: Tensor,
        weight: Tensor,
        item_row: Tensor,
        item_log_q: Tensor,
        generator: torch.Generator,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        user, item = self.model(user_inputs, item_inputs, generator)  # (batch, dim) each
        if self.objective == "dropoutnet":
            # The target is the pretrained U·Vᵀ, read from the frozen id rows (never dropped).
            target = (self.model.user.id_embedding(user_inputs["id"]) * self.model.item.id_embedding(item_inputs["id"])).sum(1)  # (batch,)
            mse = dropoutnet_mse(user, item, target)
            return mse, {"mse": mse.detach()}
        candidates = candidate_index = candidate_log_q = None
        offset = 0
        if self.dist.enabled and self.loss.config.softmax_weight > 0:
            # Negatives from every rank; the autograd all_gather sends their gradients home.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # its replacement has no autograd yet
                candidates = torch.cat(torch.distributed.nn.functional.all_gather(item), dim=0)  # (world * batch, dim)
            candidate_index = _gather_plain(item_row)
            candidate_log_q = _gather_plain(item_log_q)
            offset = self.dist.rank * item.shape[0]
        out = self.loss(
            user,
            item,
            label,
            item_index=item_row,
            weight=weight,
            item_log_q=item_log_q,
            candidates=candidates,
            candidate_index=candidate_index,
            candidate_log_q=candidate_log_q,
            candidate_offset=offset,
            generator=generator,
        )
        return out.total, out.parts


def _gather_plain(tensor: Tensor) -> Tensor:
    parts = [torch.empty_like(tensor) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def _epoch_seed(seed: int, epoch: int, rank: int, stream: int) -> int:
    return (seed * 1_000_003 + epoch * 10_007 + rank * 101 + stream) % (2**62)


def _lr_at(step: int, total: int, config) -> float:
    factor = 1.0
    if config.warmup_steps and step < config.warmup_steps:
        factor = (step + 1) / config.warmup_steps
    if config.schedule == "cosine" and total > 0:
        progress = min(step / total, 1.0)
        factor *= 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * progress))
    return config.lr * factor


# --------------------------------------------------------------------------- run_train


def _locked_output(train: Callable[..., TrainResult]) -> Callable[..., TrainResult]:
    """Check and lock `out` before the run, not after hours of training.

    A second cron run exits 75 at once and never touches this run's checkpoint. Under
    torchrun only rank 0 writes, so only it checks and locks.
    """

    @functools.wraps(train)
    def locked(samples_dir, users, items, out, **options) -> TrainResult:
        lock: contextlib.AbstractContextManager = contextlib.nullcontext()
        if os.environ.get("RANK", "0") == "0":
            io.check_output_dir(out)
            lock = io.output_lock(Path(out), "coldrec train")
        with lock:
            return train(samples_dir, users, items, out, **options)

    return locked


@_locked_output
def run_train(
    samples_dir: str | Path,
    users: str | Path,
    items: str | Path,
    out: str | Path,
    *,
    stats: str | Path | None = None,
    config: TrainConfig | str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    resume: bool = False,
    init_from: str | Path | None = None,
    device: str | None = None,
    user_vectors: str | Path | None = None,
    item_vectors: str | Path | None = None,
    on_epoch_end: Callable[[int, dict], None] | None = None,
    threads: int | None = None,
) -> TrainResult:
    """Train the two-tower model and write the model directory `out`.

    `config`: a TrainConfig, a TOML path, or None (defaults); `overrides` ({"training.epochs":
    3, ...}) win over it. `device` overrides training.device. `on_epoch_end(epoch, record)`
    is called after each epoch's checkpoint (tests use it to interrupt a run). `threads`:
    torch's CPU threads; None leaves them as they are, 0 = `default_threads()`.
    """
    started = time.perf_counter()
    if threads is not None:
        set_threads(threads)
    config = _resolve_config(config, overrides, device)
    _check_vector_options(config.training.objective, user_vectors, item_vectors)
    samples_dir, out = Path(samples_dir), Path(out)
    inputs = _read_inputs(samples_dir, Path(users), Path(items), Path(stats) if stats else None)

    dist, torch_device = _init_distributed(config.training.device)
    if not dist.main:
        log.configure(log_format=log.settings.format, quiet=True, debug=log.settings.debug)  # rank 0 speaks
    torch.manual_seed(config.training.seed)

    spec, pretrained = _fit_features(inputs, config, user_vectors, item_vectors)
    old_model = load_model(init_from) if init_from is not None else None
    if old_model is not None:
        spec = extend_spec(old_model.spec, spec)
    data = _encode(spec, inputs)
    validation = build_validation(data, config) if dist.main else None  # rank 0 validates

    step_module, profiles = _build(spec, config, data, inputs.train, pretrained, old_model, init_from, dist)
    loop = _Loop.start(step_module, data, profiles, config, dist, torch_device)
    ckpt = checkpoint_dir(out)
    fingerprint = _run_fingerprint(config, inputs.train, inputs.valid, init_from, inputs=io.input_fingerprints(users=users, items=items, stats=stats))
    progress = _resume(ckpt, loop, fingerprint) if resume else _Progress()
    _fit(loop, progress, validation, ckpt, fingerprint, on_epoch_end)

    if progress.best_state is not None:
        load_state_into(step_module.model, step_module.loss, {k: v.to(torch_device) for k, v in progress.best_state.items()})
    served = _fit_served(step_module.model, data, validation, config, torch_device, progress)
    result = _result(out, progress, loop, inputs, started, served)
    if dist.main:
        _write_model_dir(out, step_module, spec, config, config.training.objective != "dropoutnet", progress.history, result, samples_dir, users, items, stats, init_from)
        shutil.rmtree(ckpt, ignore_errors=True)
    if dist.enabled:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return result


# --------------------------------------------------------------------------- run_train's steps


def _resolve_config(config: TrainConfig | str | Path | None, overrides: dict[str, Any] | None, device: str | None) -> TrainConfig:
    if isinstance(config, TrainConfig):
        config = copy.deepcopy(config)
        if overrides:
            config = load_config(None, {**_flatten(config), **overrides})
        config.validate()
    else:
        config = load_config(config, overrides)
    if device is not None:
        config.training.device = device
        config.validate()
    return config


def _check_vector_options(objective: str, user_vectors, item_vectors) -> None:
    if objective == "dropoutnet" and (user_vectors is None or item_vectors is None):
        raise UsageError("objective dropoutnet needs --user-vectors and --item-vectors", hint="pass both Parquet files of pretrained vectors")
    if objective != "dropoutnet" and (user_vectors is not None or item_vectors is not None):
        raise UsageError("--user-vectors/--item-vectors are only used with --objective dropoutnet", hint="add --objective dropoutnet or drop the vectors")


@dataclass
class _Inputs:
    """Everything run_train reads, checked."""

    samples_dir: Path
    users_path: Path
    items_path: Path
    train: pl.DataFrame
    valid: pl.DataFrame | None
    users: pl.DataFrame
    items: pl.DataFrame
    user_stats: pl.DataFrame | None
    item_stats: pl.DataFrame | None


def _read_inputs(samples_dir: Path, users: Path, items: Path, stats: Path | None) -> _Inputs:
    if not samples_dir.is_dir():
        raise InputNotFound("no such samples directory", path=samples_dir, hint="point --samples at a directory written by `coldrec prepare`")
    train = _read_samples(samples_dir / "train.parquet", required=True)
    valid = _read_samples(samples_dir / "valid.parquet", required=False)
    user_table = _read_content(users, "user_id")
    item_table = _read_content(items, "item_id")
    check_id_types_match(train.schema["user_id"], user_table.schema["user_id"], "user_id", users, samples_dir / "train.parquet")
    check_id_types_match(train.schema["item_id"], item_table.schema["item_id"], "item_id", items, samples_dir / "train.parquet")
    for table, path, column in ((user_table, users, "user_id"), (item_table, items, "item_id")):
        warn_missing_content(train, table, column, samples_dir / "train.parquet", path)
    user_stats, _ = _read_stats(stats, "user")
    item_stats, _ = _read_stats(stats, "item")
    return _Inputs(samples_dir, users, items, train, valid, user_table, item_table, user_stats, item_stats)


def _fit_features(inputs: _Inputs, config: TrainConfig, user_vectors, item_vectors) -> tuple[FeatureSpec, dict[str, np.ndarray]]:
    """The FeatureSpec of the train samples; with objective "dropoutnet" also the pretrained
    vectors per side (the train samples are cut to the pairs that have both)."""
    spec = fit_spec(inputs.train, inputs.users, inputs.items, config.features, user_stats=inputs.user_stats, item_stats=inputs.item_stats, users_path=inputs.users_path, items_path=inputs.items_path)
    if config.training.objective != "dropoutnet":
        return spec, {}
    pretrained: dict[str, np.ndarray] = {}
    train = inputs.train
    for side, path in (("user", user_vectors), ("item", item_vectors)):
        ids, matrix = _read_vectors(Path(path), f"{side}_id")
        entity = spec.side(side)
        check_id_types_match(ids.dtype, train.schema[f"{side}_id"], f"{side}_id", path, inputs.samples_dir / "train.parquet")
        entity.ids = ids.to_list()
        entity.pretrained_dim = int(matrix.shape[1])
        pretrained[side] = matrix
        # Samples whose user or item has no pretrained vector have no target.
        train = train.join(pl.DataFrame({f"{side}_id": entity.ids}, schema={f"{side}_id": train.schema[f"{side}_id"]}), on=f"{side}_id", how="semi")
    if train.height == 0:
        raise EmptyInput("no training sample has both a user and an item vector", path=user_vectors, hint="check the ids of the vector files")
    inputs.train = train
    return spec, pretrained


def _encode(spec: FeatureSpec, inputs: _Inputs) -> EncodedData:
    splits = {"train": inputs.train}
    if inputs.valid is not None and inputs.valid.height:
        splits["valid"] = inputs.valid
    data = encode_dataset(spec, splits, inputs.users, inputs.items, user_stats=inputs.user_stats, item_stats=inputs.item_stats, users_path=inputs.users_path, items_path=inputs.items_path)
    log.info(
        f"encoded {inputs.train.height:,} train / {inputs.valid.height if inputs.valid is not None else 0:,} valid samples; "
        f"{len(spec.user.ids):,} known users, {len(spec.item.ids):,} known items"
    )
    return data


def _build(spec: FeatureSpec, config: TrainConfig, data: EncodedData, train: pl.DataFrame, pretrained: dict[str, np.ndarray], old_model: LoadedModel | None, init_from, dist: Dist) -> tuple[TrainStep, dict[str, Tensor]]:
    """The model (weights from the global torch RNG, pretrained id rows, a warm start's
    tensors), its click profiles and served terms fitted on the train samples, and its loss.
    -> (model + loss, the click profiles' per-entity rows for the leave-one-out)."""
    objective = config.training.objective
    model = build_model(spec, config.model, normalize=objective != "dropoutnet")
    loss_config = _loss_for(config, data.splits["train"].label) if objective == "twotower" else None
    with torch.no_grad():
        for side, matrix in pretrained.items():
            (model.user if side == "user" else model.item).id_embedding.weight[1:] = torch.from_numpy(matrix)
    loss = RetrievalLoss(loss_config) if loss_config is not None else None
    if old_model is not None:
        moved = transfer_weights(model, spec, old_model, loss)
        log.info(f"warm start from {init_from}: {moved['copied']} tensors carried over, {moved['fresh']} fresh")
    profiles = fill_click_profiles(model, data, spec)  # after the warm start: data, not weights
    model.terms.fit(model.user, data, spec, train, config.model)  # needs the click profiles
    return TrainStep(model, loss, objective, dist), profiles


def _loss_for(config: TrainConfig, label: Tensor):
    """The [loss] config, without the pointwise and pairwise losses when the samples hold no
    exposed-not-clicked row (a click-only log, or training.negative_rate 0): those losses
    learn from shown-and-skipped rows, so the in-batch softmax trains alone."""
    loss = config.loss
    has_negatives = bool((label <= 0).any()) and config.training.negative_rate > 0
    if has_negatives or (loss.pointwise_weight == 0 and loss.pairwise_weight == 0):
        return loss
    if loss.softmax_weight == 0:
        raise UsageError("the train samples have no exposed-not-clicked row and loss.softmax_weight is 0: nothing to train",
                         hint="set loss.softmax_weight > 0 (the in-batch softmax needs clicks only), or prepare with --exposures")
    log.warning("no exposed-not-clicked samples to train on: the pointwise and pairwise losses are off, the in-batch softmax trains alone")
    return dataclasses.replace(loss, pointwise_weight=0.0, pairwise_weight=0.0)


@dataclass
class _Progress:
    """Where the run stands after each epoch (what a checkpoint saves)."""

    history: list[dict] = field(default_factory=list)
    best_state: dict[str, Tensor] | None = None
    best_metric: float = -1.0
    best_epoch: int = 0
    bad_epochs: int = 0
    epochs_done: int = 0

    def meta(self, fingerprint: str) -> dict:
        return {"fingerprint": fingerprint, "epochs_done": self.epochs_done, "history": self.history, "best_metric": self.best_metric,
                "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}


def _resume(ckpt: Path, loop: "_Loop", fingerprint: str) -> _Progress:
    if not (ckpt / CHECKPOINT_META).exists():
        log.warning(f"--resume: no checkpoint at {ckpt}, starting from scratch")
        return _Progress()
    meta, best_state = load_checkpoint(ckpt, loop.step_module.model, loop.step_module.loss, loop.optimizer)
    if meta.get("fingerprint") != fingerprint:
        raise UsageError(
            "the checkpoint belongs to another run (different config or data)",
            path=ckpt,
            hint="rerun with the same inputs and config, or without --resume (the checkpoint is then replaced)",
        )
    log.info(f"resuming after epoch {meta['epochs_done']} from {ckpt}")
    return _Progress(meta["history"], best_state, float(meta["best_metric"]), int(meta["best_epoch"]), int(meta["bad_epochs"]), int(meta["epochs_done"]))


@dataclass
class _Loop:
    """The training state of one run: model + loss, optimiser, the encoded samples on the
    device, and the batch geometry. `epoch(e)` trains one epoch and returns its record."""

    step_module: TrainStep
    runner: nn.Module  # step_module, or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    parameters: list[nn.Parameter]
    data: EncodedData
    profiles: dict[str, Tensor]
    sampler: EpochSampler  # every click and a sample of the other exposures, per epoch
    item_log_q: Tensor  # (items,)
    device: torch.device
    dist: Dist
    training: Any  # TrainConfig.training
    per_rank: int
    steps_per_epoch: int
    trained_samples: int = 0
    train_seconds: float = 0.0

    @classmethod
    def start(cls, step_module: TrainStep, data: EncodedData, profiles: dict[str, Tensor], config: TrainConfig, dist: Dist, device: torch.device) -> "_Loop":
        step_module = step_module.to(device)
        data = data.to(device)
        samples = data.splits["train"]
        sampler = EpochSampler(samples.label, config.training.negative_rate)
        log.info(f"training on {sampler.describe()}")
        item_log_q = sampler.item_log_q(samples.item_row, len(data.items)).to(device)
        profiles = {side: table.to(device) for side, table in profiles.items()}
        parameters = [p for p in step_module.parameters() if p.requires_grad]
        optimizer = make_optimizer(parameters, config.training.lr, config.training.weight_decay)
        per_rank = max(1, config.training.batch_size // dist.world)
        n = len(sampler)
        steps = max(1, n // (per_rank * dist.world)) if dist.enabled else max(1, math.ceil(n / per_rank))
        return cls(step_module, _distributed(step_module, config, dist, device), optimizer, parameters, data, profiles, sampler, item_log_q, device, dist, config.training, per_rank, steps)

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.training.epochs

    def epoch(self, epoch: int) -> dict[str, Any]:
        training, dist, device = self.training, self.dist, self.device
        started = time.perf_counter()
        order_gen = torch.Generator().manual_seed(_epoch_seed(training.seed, epoch, 0, 0))
        step_gen = torch.Generator(device=device).manual_seed(_epoch_seed(training.seed, epoch, dist.rank, 1))
        torch.manual_seed(_epoch_seed(training.seed, epoch, dist.rank, 2))  # MLP dropout, if any
        rows, importance = self.sampler.rows(order_gen)  # (epoch rows,) each
        rows = rows.to(device)
        importance = importance.to(device) if importance is not None else None
        sums = {"loss": torch.zeros((), device=device)}
        with log.progress(f"epoch {epoch + 1}/{training.epochs}", total=self.steps_per_epoch) as bar:
            for step in range(self.steps_per_epoch):
                for group in self.optimizer.param_groups:
                    group["lr"] = _lr_at(epoch * self.steps_per_epoch + step, self.total_steps, training)
                start = step * self.per_rank * dist.world + dist.rank * self.per_rank
                stop = start + self.per_rank
                total, parts = self._step(rows[start:stop], importance[start:stop] if importance is not None else None, step_gen)
                sums["loss"] += total.detach()
                for name, value in parts.items():
                    sums[name] = sums.get(name, torch.zeros((), device=device)) + value
                if step % 20 == 19 or step == self.steps_per_epoch - 1:
                    rate = (step + 1) * self.per_rank * dist.world / max(time.perf_counter() - started, 1e-9)
                    bar.update(completed=step + 1, status=f"loss {float(sums['loss']) / (step + 1):.4f}  {rate:,.0f} samples/s")
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        epoch_samples = self.steps_per_epoch * self.per_rank * dist.world if dist.enabled else len(self.sampler)
        self.trained_samples += epoch_samples
        self.train_seconds += seconds
        record: dict[str, Any] = {"epoch": epoch + 1, "lr": self.optimizer.param_groups[0]["lr"]}
        record.update({name: float(value) / self.steps_per_epoch for name, value in sums.items()})
        record["samples_per_s"] = epoch_samples / max(seconds, 1e-9)
        record["positives_per_s"] = record["samples_per_s"] * self.sampler.positive_share
        if not math.isfinite(record["loss"]):
            raise Diverged(f"the loss became {record['loss']} in epoch {epoch + 1}", hint="lower --lr (e.g. by 10x) or enable training.grad_clip")
        return record

    def _step(self, rows: Tensor, importance: Tensor | None, generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
        """One optimiser step on the samples `rows` (batch,), their weights times `importance`."""
        samples, data = self.data.splits["train"], self.data
        item_row = samples.item_row.index_select(0, rows)
        user_row = samples.user_row.index_select(0, rows)
        label = samples.label.index_select(0, rows)
        user_inputs = data.inputs("user", user_row, samples.user_stats_row.index_select(0, rows))
        item_inputs = data.inputs("item", item_row, samples.item_stats_row.index_select(0, rows))
        if self.profiles:
            leave_one_out(self.profiles, user_inputs, item_inputs, user_row, item_row, label)
        weight = samples.weight.index_select(0, rows)
        if importance is not None:
            weight = weight * importance
        total, parts = self.runner(user_inputs, item_inputs, label, weight, item_row, self.item_log_q.index_select(0, item_row), generator)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        if self.training.grad_clip > 0:
            clip_gradients(self.parameters, self.training.grad_clip)
        self.optimizer.step()
        return total, parts


def _distributed(step_module: TrainStep, config: TrainConfig, dist: Dist, device: torch.device) -> nn.Module:
    """step_module itself, or under torchrun its DistributedDataParallel wrapper."""
    if not dist.enabled:
        return step_module
    loss = step_module.loss
    # The pointwise bias is unused when only the softmax is on.
    unused = loss is not None and loss.config.pointwise_weight == 0 and loss.config.pairwise_weight == 0
    # Buffers are only synced for batchnorm's running stats: the click profiles are the same
    # on every rank, and broadcasting them each step would cost (ids x width) per forward.
    return nn.parallel.DistributedDataParallel(
        step_module,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=unused,
        broadcast_buffers=config.model.normalisation == "batchnorm",
    )


def _fit(loop: _Loop, progress: _Progress, validation: ValidationSet | None, ckpt: Path, fingerprint: str, on_epoch_end) -> None:
    """Epochs from where `progress` stands: train, validate, keep the best, checkpoint, stop early."""
    training, dist = loop.training, loop.dist
    metric_name = selection_metric(training)
    stopped = bool(progress.history and progress.history[-1].get("stopped"))
    started, last_epoch_s = time.perf_counter(), 0.0
    loop.runner.train()
    for epoch in range(progress.epochs_done, training.epochs):
        if stopped:
            break
        if _over_budget(training.max_minutes, time.perf_counter() - started, last_epoch_s, dist, loop.device):
            log.info(f"stopping before epoch {epoch + 1}: it would end past --max-minutes {training.max_minutes:g}")
            break
        epoch_started = time.perf_counter()
        record = loop.epoch(epoch)
        improved = validation is not None and _validate(loop, progress, validation, record, epoch)
        stop = bool(validation is not None and training.patience and progress.bad_epochs >= training.patience)
        if dist.enabled:
            flag = torch.tensor([1.0 if stop else 0.0], device=loop.device)
            torch.distributed.broadcast(flag, src=0)
            stop = bool(flag.item())
        record["stopped"] = stop
        record["improved"] = improved
        progress.history.append(record)
        progress.epochs_done = epoch + 1
        _log_epoch(record, training.epochs, metric_name)
        if dist.main:
            save_checkpoint(ckpt, loop.step_module.model, loop.step_module.loss, loop.optimizer, progress.best_state, progress.meta(fingerprint))
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, record)
        if stop:
            log.info(f"early stop after epoch {epoch + 1}: no {metric_name} gain in {training.patience} epoch(s)")
            break
        last_epoch_s = time.perf_counter() - epoch_started


def _over_budget(max_minutes: float, elapsed: float, last_epoch_s: float, dist: Dist, device: torch.device) -> bool:
    """Would one more epoch, as long as the last (validation and checkpoint included), end
    past the budget? Rank 0 decides for every rank, so they stop together."""
    over = bool(max_minutes > 0 and last_epoch_s > 0 and elapsed + last_epoch_s > 60.0 * max_minutes)
    if dist.enabled:
        flag = torch.tensor([1.0 if over else 0.0], device=device)
        torch.distributed.broadcast(flag, src=0)
        over = bool(flag.item())
    return over


def _validate(loop: _Loop, progress: _Progress, validation: ValidationSet, record: dict, epoch: int) -> bool:
    """Add the validation metrics to `record`; keep the weights if they are the best so far."""
    training = loop.training
    record.update(evaluate_for_selection(loop.step_module.model, loop.data, validation, training, loop.device))
    if record[selection_metric(training)] <= progress.best_metric:
        progress.bad_epochs += 1
        return False
    progress.best_metric, progress.best_epoch, progress.bad_epochs = record[selection_metric(training)], epoch + 1, 0
    progress.best_state = {k: v.clone() for k, v in model_state(loop.step_module.model, loop.step_module.loss).items()}
    return True


def _fit_served(model: TwoTower, data: EncodedData, validation: ValidationSet | None, config: TrainConfig, device: torch.device, progress: _Progress) -> dict[str, Any] | None:
    """model.fit_served: the served terms' weights fitted on validation (rank 0 only: it holds
    the validation set and writes the model), from the best epoch's figures."""
    if validation is None or not progress.best_epoch or not config.model.fit_served or not len(model.terms):
        return None
    return fit_term_weights(model, data, validation, config, device, progress.history[progress.best_epoch - 1])


def _result(out: Path, progress: _Progress, loop: _Loop, inputs: _Inputs, started: float, served: dict[str, Any] | None) -> TrainResult:
    final_metrics: dict[str, float] = {}
    if progress.best_epoch:
        best_record = served["metrics"] if served else progress.history[progress.best_epoch - 1]
        final_metrics = {k: v for k, v in best_record.items() if k.startswith("recall@")}
    rate = loop.trained_samples / max(loop.train_seconds, 1e-9) if loop.trained_samples else 0.0
    return TrainResult(
        out=out,
        epochs=len(progress.history),
        best_epoch=progress.best_epoch,
        metric=selection_metric(loop.training),
        best_metric=max(progress.best_metric, 0.0),
        train_samples=inputs.train.height,
        valid_samples=inputs.valid.height if inputs.valid is not None else 0,
        seconds=time.perf_counter() - started,
        samples_per_s=rate,
        positives_per_s=rate * loop.sampler.positive_share,
        metrics=final_metrics,
        served_terms={key: served[key] for key in ("weights", "configured", "metric", "before", "after")} if served else {},
    )


def _flatten(config: TrainConfig) -> dict[str, Any]:
    return {f"{section}.{key}": value for section, body in config.to_dict().items() for key, value in body.items()}


def _run_fingerprint(config: TrainConfig, train: pl.DataFrame, valid: pl.DataFrame | None, init_from, inputs: dict[str, str] | None = None) -> str:
    """Identifies a run, so --resume never continues a checkpoint of different inputs."""
    import hashlib

    digest = hashlib.sha256(config.to_toml().encode())
    digest.update(str(train.height).encode())
    digest.update(str(train.hash_rows().sum()).encode())
    if valid is not None:
        digest.update(str(valid.height).encode())
        digest.update(str(valid.hash_rows().sum()).encode())
    digest.update(str(init_from).encode())
    digest.update(json.dumps(inputs or {}, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def _log_epoch(record: dict, epochs: int, metric_name: str) -> None:
    parts = [f"loss {record['loss']:.4f}"]
    if metric_name in record:
        base = metric_name.removesuffix("_mean_views")
        parts.append(f"{base} {record[base]:.4f}")
        for key in ("warm", "cold_users", "cold_items", "item_view", "user_view", "mean_views"):
            name = f"{base}_{key}"
            if name in record:
                parts.append(f"{key} {record[name]:.4f}")
    parts.append(f"{record['samples_per_s']:,.0f} samples/s ({record['positives_per_s']:,.0f} positives/s)")
    log.event("train_epoch", f"epoch {record['epoch']}/{epochs}: " + ", ".join(parts), **record)


def _role_records(spec: FeatureSpec) -> list[dict]:
    """train_log.jsonl's first lines: how each content column was read, and why (roles.py)."""
    return [{"event": "column_role", **decision} for side in (spec.user, spec.item) for decision in side.roles]


def _write_model_dir(out: Path, step_module: TrainStep, spec: FeatureSpec, config: TrainConfig, normalize: bool, history: list[dict], result: TrainResult, samples_dir, users, items, stats, init_from) -> None:
    metrics = {
        "best_epoch": result.best_epoch,
        "epochs": result.epochs,
        "samples_per_s": result.samples_per_s,
        "positives_per_s": result.positives_per_s,
        **result.metrics,
        **({"served_terms": result.served_terms} if result.served_terms else {}),
    }
    # run_train holds the output lock (rank 0) from the start of the run.
    with io.atomic_dir(out) as temp:
        write_model_files(temp, spec=spec, config=config, state=model_state(step_module.model, step_module.loss), normalize=normalize, metrics=metrics, train_log=[*_role_records(spec), *history])
        io.Manifest(
            command="train",
            parameters={"objective": config.training.objective, "seed": config.training.seed, "epochs": config.training.epochs, "init_from": str(init_from) if init_from else None},
            inputs=io.input_fingerprints(samples=samples_dir, users=users, items=items, stats=stats),
            row_counts={"train": result.train_samples, "valid": result.valid_samples, "users": len(spec.user.ids), "items": len(spec.item.ids)},
            extra={"metrics": result.metrics},
            wall_time_s=round(result.seconds, 3),
        ).write(temp)


__all__ = ["TrainResult", "run_train", "evaluate_recall", "load_model", "LoadedModel", "with_day"]
