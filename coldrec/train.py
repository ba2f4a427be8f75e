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
import datetime as dt
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
import torch.nn.functional as F
from torch import Tensor, nn

from coldrec import io, log
from coldrec.config import TrainConfig, load_config
from coldrec.errors import EmptyInput, InputNotFound, SchemaError, UsageError, WrongDtype
from coldrec.features import (
    EncodedData,
    FeatureSpec,
    encode_dataset,
    fit_spec,
    id_indices,
    profile_edges,
    profile_matrix,
    with_day,
)
from coldrec.losses import RetrievalLoss, dropoutnet_mse
from coldrec.model import PROFILE_MATCH_CLIP, LoadedModel, TwoTower, build_model, load_model, model_state, write_model_files
from coldrec.schema import SAMPLES, check_content_table, check_id_types_match, check_schema

CHECKPOINT_STATE = "state.safetensors"
CHECKPOINT_META = "state.json"


# --------------------------------------------------------------------------- result


@dataclass
class TrainResult:
    out: Path
    epochs: int
    best_epoch: int
    metric: str
    best_metric: float
    train_samples: int
    valid_samples: int
    seconds: float
    samples_per_s: float
    metrics: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        best = f"best {self.metric} {self.best_metric:.4f} at epoch {self.best_epoch}" if self.best_epoch else "no validation"
        return (
            f"train: {self.epochs} epoch(s) on {self.train_samples:,} samples, {best}, "
            f"{self.samples_per_s:,.0f} samples/s -> {self.out} ({self.seconds:.1f}s)"
        )

    def fields(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "epochs": self.epochs,
            "best_epoch": self.best_epoch,
            "best_metric": self.best_metric,
            "train_samples": self.train_samples,
            "valid_samples": self.valid_samples,
            "seconds": round(self.seconds, 3),
            "samples_per_s": round(self.samples_per_s, 1),
            **self.metrics,
        }


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
        aux_weight = self.model.config.content_aux_weight
        if aux_weight > 0 and self.training:
            # model.content_aux_weight: the same loss against every row's content-only item view.
            aux = self.loss(user, self.model.content_view("item", item_inputs, served=False), label, item_index=item_row, weight=weight, item_log_q=item_log_q, generator=generator)
            return out.total + aux_weight * aux.total, {**out.parts, "content_aux": aux.total.detach()}
        return out.total, out.parts


def _fill_profiles(model: TwoTower, data: EncodedData, spec: FeatureSpec, chunk: int = 1 << 16) -> dict[str, Tensor]:
    """model.user_profile / item_profile: sum the profile rows of the other side over every
    entity's train clicks into its tower's buffers (per id row; the cold row 0 stays empty).

    -> side -> (other side's entities, width): what a click adds, for the leave-one-out.
    Clicks are added `chunk` at a time, so the peak memory does not grow with the clicks.
    """
    if not (model.user.profile_width or model.item.profile_width):
        return {}  # (model.match needs the user profile)
    samples = data.splits["train"]
    clicked = samples.label > 0
    rows = {"user": samples.user_row[clicked], "item": samples.item_row[clicked]}  # (clicks,) each
    out = {}
    edges = {side: profile_edges(spec.side(side), data.entity(side).content) for side in ("user", "item")}
    for side, other in (("user", "item"), ("item", "user")):
        tower = model.user if side == "user" else model.item
        if not tower.profile_width:
            continue
        per_entity = profile_matrix(spec.side(other), data.entity(other).content, edges[other])  # (others, width)
        if side == "user" and model.match:
            model.item_value_edges.copy_(edges["item"])  # served items' values use the training buckets
            if hasattr(model, "match_basis"):
                _fit_match_basis(model, per_entity)
        id_rows = data.entity(side).id_index.index_select(0, rows[side])  # (clicks,)
        with torch.no_grad():
            tower.profile_sum.zero_()
            for start in range(0, len(id_rows), chunk):
                tower.profile_sum.index_add_(0, id_rows[start : start + chunk], per_entity.index_select(0, rows[other][start : start + chunk]))
            tower.profile_count.zero_().index_add_(0, id_rows, torch.ones(len(id_rows)))
            # The global shares: every click, also those of ids without a row (summed in row 0).
            tower.profile_prior.copy_(tower.profile_sum.sum(0) / max(len(id_rows), 1))
            tower.profile_prior.clamp_(min=1e-4)
            tower.profile_sum[0] = 0.0
            tower.profile_count[0] = 0.0
        mib = tower.profile_sum.numel() * 4 / 2**20
        log.info(f"{side} click profiles: {tower.profile_width} slots x {tower.profile_sum.shape[0]:,} ids ({mib:,.1f} MiB)")
        out[side] = per_entity
        if side == "user" and model.impute:
            _fit_profile_impute(model, data, spec, edges["user"], chunk)
    return out


def _fit_profile_impute(model: TwoTower, data: EncodedData, spec: FeatureSpec, edges: Tensor, chunk: int = 1 << 16) -> None:
    """model.profile_impute: `impute_map[s]` = the mean clipped click profile of the users
    (rows of the users table with a train click) having user value s, each weighted by its
    share of s (a bag splits one unit over its values); 0 for a value no such user has."""
    users = data.entity("user")
    clicked = model.user.profile_count.index_select(0, users.id_index) > 0  # (users,)
    width = model.impute_map.shape[0]
    total = torch.zeros(width, model.value_width, dtype=torch.float64)
    weight = torch.zeros(width, dtype=torch.float64)
    with torch.no_grad():
        for start in range(0, len(clicked), chunk):  # `chunk` users at a time: memory stays flat
            keep = clicked[start : start + chunk]
            content = {key: tensor[start : start + chunk][keep] for key, tensor in users.content.items()}
            part = profile_matrix(spec.side("user"), content, edges).double()  # (k, user value width)
            profile = model.user.profile({"id": users.id_index[start : start + chunk][keep]})  # (k, value_width)
            total += part.T @ profile.clamp(-PROFILE_MATCH_CLIP, PROFILE_MATCH_CLIP).double()
            weight += part.sum(0)
        model.user_value_edges.copy_(edges)
        model.impute_map.copy_((total / weight.clamp(min=1e-12).unsqueeze(1)).float())
    log.info(f"imputed profiles: {int(clicked.sum()):,} users with a train click, {int((weight > 0).sum()):,} of "
             f"{width} user value slots seen (model.profile_impute {model.impute:g})")


def _fill_popularity(model: TwoTower, frame: pl.DataFrame, spec: FeatureSpec, days: float, new_quantile: float) -> None:
    """model.popularity_prior: `item_popularity` = log((c + 1) / (c_max + 1)) per item id row,
    c = the row's train clicks with ts in the last `days` days before the last train sample
    (every click with days = 0), so an item without such a click gets the floor
    log(1 / (c_max + 1)); row 0, the items without a row (new or rare ids), gets the
    `new_quantile` quantile of the other rows (model.new_item_prior), or their mean if that
    is higher: a new item is presumed as popular as a well-placed known item, never less
    than a typical one."""
    clicks = frame.filter(pl.col("label") > 0)
    if days > 0:
        clicks = clicks.filter(pl.col("ts") > frame["ts"].max() - dt.timedelta(days=days))
    rows = torch.from_numpy(id_indices(spec.item, clicks["item_id"]))  # (recent clicks,)
    counts = torch.bincount(rows, minlength=model.item_popularity.shape[0]).double()  # (item id rows,)
    c_max = float(counts[1:].max()) if len(counts) > 1 else 0.0
    values = torch.log((counts + 1.0) / (c_max + 1.0))  # (item id rows,)
    if len(values) > 1:
        known = values[1:].numpy()
        values[0] = max(float(np.quantile(known, new_quantile)), float(known.mean()))
    else:
        values[0] = 0.0
    with torch.no_grad():
        model.item_popularity.copy_(values.float())
        model.popularity_floor.fill_(-math.log(c_max + 1.0))
    span = f"the last {days:g} days" if days > 0 else "all days"
    log.info(f"popularity prior: {len(clicks):,} train clicks of {span} on {int((counts[1:] > 0).sum()):,} items "
             f"(the most clicked: {int(c_max):,}; new items get {float(values[0]):.2f}, the {new_quantile:.0%} "
             f"quantile of the known items or their mean, model.new_item_prior)")


def _fit_match_basis(model: TwoTower, values: Tensor, chunk: int = 1 << 16) -> None:
    """model.profile_match_rank: the top principal directions of the items' values (rows of
    `values`, (items, value_width)), the eigenvectors of their second-moment matrix, so
    values B B' keeps as much of each item's values as `match_width` directions can."""
    moment = torch.zeros(values.shape[1], values.shape[1], dtype=torch.float64)
    for start in range(0, len(values), chunk):
        part = values[start : start + chunk].double()
        moment += part.T @ part
    eigenvalues, eigenvectors = torch.linalg.eigh(moment)  # ascending
    top = eigenvectors[:, -model.match_width :].flip(1)  # (value_width, match_width)
    model.match_basis.copy_(top.float())
    kept = float(eigenvalues[-model.match_width :].sum() / eigenvalues.sum().clamp(min=1e-12))
    log.info(f"profile match: {model.match_width} of {model.value_width} item value slots served, "
             f"{kept:.0%} of the values' energy kept (model.profile_match_rank)")


def _leave_one_out(profiles: dict[str, Tensor], user_inputs: dict, item_inputs: dict, user_row: Tensor, item_row: Tensor, label: Tensor) -> None:
    """Take each positive sample's own click out of its user's and item's profiles (ids
    without a row have an empty profile: nothing to take out)."""
    for side, inputs, other_row in (("user", user_inputs, item_row), ("item", item_inputs, user_row)):
        if side in profiles:
            counted = ((label > 0) & (inputs["id"] > 0)).float()  # (batch,)
            inputs["profile_minus"] = profiles[side].index_select(0, other_row) * counted.unsqueeze(1)
            inputs["profile_count_minus"] = counted


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


# --------------------------------------------------------------------------- validation


@dataclass
class ValidationSet:
    """Everything Recall@K needs, as tensors, built once."""

    user_rows: Tensor  # (U,) entity rows of the evaluated users
    user_stats_rows: Tensor  # (U,)
    item_rows: Tensor  # (I,) every item seen in validation
    item_stats_rows: Tensor  # (I,)
    positives: Tensor  # (P, 2) (user position, item position) pairs
    excluded: Tensor  # (X, 2) train positives to skip in the ranking
    user_cold: Tensor  # (U,) bool
    item_cold: Tensor  # (I,) bool


def build_validation(data: EncodedData, config: TrainConfig) -> ValidationSet | None:
    frames = data.frames
    if "valid" not in frames:
        return None
    valid = frames["valid"]
    positives = valid.filter(pl.col("label") > 0)
    if positives.height == 0:
        log.warning("validation has no positive labels: no early stopping")
        return None
    # Entities are embedded as of their first validation sample (stats of that day).
    first = valid.sort("ts")
    users = first.unique("__user_row", keep="first", maintain_order=True).filter(pl.col("__user_row").is_in(positives["__user_row"].implode()))
    users = users.sort("__user_row")
    if users.height > config.training.max_valid_users:
        chosen = np.random.default_rng(config.training.seed).choice(users.height, config.training.max_valid_users, replace=False)
        users = users[np.sort(chosen)]
    items = first.unique("__item_row", keep="first", maintain_order=True).sort("__item_row")
    user_pos = users.select("__user_row", pl.int_range(pl.len(), dtype=pl.Int64).alias("u"))
    item_pos = items.select("__item_row", pl.int_range(pl.len(), dtype=pl.Int64).alias("i"))
    pairs = positives.select("__user_row", "__item_row").unique().join(user_pos, on="__user_row").join(item_pos, on="__item_row")
    excluded = pl.DataFrame({"u": [], "i": []}, schema={"u": pl.Int64, "i": pl.Int64})
    if config.training.exclude_train_positives and "train" in frames:
        seen = frames["train"].filter(pl.col("label") > 0).select("__user_row", "__item_row").unique()
        seen = seen.join(user_pos, on="__user_row").join(item_pos, on="__item_row")
        excluded = seen.join(pairs.select("u", "i"), on=["u", "i"], how="anti").select("u", "i")
    user_rows = _long(users["__user_row"])
    item_rows = _long(items["__item_row"])
    return ValidationSet(
        user_rows=user_rows,
        user_stats_rows=_long(users["__user_stats_row"]),
        item_rows=item_rows,
        item_stats_rows=_long(items["__item_stats_row"]),
        positives=torch.from_numpy(pairs.select("u", "i").to_numpy().astype(np.int64).reshape(-1, 2)),
        excluded=torch.from_numpy(excluded.to_numpy().astype(np.int64).reshape(-1, 2)),
        user_cold=(data.users.id_index[user_rows] == 0) & (_long(users["__user_stats_row"]) == 0),
        item_cold=(data.items.id_index[item_rows] == 0) & (_long(items["__item_stats_row"]) == 0),
    )


def _long(series: pl.Series) -> Tensor:
    return torch.from_numpy(series.to_numpy().astype(np.int64))


@torch.no_grad()
def _embed_rows(model: TwoTower, data: EncodedData, side: str, rows: Tensor, stats_rows: Tensor, device: torch.device, batch: int = 8192, content_only: bool = False) -> Tensor:
    """(rows, dim) L2-normalised; `content_only` zeroes every row's preference block (cold view)."""
    out = []
    for start in range(0, len(rows), batch):
        r = rows[start : start + batch].to(device)
        s = stats_rows[start : start + batch].to(device)
        inputs = data.inputs(side, r, s)
        vectors = model.content_view(side, inputs) if content_only else model.embed(side, inputs)
        out.append(F.normalize(vectors, dim=1))  # (batch, dim)
    return torch.cat(out)


def _top_k_hits(users: Tensor, items: Tensor, valid: ValidationSet, k: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Per validation user: (hits in the top K, of them on cold items), both (U,)."""
    n_users, n_items = users.shape[0], items.shape[0]
    k_eff = min(k, n_items)
    hits = torch.zeros(n_users, device=device)
    cold_hits = torch.zeros(n_users, device=device)
    positives = valid.positives.to(device)
    excluded = valid.excluded.to(device)
    item_cold = valid.item_cold.to(device)
    chunk = max(1, 4_000_000 // max(n_items, 1))
    for start in range(0, n_users, chunk):
        stop = min(start + chunk, n_users)
        scores = users[start:stop] @ items.T  # (chunk, I)
        drop = excluded[(excluded[:, 0] >= start) & (excluded[:, 0] < stop)]
        scores[drop[:, 0] - start, drop[:, 1]] = float("-inf")
        top = scores.topk(k_eff, dim=1).indices  # (chunk, K)
        in_top = torch.zeros_like(scores, dtype=torch.bool)
        in_top.scatter_(1, top, True)
        mine = positives[(positives[:, 0] >= start) & (positives[:, 0] < stop)]
        hit = in_top[mine[:, 0] - start, mine[:, 1]].float()  # (P_chunk,)
        hits.index_add_(0, mine[:, 0], hit)
        cold_hits.index_add_(0, mine[:, 0], hit * item_cold[mine[:, 1]].float())
    return hits, cold_hits


@torch.no_grad()
def evaluate_recall(model: TwoTower, data: EncodedData, valid: ValidationSet, k: int, device: torch.device, views: bool = False) -> dict[str, float]:
    """Recall@K by full ranking over the validation items: overall, warm, cold users, cold items.

    Recall of a user = hits in the top K / that user's positives; averaged over users. The
    cold-item figure counts only positives on cold items (users with at least one).

    `views` adds the cold views (training.select_on = "mean_views"): `recall@K_item_view`,
    the same ranking with every item's preference block zeroed (items as content only, as a
    new item is served), `recall@K_user_view` likewise for the users, and
    `recall@K_mean_views`, the mean of recall@K and the two views.
    """
    was_training = model.training
    model.eval()
    users = _embed_rows(model, data, "user", valid.user_rows, valid.user_stats_rows, device)  # (U, dim)
    items = _embed_rows(model, data, "item", valid.item_rows, valid.item_stats_rows, device)  # (I, dim)
    n_users, n_items = users.shape[0], items.shape[0]
    hits, cold_hits = _top_k_hits(users, items, valid, k, device)  # (U,) each
    positives = valid.positives.to(device)
    item_cold = valid.item_cold.to(device)
    n_pos = torch.bincount(positives[:, 0], minlength=n_users).float()
    n_cold_pos = torch.bincount(positives[:, 0], weights=item_cold[positives[:, 1]].float(), minlength=n_users)
    recall = hits / n_pos.clamp(min=1)
    user_cold = valid.user_cold.to(device)
    metrics = {f"recall@{k}": float(recall.mean())}
    if bool((~user_cold).any()):
        warm_pos = n_pos - n_cold_pos
        warm_users = (~user_cold) & (warm_pos > 0)
        if bool(warm_users.any()):
            metrics[f"recall@{k}_warm"] = float(((hits - cold_hits) / warm_pos.clamp(min=1))[warm_users].mean())
    if bool(user_cold.any()):
        metrics[f"recall@{k}_cold_users"] = float(recall[user_cold].mean())
    has_cold = n_cold_pos > 0
    if bool(has_cold.any()):
        metrics[f"recall@{k}_cold_items"] = float((cold_hits / n_cold_pos.clamp(min=1))[has_cold].mean())
    if views:
        item_view = _embed_rows(model, data, "item", valid.item_rows, valid.item_stats_rows, device, content_only=True)  # (I, dim)
        user_view = _embed_rows(model, data, "user", valid.user_rows, valid.user_stats_rows, device, content_only=True)  # (U, dim)
        item_hits, _ = _top_k_hits(users, item_view, valid, k, device)
        user_hits, _ = _top_k_hits(user_view, items, valid, k, device)
        metrics[f"recall@{k}_item_view"] = float((item_hits / n_pos.clamp(min=1)).mean())
        metrics[f"recall@{k}_user_view"] = float((user_hits / n_pos.clamp(min=1)).mean())
        metrics[f"recall@{k}_mean_views"] = (metrics[f"recall@{k}"] + metrics[f"recall@{k}_item_view"] + metrics[f"recall@{k}_user_view"]) / 3.0
    metrics["valid_users"] = float(n_users)
    metrics["valid_items"] = float(n_items)
    model.train(was_training)
    return metrics


# --------------------------------------------------------------------------- warm start


def extend_spec(old: FeatureSpec, new: FeatureSpec) -> FeatureSpec:
    """Yesterday's spec grown by today's: known ids and values keep their indices (and
    normalisers), new ones are appended."""
    merged = copy.deepcopy(new)
    for side in ("user", "item"):
        o, m = old.side(side), merged.side(side)
        if o.id_dtype != m.id_dtype:
            raise WrongDtype(f"{side} ids were {o.id_dtype} in the --init-from model, {m.id_dtype} now", column=m.id_column, hint="use the same id type, or train from scratch")
        known = set(o.ids)
        m.ids = list(o.ids) + [i for i in m.ids if i not in known]
        old_columns = {(c.name, c.role): c for c in o.columns}
        for index, column in enumerate(m.columns):
            previous = old_columns.get((column.name, column.role))
            if previous is None:
                continue
            if column.role in ("categorical", "multi_hot"):
                seen = set(previous.vocab)
                column.vocab = list(previous.vocab) + [v for v in column.vocab if v not in seen]
                column.bag_size = max(column.bag_size, previous.bag_size)
            elif column.role == "numeric":
                column.mean, column.std, column.log1p = previous.mean, previous.std, previous.log1p
            elif column.role == "numeric_bucket":
                column.boundaries = list(previous.boundaries)
            elif column.role == "text":
                column.buckets = previous.buckets
                column.bag_size = max(column.bag_size, previous.bag_size)
        if o.stats_columns == m.stats_columns:
            m.stats_mean, m.stats_std, m.stats_log1p = list(o.stats_mean), list(o.stats_std), list(o.stats_log1p)
    return merged


def transfer_weights(model: TwoTower, spec: FeatureSpec, old: LoadedModel, loss: nn.Module | None) -> dict[str, int]:
    """Copy what carries over from `old`: id and vocabulary rows (a prefix, see extend_spec),
    encoders matched by column name and role, and every other tensor whose shape matches."""
    copied = fresh = 0
    old_state = old.model.state_dict()
    new_state = model.state_dict()
    renames: dict[str, str] = {}
    for side in ("user", "item"):
        old_keys = {(c.name, c.role): f"col{i}" for i, c in enumerate(old.spec.side(side).columns)}
        for i, column in enumerate(spec.side(side).columns):
            key = old_keys.get((column.name, column.role))
            if key is not None:
                renames[f"{side}.encoders.col{i}."] = f"{side}.encoders.{key}."
    with torch.no_grad():
        for name, tensor in new_state.items():
            source = name
            for new_prefix, old_prefix in renames.items():
                if name.startswith(new_prefix):
                    source = old_prefix + name[len(new_prefix) :]
            previous = old_state.get(source)
            if previous is None:
                fresh += 1
                continue
            if previous.shape == tensor.shape:
                tensor.copy_(previous)
                copied += 1
            elif previous.ndim == 2 and tensor.ndim == 2 and previous.shape[1] == tensor.shape[1] and previous.shape[0] <= tensor.shape[0] and ("embedding" in name or ".encoders.col" in name):
                tensor[: previous.shape[0]].copy_(previous)  # known rows keep theirs; new rows stay fresh
                copied += 1
            else:
                fresh += 1
    if loss is not None and old.directory is not None:
        from safetensors.torch import load_file

        state = load_file(str(Path(old.directory) / "weights.safetensors"))
        bias = state.get("loss.bias")
        if bias is not None and hasattr(loss, "bias"):
            with torch.no_grad():
                loss.bias.copy_(bias)
    return {"copied": copied, "fresh": fresh}


# --------------------------------------------------------------------------- checkpoints


def checkpoint_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.checkpoint"


def _save_checkpoint(directory: Path, step_module: TrainStep, optimizer: torch.optim.Optimizer, best_state: dict[str, Tensor] | None, meta: dict) -> None:
    from safetensors.torch import save_file

    tensors = {f"current.{k}": v for k, v in model_state(step_module.model, step_module.loss).items()}
    if best_state is not None:
        tensors.update({f"best.{k}": v for k, v in best_state.items()})
    opt_state = optimizer.state_dict()
    scalars: dict[str, Any] = {}
    for index, entry in opt_state["state"].items():
        for key, value in entry.items():
            if isinstance(value, Tensor):
                tensors[f"optim.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    meta = {**meta, "optimizer_groups": opt_state["param_groups"], "optimizer_scalars": scalars, "has_best": best_state is not None}
    with io.atomic_dir(directory, replace_foreign=True) as temp:
        save_file(tensors, str(temp / CHECKPOINT_STATE))
        (temp / CHECKPOINT_META).write_text(json.dumps(meta, default=float))


def _load_checkpoint(directory: Path, step_module: TrainStep, optimizer: torch.optim.Optimizer) -> tuple[dict, dict[str, Tensor] | None]:
    from safetensors.torch import load_file

    try:
        meta = json.loads((directory / CHECKPOINT_META).read_text())
        tensors = load_file(str(directory / CHECKPOINT_STATE))
    except Exception as error:  # noqa: BLE001
        raise UsageError(f"cannot read the checkpoint ({error})", path=directory, hint="remove it and rerun without --resume") from None
    current = {k[len("current.") :]: v for k, v in tensors.items() if k.startswith("current.")}
    step_module.model.load_state_dict({k[len("model.") :]: v for k, v in current.items() if k.startswith("model.")})
    if step_module.loss is not None:
        step_module.loss.load_state_dict({k[len("loss.") :]: v for k, v in current.items() if k.startswith("loss.")})
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for key, value in meta.get("optimizer_scalars", {}).items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["optimizer_groups"]})
    best = {k[len("best.") :]: v for k, v in tensors.items() if k.startswith("best.")} if meta.get("has_best") else None
    return meta, best


def _load_state_into(step_module: TrainStep, state: dict[str, Tensor]) -> None:
    step_module.model.load_state_dict({k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")})
    if step_module.loss is not None:
        step_module.loss.load_state_dict({k[len("loss.") :]: v for k, v in state.items() if k.startswith("loss.")})


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
    training = config.training
    objective = training.objective
    if objective == "dropoutnet" and (user_vectors is None or item_vectors is None):
        raise UsageError("objective dropoutnet needs --user-vectors and --item-vectors", hint="pass both Parquet files of pretrained vectors")
    if objective != "dropoutnet" and (user_vectors is not None or item_vectors is not None):
        raise UsageError("--user-vectors/--item-vectors are only used with --objective dropoutnet", hint="add --objective dropoutnet or drop the vectors")

    samples_dir, out = Path(samples_dir), Path(out)
    if not samples_dir.is_dir():
        raise InputNotFound("no such samples directory", path=samples_dir, hint="point --samples at a directory written by `coldrec prepare`")
    train = _read_samples(samples_dir / "train.parquet", required=True)
    valid = _read_samples(samples_dir / "valid.parquet", required=False)
    user_table = _read_content(Path(users), "user_id")
    item_table = _read_content(Path(items), "item_id")
    check_id_types_match(train.schema["user_id"], user_table.schema["user_id"], "user_id", users, samples_dir / "train.parquet")
    check_id_types_match(train.schema["item_id"], item_table.schema["item_id"], "item_id", items, samples_dir / "train.parquet")
    user_stats, user_stats_path = _read_stats(Path(stats) if stats else None, "user")
    item_stats, item_stats_path = _read_stats(Path(stats) if stats else None, "item")

    dist, torch_device = _init_distributed(training.device)
    if not dist.main:
        log.configure(log_format=log.settings.format, quiet=True, debug=log.settings.debug)  # rank 0 speaks
    torch.manual_seed(training.seed)

    spec = fit_spec(train, user_table, item_table, config.features, user_stats=user_stats, item_stats=item_stats, users_path=users, items_path=items)
    pretrained: dict[str, np.ndarray] = {}
    if objective == "dropoutnet":
        for side, path in (("user", user_vectors), ("item", item_vectors)):
            ids, matrix = _read_vectors(Path(path), f"{side}_id")
            entity = spec.side(side)
            check_id_types_match(ids.dtype, train.schema[f"{side}_id"], f"{side}_id", path, samples_dir / "train.parquet")
            entity.ids = ids.to_list()
            entity.pretrained_dim = int(matrix.shape[1])
            pretrained[side] = matrix
        # Samples whose user or item has no pretrained vector have no target.
        train = train.join(pl.DataFrame({"user_id": spec.user.ids}, schema={"user_id": train.schema["user_id"]}), on="user_id", how="semi")
        train = train.join(pl.DataFrame({"item_id": spec.item.ids}, schema={"item_id": train.schema["item_id"]}), on="item_id", how="semi")
        if train.height == 0:
            raise EmptyInput("no training sample has both a user and an item vector", path=user_vectors, hint="check the ids of the vector files")
    old_model = None
    if init_from is not None:
        old_model = load_model(init_from)
        spec = extend_spec(old_model.spec, spec)

    splits = {"train": train}
    if valid is not None and valid.height:
        splits["valid"] = valid
    data = encode_dataset(spec, splits, user_table, item_table, user_stats=user_stats, item_stats=item_stats, users_path=users, items_path=items)
    log.info(
        f"encoded {train.height:,} train / {valid.height if valid is not None else 0:,} valid samples; "
        f"{len(spec.user.ids):,} known users, {len(spec.item.ids):,} known items"
    )
    validation = build_validation(data, config) if dist.main else None  # rank 0 validates

    normalize = objective != "dropoutnet"
    model = build_model(spec, config.model, normalize=normalize)
    if pretrained:
        with torch.no_grad():
            for side, matrix in pretrained.items():
                tower = model.user if side == "user" else model.item
                tower.id_embedding.weight[1:] = torch.from_numpy(matrix)
    loss = RetrievalLoss(config.loss.to_loss_config()) if objective == "twotower" else None
    if old_model is not None:
        moved = transfer_weights(model, spec, old_model, loss)
        log.info(f"warm start from {init_from}: {moved['copied']} tensors carried over, {moved['fresh']} fresh")
    profiles = _fill_profiles(model, data, spec)  # side -> (other side's entities, width); after the warm start: data, not weights
    if model.prior:
        _fill_popularity(model, train, spec, config.model.popularity_days, config.model.new_item_prior)
    step_module = TrainStep(model, loss, objective, dist).to(torch_device)
    data = data.to(torch_device)
    samples = data.splits["train"]
    item_log_q = _item_log_q(samples.item_row, len(data.items)).to(torch_device)  # (items,)
    profiles = {side: table.to(torch_device) for side, table in profiles.items()}
    parameters = [p for p in step_module.parameters() if p.requires_grad]
    optimizer = make_optimizer(parameters, training.lr, training.weight_decay)
    runner: nn.Module = step_module
    if dist.enabled:
        # The pointwise bias is unused when only the softmax is on.
        unused = loss is not None and loss.config.pointwise_weight == 0 and loss.config.pairwise_weight == 0
        # Buffers are only synced for batchnorm's running stats: the click profiles are the same
        # on every rank, and broadcasting them each step would cost (ids x width) per forward.
        runner = nn.parallel.DistributedDataParallel(
            step_module,
            device_ids=[torch_device.index] if torch_device.type == "cuda" else None,
            find_unused_parameters=unused,
            broadcast_buffers=config.model.normalisation == "batchnorm",
        )

    n = len(samples)
    per_rank = max(1, training.batch_size // dist.world)
    if dist.enabled:
        steps_per_epoch = max(1, n // (per_rank * dist.world))
    else:
        steps_per_epoch = max(1, math.ceil(n / per_rank))
    total_steps = steps_per_epoch * training.epochs
    metric_name = f"recall@{training.recall_k}" + ("_mean_views" if training.select_on == "mean_views" else "")

    history: list[dict] = []
    best_state: dict[str, Tensor] | None = None
    best_metric, best_epoch, bad_epochs, start_epoch = -1.0, 0, 0, 0
    ckpt = checkpoint_dir(out)
    fingerprint = _run_fingerprint(config, train, valid, init_from, inputs=io.input_fingerprints(users=users, items=items, stats=stats))
    if resume:
        if (ckpt / CHECKPOINT_META).exists():
            meta, best_state = _load_checkpoint(ckpt, step_module, optimizer)
            if meta.get("fingerprint") != fingerprint:
                raise UsageError(
                    "the checkpoint belongs to another run (different config or data)",
                    path=ckpt,
                    hint="rerun with the same inputs and config, or without --resume (the checkpoint is then replaced)",
                )
            start_epoch = int(meta["epochs_done"])
            history = meta["history"]
            best_metric, best_epoch, bad_epochs = float(meta["best_metric"]), int(meta["best_epoch"]), int(meta["bad_epochs"])
            log.info(f"resuming after epoch {start_epoch} from {ckpt}")
        else:
            log.warning(f"--resume: no checkpoint at {ckpt}, starting from scratch")
    stopped = bool(history and history[-1].get("stopped"))

    runner.train()
    trained_samples, train_seconds = 0, 0.0
    for epoch in range(start_epoch, training.epochs):
        if stopped:
            break
        epoch_started = time.perf_counter()
        order_gen = torch.Generator().manual_seed(_epoch_seed(training.seed, epoch, 0, 0))
        step_gen = torch.Generator(device=torch_device).manual_seed(_epoch_seed(training.seed, epoch, dist.rank, 1))
        torch.manual_seed(_epoch_seed(training.seed, epoch, dist.rank, 2))  # MLP dropout, if any
        permutation = torch.randperm(n, generator=order_gen).to(torch_device)  # (n,)
        sums = {"loss": torch.zeros((), device=torch_device)}
        with log.progress(f"epoch {epoch + 1}/{training.epochs}", total=steps_per_epoch) as bar:
            for step in range(steps_per_epoch):
                global_step = epoch * steps_per_epoch + step
                for group in optimizer.param_groups:
                    group["lr"] = _lr_at(global_step, total_steps, training)
                start = step * per_rank * dist.world + dist.rank * per_rank
                rows = permutation[start : start + per_rank]  # (batch,)
                item_row = samples.item_row.index_select(0, rows)
                user_row = samples.user_row.index_select(0, rows)
                user_inputs = data.inputs("user", user_row, samples.user_stats_row.index_select(0, rows))
                item_inputs = data.inputs("item", item_row, samples.item_stats_row.index_select(0, rows))
                if profiles:
                    _leave_one_out(profiles, user_inputs, item_inputs, user_row, item_row, samples.label.index_select(0, rows))
                total, parts = runner(
                    user_inputs,
                    item_inputs,
                    samples.label.index_select(0, rows),
                    samples.weight.index_select(0, rows),
                    item_row,
                    item_log_q.index_select(0, item_row),
                    step_gen,
                )
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                if training.grad_clip > 0:
                    clip_gradients(parameters, training.grad_clip)
                optimizer.step()
                sums["loss"] += total.detach()
                for name, value in parts.items():
                    sums[name] = sums.get(name, torch.zeros((), device=torch_device)) + value
                if step % 20 == 19 or step == steps_per_epoch - 1:
                    elapsed = time.perf_counter() - epoch_started
                    rate = (step + 1) * per_rank * dist.world / max(elapsed, 1e-9)
                    bar.update(completed=step + 1, status=f"loss {float(sums['loss']) / (step + 1):.4f}  {rate:,.0f} samples/s")
        if torch_device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - epoch_started
        epoch_samples = steps_per_epoch * per_rank * dist.world if dist.enabled else n
        trained_samples += epoch_samples
        train_seconds += seconds
        record: dict[str, Any] = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"]}
        record.update({name: float(value) / steps_per_epoch for name, value in sums.items()})
        record["samples_per_s"] = epoch_samples / max(seconds, 1e-9)
        if not math.isfinite(record["loss"]):
            raise UsageError(f"the loss became {record['loss']} in epoch {epoch + 1}", hint="lower --lr (e.g. by 10x) or enable training.grad_clip")
        improved = False
        if validation is not None:
            record.update(evaluate_recall(step_module.model, data, validation, training.recall_k, torch_device, views=training.select_on == "mean_views"))
            value = record[metric_name]
            if value > best_metric:
                best_metric, best_epoch, bad_epochs, improved = value, epoch + 1, 0, True
                best_state = {k: v.clone() for k, v in model_state(step_module.model, step_module.loss).items()}
            else:
                bad_epochs += 1
        stop = bool(validation is not None and training.patience and bad_epochs >= training.patience)
        if dist.enabled:
            flag = torch.tensor([1.0 if stop else 0.0], device=torch_device)
            torch.distributed.broadcast(flag, src=0)
            stop = bool(flag.item())
        record["stopped"] = stop
        record["improved"] = improved
        history.append(record)
        _log_epoch(record, training.epochs, metric_name)
        if dist.main:
            _save_checkpoint(
                ckpt,
                step_module,
                optimizer,
                best_state,
                {
                    "fingerprint": fingerprint,
                    "epochs_done": epoch + 1,
                    "history": history,
                    "best_metric": best_metric,
                    "best_epoch": best_epoch,
                    "bad_epochs": bad_epochs,
                },
            )
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, record)
        if stop:
            log.info(f"early stop after epoch {epoch + 1}: no {metric_name} gain in {training.patience} epoch(s)")
            break

    if best_state is not None and training.restore_best:
        _load_state_into(step_module, {k: v.to(torch_device) for k, v in best_state.items()})
    final_metrics: dict[str, float] = {}
    if best_epoch:
        best_record = history[best_epoch - 1]
        final_metrics = {k: v for k, v in best_record.items() if k.startswith("recall@")}
    result = TrainResult(
        out=out,
        epochs=len(history),
        best_epoch=best_epoch,
        metric=metric_name,
        best_metric=max(best_metric, 0.0),
        train_samples=train.height,
        valid_samples=valid.height if valid is not None else 0,
        seconds=time.perf_counter() - started,
        samples_per_s=trained_samples / max(train_seconds, 1e-9) if trained_samples else 0.0,
        metrics=final_metrics,
    )
    if dist.main:
        _write_model_dir(out, step_module, spec, config, normalize, history, result, samples_dir, users, items, stats, init_from)
        shutil.rmtree(ckpt, ignore_errors=True)
    if dist.enabled:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return result


def _flatten(config: TrainConfig) -> dict[str, Any]:
    return {f"{section}.{key}": value for section, body in config.to_dict().items() for key, value in body.items()}


def _item_log_q(item_rows: Tensor, n_items: int) -> Tensor:
    """log of each item's share of the training samples (the in-batch sampling probability)."""
    counts = torch.bincount(item_rows.cpu(), minlength=n_items).float().clamp(min=1.0)  # (items,)
    return torch.log(counts / max(len(item_rows), 1))


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
    parts.append(f"{record['samples_per_s']:,.0f} samples/s")
    log.event("train_epoch", f"epoch {record['epoch']}/{epochs}: " + ", ".join(parts), **record)


def _write_model_dir(out: Path, step_module: TrainStep, spec: FeatureSpec, config: TrainConfig, normalize: bool, history: list[dict], result: TrainResult, samples_dir, users, items, stats, init_from) -> None:
    metrics = {
        "best_epoch": result.best_epoch,
        "epochs": result.epochs,
        "samples_per_s": result.samples_per_s,
        **result.metrics,
    }
    # run_train holds the output lock (rank 0) from the start of the run.
    with io.atomic_dir(out) as temp:
        write_model_files(temp, spec=spec, config=config, state=model_state(step_module.model, step_module.loss), normalize=normalize, metrics=metrics, train_log=history)
        io.Manifest(
            command="train",
            parameters={"objective": config.training.objective, "seed": config.training.seed, "epochs": config.training.epochs, "init_from": str(init_from) if init_from else None},
            inputs=io.input_fingerprints(samples=samples_dir, users=users, items=items, stats=stats),
            row_counts={"train": result.train_samples, "valid": result.valid_samples, "users": len(spec.user.ids), "items": len(spec.item.ids)},
            extra={"metrics": result.metrics},
            wall_time_s=round(result.seconds, 3),
        ).write(temp)


__all__ = ["TrainResult", "run_train", "evaluate_recall", "load_model", "LoadedModel", "with_day"]
