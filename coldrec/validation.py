"""Validation inside `coldrec train`: Recall@K by full ranking over the validation items.

`build_validation` turns the encoded valid split into tensors once; `evaluate_recall` embeds
the validation users and items with the current weights (as served: `TwoTower.embed`) and
ranks every item for every user, after each epoch. The epoch with the best figure is kept
(training.select_on picks the figure).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from torch import Tensor

from coldrec import log
from coldrec.config import TrainConfig
from coldrec.features import EncodedData
from coldrec.model import TwoTower


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


def selection_metric(training) -> str:
    """The figure that picks the best epoch (training.select_on), as a key of evaluate_recall."""
    return f"recall@{training.recall_k}" + ("_mean_views" if training.select_on == "mean_views" else "")


def evaluate_for_selection(model: TwoTower, data: EncodedData, valid: ValidationSet, training, device: torch.device) -> dict[str, float]:
    """evaluate_recall with what training.select_on needs (the cold views for "mean_views")."""
    return evaluate_recall(model, data, valid, training.recall_k, device, views=training.select_on == "mean_views")
