"""Training losses of the DropoutNet two-tower model.

One object, `RetrievalLoss`, combines up to three losses on a batch of (user, item, label)
exposures; `LossConfig` validates every option and combination when it is built, not deep
inside the training loop (TensorFlow Recommenders' Retrieval task does the same).

- pointwise: sigmoid cross-entropy of the label on `scale * cos(u, v) + bias`.
- pairwise (AUC): for every in-batch pair with label_i > label_j, sigmoid cross-entropy of
  (logit_i - logit_j) against 1.
- softmax over the positive rows (anchors), either against every in-batch item with the
  log-Q popularity correction of Yi et al. 2019 ("inbatch"), or against `num_negatives`
  rolled in-batch items with the support-vector-guided softmax of Wang et al. 2018
  ("svsoftmax").

`dropoutnet_mse` is the objective of the original DropoutNet (Volkovs et al. 2017).

Inputs are L2-normalised tower outputs, so a dot product is the cosine. Every loss is
computed in float32 (float64 if the inputs are) whatever the input dtype, with logsumexp,
and never produces NaN on finite input: a masked-out negative gets a logit whose exp() is
exactly 0, inside a logsumexp that always holds the positive, so an anchor left with no
valid negative contributes log(1) = 0 (and a zero gradient).

Means: the pointwise loss is sum(weight * loss) / batch, the softmax losses are
sum(weight * loss) / anchors (the positive rows), the pairwise loss is the plain mean over
ordered pairs. A loss with nothing to average (no positive row, no ordered pair) is 0 and
still part of the autograd graph, so backward() and DDP see every parameter.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from coldrec.errors import ConfigError

SOFTMAX_KINDS = ("inbatch", "svsoftmax")
PART_NAMES = ("pointwise", "pairwise", "softmax")


@dataclass(frozen=True)
class LossConfig:
    """Which losses to combine and their options; invalid values raise ConfigError at once.

    The total loss is `pointwise_weight * pointwise + pairwise_weight * pairwise +
    softmax_weight * softmax`; a weight of 0 disables that loss (it is then not computed).
    """

    # 0.1 since the MovieLens-100K selection (docs/benchmarks.md#how-the-defaults-were-chosen): on logs
    # whose exposures are a liked-biased set, a full-weight pointwise loss learns "liked given
    # shown", not retrieval (validation cold-item Recall@20 0.203 at 1.0 vs 0.28 at 0 or 0.1);
    # a little of it keeps scores comparable across users (who to show a new item to).
    pointwise_weight: float = 0.1  # sigmoid cross-entropy of the label on each exposure
    pairwise_weight: float = 0.0  # in-batch AUC loss over pairs label_i > label_j
    softmax_weight: float = 1.0  # retrieval softmax over the positive rows
    softmax: str = "inbatch"  # "inbatch" | "svsoftmax"
    log_q_correction: bool = True  # "inbatch" only: subtract log sampling probability
    num_negatives: int = 8  # "svsoftmax" only: distinct random roll shifts
    margin: float = 0.1  # SV-softmax margin m
    sv_t: float = 1.2  # SV-softmax coefficient t (>= 1; 1 = no extra weight on hard negatives)
    scale: float = 20.0  # γ: every loss sees scale * cosine

    def __post_init__(self) -> None:
        for key in ("pointwise_weight", "pairwise_weight", "softmax_weight"):
            value = _number(self, key)
            if not value >= 0:
                raise ConfigError(
                    f"loss option '{key}' must be a number >= 0, got {value!r}",
                    hint=f"set {key} = 0 to disable that loss or a positive weight to enable it",
                )
        if self.pointwise_weight == self.pairwise_weight == self.softmax_weight == 0:
            raise ConfigError(
                "all loss weights are 0, so there is nothing to train",
                hint="set at least one of pointwise_weight, pairwise_weight, softmax_weight > 0 "
                "(the defaults are pointwise_weight = 0.1, softmax_weight = 1)",
            )
        if self.softmax not in SOFTMAX_KINDS:
            raise ConfigError(
                f"loss option 'softmax' must be one of {', '.join(SOFTMAX_KINDS)}, "
                f"got {self.softmax!r}",
                hint="use softmax = \"inbatch\" (all in-batch items, log-Q corrected) or "
                "softmax = \"svsoftmax\" (rolled negatives, support-vector guided)",
            )
        if not isinstance(self.log_q_correction, bool):
            raise ConfigError(
                f"loss option 'log_q_correction' must be true or false, "
                f"got {self.log_q_correction!r}",
                hint="set log_q_correction = true or log_q_correction = false",
            )
        if isinstance(self.num_negatives, bool) or not isinstance(self.num_negatives, int):
            raise ConfigError(
                f"loss option 'num_negatives' must be an integer, got {self.num_negatives!r}",
                hint="set num_negatives to a whole number >= 1, e.g. 8",
            )
        if self.num_negatives < 1:
            raise ConfigError(
                f"loss option 'num_negatives' must be >= 1, got {self.num_negatives}",
                hint="set num_negatives to a whole number >= 1, e.g. 8",
            )
        margin = _number(self, "margin")
        if not margin >= 0:
            raise ConfigError(
                f"loss option 'margin' must be >= 0, got {margin!r}",
                hint="set margin to a small non-negative number, e.g. 0.1 (0 = no margin)",
            )
        sv_t = _number(self, "sv_t")
        if not sv_t >= 1:
            raise ConfigError(
                f"loss option 'sv_t' must be >= 1, got {sv_t!r}",
                hint="set sv_t >= 1, e.g. 1.2 (1 = hard negatives get no extra weight)",
            )
        scale = _number(self, "scale")
        if not scale > 0:
            raise ConfigError(
                f"loss option 'scale' must be > 0, got {scale!r}",
                hint="set scale to a positive number, e.g. 20 (cosines are multiplied by it)",
            )
        if self.softmax_weight > 0 and self.softmax == "svsoftmax" and self.log_q_correction:
            raise ConfigError(
                "loss option 'log_q_correction' applies only to softmax = \"inbatch\"",
                hint="set log_q_correction = false with softmax = \"svsoftmax\", or use "
                "softmax = \"inbatch\"",
            )

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any], *, source: str | None = None) -> LossConfig:
        """Build from a config-file table (e.g. `[loss]` in coldrec.toml); unknown keys raise."""
        known = {field.name for field in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(
                f"unknown loss option(s): {', '.join(unknown)}",
                path=source,
                hint=f"remove them; the known loss options are {', '.join(sorted(known))}",
            )
        return cls(**dict(options))

    @property
    def enabled(self) -> tuple[str, ...]:
        """Names of the losses with a weight > 0, in PART_NAMES order."""
        weights = (self.pointwise_weight, self.pairwise_weight, self.softmax_weight)
        return tuple(name for name, weight in zip(PART_NAMES, weights) if weight > 0)


def _number(config: LossConfig, key: str) -> float:
    value = getattr(config, key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(
            f"loss option '{key}' must be a finite number, got {value!r}",
            hint=f"set {key} to a number (see docs/model.md#losses for the defaults)",
        )
    return float(value)


@dataclass
class LossOutput:
    """`total` carries the gradient; `parts` holds each loss, detached (0-d float32 tensors).

    `parts` always has the keys "pointwise", "pairwise" and "softmax"; a disabled loss is 0.
    The parts are tensors, not Python floats, so logging them does not force a device sync
    every step: call `float()` when you write them out.
    """

    total: Tensor
    parts: dict[str, Tensor]


def draw_roll_shifts(
    pool_size: int,
    num_negatives: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Distinct random roll shifts in [1, pool_size - 1]: min(num_negatives, pool_size - 1) of them.

    Negative k of row r is pool[(r + shifts[k]) % pool_size]. Draws from `generator` (or the
    global RNG); one call per batch, so a reference can reproduce them from the same seed.
    Returns a LongTensor (num_shifts,) on `device`.
    """
    available = max(pool_size - 1, 0)
    count = min(num_negatives, available)
    draw_device = generator.device if generator is not None else torch.device("cpu")
    shifts = torch.randperm(available, generator=generator, device=draw_device)[:count] + 1
    return shifts.to(device) if device is not None else shifts


def _wide(tensor: Tensor) -> Tensor:
    """float32, or float64 when the input already is: losses never run in half precision."""
    return tensor if tensor.dtype == torch.float64 else tensor.float()


def _zero_like_graph(*tensors: Tensor) -> Tensor:
    """A float32 0 that still depends on `tensors`, so autograd.grad and DDP see every input."""
    zero = torch.zeros((), dtype=_wide(tensors[0]).dtype, device=tensors[0].device)
    for tensor in tensors:
        zero = zero + _wide(tensor).sum() * 0.0
    return zero


class RetrievalLoss(torch.nn.Module):
    """The weighted sum of the enabled losses of `config`; owns the pointwise logit's bias.

    Call with L2-normalised tower outputs `user`, `item` (batch, dim), float 0/1 `label`
    (batch,) and the integer `item_index` (batch,) of each row's item (used to mask
    "negatives" that are the anchor's own item). Optional, all (batch,) unless noted:
    `weight` (sample weights of the pointwise loss and of the softmax anchors),
    `item_log_q` (log sampling probability of each row's item; required by "inbatch" with
    log_q_correction), and an external negative pool `candidates` (pool, dim) with
    `candidate_index` (pool,) and `candidate_log_q` (pool,) that replaces the batch's own
    items as softmax negatives (DDP passes the items all-gathered across ranks), with
    `candidate_offset` = the position of this batch's row 0 inside that pool (rank * batch)
    so that "svsoftmax" rolls land on other rows. `generator` draws the svsoftmax shifts.
    """

    def __init__(self, config: LossConfig) -> None:
        super().__init__()
        if not isinstance(config, LossConfig):
            raise TypeError(f"RetrievalLoss needs a LossConfig, got {type(config).__name__}")
        self.config = config
        self.bias = torch.nn.Parameter(torch.zeros(()))  # pointwise logit offset (click base rate)

    def extra_repr(self) -> str:
        return repr(self.config)

    def forward(
        self,
        user: Tensor,
        item: Tensor,
        label: Tensor,
        *,
        item_index: Tensor,
        weight: Tensor | None = None,
        item_log_q: Tensor | None = None,
        candidates: Tensor | None = None,
        candidate_index: Tensor | None = None,
        candidate_log_q: Tensor | None = None,
        candidate_offset: int = 0,
        generator: torch.Generator | None = None,
    ) -> LossOutput:
        config = self.config
        _check_inputs(config, user, item, label, item_index, weight, item_log_q,
                      candidates, candidate_index, candidate_log_q)
        dtype = _wide(user).dtype
        label = label.to(dtype)  # (batch,)
        weight = weight.to(dtype) if weight is not None else None  # (batch,)
        parts: dict[str, Tensor] = {}
        total = torch.zeros((), dtype=dtype, device=user.device)
        if config.pointwise_weight > 0 or config.pairwise_weight > 0:
            cosine = _wide((user * item).sum(dim=-1))  # (batch,)
            logit = config.scale * cosine + self.bias.to(dtype)  # (batch,)
            if config.pointwise_weight > 0:
                parts["pointwise"] = pointwise_loss(logit, label, weight)
            if config.pairwise_weight > 0:
                parts["pairwise"] = pairwise_loss(logit, label)
        if config.softmax_weight > 0:
            if candidates is None:
                pool, pool_index, pool_log_q = item, item_index, item_log_q
            else:
                pool, pool_index, pool_log_q = candidates, candidate_index, candidate_log_q
            if config.softmax == "inbatch":
                parts["softmax"] = inbatch_softmax_loss(
                    user, item, label, item_index, pool, pool_index,
                    scale=config.scale,
                    weight=weight,
                    item_log_q=item_log_q if config.log_q_correction else None,
                    pool_log_q=pool_log_q if config.log_q_correction else None,
                )
            else:
                # Drawn on every batch, anchors or not: the RNG stream then depends only
                # on the batch count, which keeps resumed runs identical to uninterrupted ones.
                shifts = draw_roll_shifts(pool.shape[0], config.num_negatives,
                                          generator=generator, device=user.device)
                parts["softmax"] = sv_softmax_loss(
                    user, item, label, item_index, pool, pool_index, shifts,
                    scale=config.scale, margin=config.margin, sv_t=config.sv_t,
                    weight=weight, pool_offset=candidate_offset,
                )
        weights = dict(zip(PART_NAMES, (config.pointwise_weight, config.pairwise_weight,
                                        config.softmax_weight)))
        for name, value in parts.items():
            total = total + weights[name] * value
        logged = {name: parts[name].detach() if name in parts else torch.zeros((), device=user.device)
                  for name in PART_NAMES}
        return LossOutput(total=total, parts=logged)


def _check_inputs(
    config: LossConfig,
    user: Tensor,
    item: Tensor,
    label: Tensor,
    item_index: Tensor,
    weight: Tensor | None,
    item_log_q: Tensor | None,
    candidates: Tensor | None,
    candidate_index: Tensor | None,
    candidate_log_q: Tensor | None,
) -> None:
    """Shape and argument checks (no data-dependent work, so no device sync).

    These are programming errors of the caller, not bad user data, hence ValueError.
    """
    if user.ndim != 2 or user.shape != item.shape:
        raise ValueError(f"user and item must both be (batch, dim), got {tuple(user.shape)} "
                         f"and {tuple(item.shape)}")
    batch = user.shape[0]
    if batch == 0:
        raise ValueError("empty batch: user and item have 0 rows")
    for name, tensor in (("label", label), ("item_index", item_index), ("weight", weight),
                         ("item_log_q", item_log_q)):
        if tensor is not None and tuple(tensor.shape) != (batch,):
            raise ValueError(f"{name} must be (batch,) = ({batch},), got {tuple(tensor.shape)}")
    if item_index.is_floating_point():
        raise ValueError("item_index must be an integer tensor (the item's row id)")
    if candidates is not None:
        if candidates.ndim != 2 or candidates.shape[1] != user.shape[1]:
            raise ValueError(f"candidates must be (pool, {user.shape[1]}), got {tuple(candidates.shape)}")
        if candidate_index is None:
            raise ValueError("candidates need candidate_index (pool,) to mask the anchors' own items")
        pool = candidates.shape[0]
        for name, tensor in (("candidate_index", candidate_index), ("candidate_log_q", candidate_log_q)):
            if tensor is not None and tuple(tensor.shape) != (pool,):
                raise ValueError(f"{name} must be (pool,) = ({pool},), got {tuple(tensor.shape)}")
    elif candidate_index is not None or candidate_log_q is not None:
        raise ValueError("candidate_index / candidate_log_q given without candidates")
    needs_log_q = (config.softmax_weight > 0 and config.softmax == "inbatch"
                   and config.log_q_correction)
    if needs_log_q and item_log_q is None:
        raise ValueError("log_q_correction is on: pass item_log_q (batch,), the log of each "
                         "row's item sampling probability, or set log_q_correction=False")
    if needs_log_q and candidates is not None and candidate_log_q is None:
        raise ValueError("log_q_correction is on: pass candidate_log_q (pool,) with candidates")


def _weighted_mean(values: Tensor, weight: Tensor | None) -> Tensor:
    """sum(weight * values) / len(values): weights scale rows, the mean is over rows."""
    if weight is not None:
        values = values * weight
    return values.sum() / values.shape[0]


def pointwise_loss(logit: Tensor, label: Tensor, weight: Tensor | None = None) -> Tensor:
    """Sigmoid cross-entropy of `label` on `logit` (batch,), weighted, mean over rows."""
    per_row = F.binary_cross_entropy_with_logits(logit, label, reduction="none")  # (batch,)
    return _weighted_mean(per_row, weight)


def pairwise_loss(logit: Tensor, label: Tensor) -> Tensor:
    """Mean softplus(-(logit_i - logit_j)) over pairs with label_i > label_j; 0 if none.

    Binary labels use the (positives, negatives) product only, a quarter of batch² at most.
    """
    binary = bool(((label == 0) | (label == 1)).all())
    if binary:
        positive = logit.index_select(0, torch.nonzero(label > 0).squeeze(1))  # (P,)
        negative = logit.index_select(0, torch.nonzero(label <= 0).squeeze(1))  # (N,)
        if positive.numel() == 0 or negative.numel() == 0:
            return _zero_like_graph(logit)
        return F.softplus(negative[None, :] - positive[:, None]).mean()  # (P, N) pairs
    ordered = label[:, None] > label[None, :]  # (batch, batch): i ranked above j
    if not bool(ordered.any()):
        return _zero_like_graph(logit)
    return F.softplus(logit[None, :] - logit[:, None])[ordered].mean()  # (batch, batch) pairs


def _anchor_rows(label: Tensor) -> Tensor:
    return torch.nonzero(label > 0).squeeze(1)  # (anchors,)


def _softmax_cross_entropy(positive: Tensor, negative: Tensor, masked: Tensor) -> Tensor:
    """-log softmax of the positive column; masked negatives drop out (-inf). (anchors,)

    positive (anchors,), negative and masked (anchors, negatives). The positive is always in
    the logsumexp, so a row with every negative masked gives exactly 0, never NaN.
    """
    negative = negative.masked_fill(masked, float("-inf"))
    logits = torch.cat([positive[:, None], negative], dim=1)  # (anchors, 1 + negatives)
    return torch.logsumexp(logits, dim=1) - positive


def inbatch_softmax_loss(
    user: Tensor,
    item: Tensor,
    label: Tensor,
    item_index: Tensor,
    pool: Tensor,
    pool_index: Tensor,
    *,
    scale: float,
    weight: Tensor | None = None,
    item_log_q: Tensor | None = None,
    pool_log_q: Tensor | None = None,
) -> Tensor:
    """Sampled softmax of each positive row's own item against every pool item.

    Anchor a's logits: positive scale*cos(u_a, v_a) - log_q_a, then scale*cos(u_a, pool_c) -
    log_q_c for every pool item, masked where pool_index_c == item_index_a (the anchor's own
    item and its duplicates are not negatives). Without log-Q arguments no correction is
    applied. Log-Q (Yi et al. 2019, "Sampling-Bias-Corrected Neural Modeling for Large
    Corpus Item Recommendations", eq. 3) corrects every logit, the positive's included, for
    popular items being over-represented among in-batch negatives. The pool is the batch's
    items or an external pool; the result is the same when the pool holds the batch. Rows
    weighted by `weight`, mean over anchors; 0 (graph intact) without anchors.
    """
    anchors = _anchor_rows(label)  # (A,)
    if anchors.numel() == 0:
        return _zero_like_graph(user, item, pool)
    anchor_user = _wide(user.index_select(0, anchors))  # (A, dim)
    pool = _wide(pool)  # (pool, dim)
    positive = scale * (anchor_user * _wide(item.index_select(0, anchors))).sum(dim=-1)  # (A,)
    # Log-Q and the mask go into one additive (A, pool) offset, so the logits are a single
    # fused addmm. Masked entries get a huge finite negative rather than -inf: exp() of it
    # is exactly 0, and a row with every entry masked stays finite in logsumexp's backward.
    masked = item_index[anchors][:, None] == pool_index[None, :]  # (A, pool)
    offset = torch.zeros((), dtype=pool.dtype, device=pool.device)
    if item_log_q is not None and pool_log_q is not None:
        positive = positive - item_log_q[anchors].to(positive.dtype)
        offset = -pool_log_q.to(pool.dtype)[None, :]  # (1, pool)
    offset = torch.where(masked, _masked_logit(pool.dtype), offset)  # (A, pool)
    per_anchor = _InbatchCrossEntropy.apply(anchor_user, pool, positive, offset, scale)  # (A,)
    return _weighted_mean(per_anchor, weight[anchors] if weight is not None else None)


class _InbatchCrossEntropy(torch.autograd.Function):
    """logaddexp(positive, logsumexp(offset + scale * anchor_user @ pool.T, 1)) - positive.

    The same maths as the autograd of those ops, with one pass of exp() over the (A, pool)
    logits instead of two (logsumexp's forward and its backward): the forward keeps the
    shifted exponentials, and the backward is softmax * grad from them, with no sub/exp/mul
    pass over the (A, pool) matrix. (A,).
    """

    @staticmethod
    def forward(ctx, anchor_user: Tensor, pool: Tensor, positive: Tensor, offset: Tensor,
                scale: float) -> Tensor:
        logits = torch.addmm(offset, anchor_user, pool.T, alpha=scale)  # (A, pool)
        top_negative = logits.amax(dim=1)  # (A,)
        top = torch.maximum(top_negative, positive)  # (A,)
        negative_exp = logits.sub_(top[:, None]).exp_()  # (A, pool), in place
        negative_sum = negative_exp.sum(dim=1)  # (A,)
        positive_exp = (positive - top).exp()  # (A,)
        total = negative_sum + positive_exp  # (A,)
        # log1p where the positive leads (a small loss keeps its precision), as logaddexp does
        per_anchor = torch.where(positive >= top_negative, torch.log1p(negative_sum),
                                 top - positive + total.log())  # (A,)
        ctx.save_for_backward(anchor_user, pool, negative_exp, positive_exp, total)
        ctx.scale = scale
        return per_anchor

    @staticmethod
    def backward(ctx, grad: Tensor):
        anchor_user, pool, negative_exp, positive_exp, total = ctx.saved_tensors
        share = grad / total  # (A,)
        grad_user = grad_pool = grad_positive = grad_offset = None
        if ctx.needs_input_grad[3]:
            grad_offset = negative_exp * share[:, None]  # (A, pool)
        # d/d(u_a . pool_c) = scale * share_a * negative_exp[a, c]; the per-anchor factor is
        # applied to the (A, dim) operand or result, not to the (A, pool) matrix
        row_factor = (share * ctx.scale)[:, None]  # (A, 1)
        if ctx.needs_input_grad[0]:
            grad_user = negative_exp.mm(pool) * row_factor  # (A, dim)
        if ctx.needs_input_grad[1]:
            grad_pool = negative_exp.T.mm(anchor_user * row_factor)  # (pool, dim)
        if ctx.needs_input_grad[2]:
            grad_positive = share * positive_exp - grad  # (A,)
        return grad_user, grad_pool, grad_positive, grad_offset, None


def _masked_logit(dtype: torch.dtype) -> float:
    """A logit that exp() turns into exactly 0, with room left before -inf."""
    return torch.finfo(dtype).min / 4


def sv_softmax_loss(
    user: Tensor,
    item: Tensor,
    label: Tensor,
    item_index: Tensor,
    pool: Tensor,
    pool_index: Tensor,
    shifts: Tensor,
    *,
    scale: float,
    margin: float,
    sv_t: float,
    weight: Tensor | None = None,
    pool_offset: int = 0,
) -> Tensor:
    """Support-vector-guided softmax of each positive row against rolled pool items.

    Negatives of row r: pool[(pool_offset + r + shift_k) % pool_size] for each k in `shifts`
    (see `draw_roll_shifts`), masked where their pool_index equals item_index_r.

    The formula is SV-AM-Softmax of Wang et al. 2018, "Support Vector Guided Softmax Loss
    for Face Recognition" (arXiv:1812.11317), eqs. 5-7 with the additive margin f(m, θ) =
    cos θ - m (the official SV-X-Softmax / MV-Softmax code computes the same):
        positive logit       s * (cos⁺ - m)
        negative logit       s * h(cos⁻),  h(c) = t*c + t - 1  if cos⁺ - m - c < 0  (a
                             misclassified "support vector", hard negative), else h(c) = c
        loss                 -log(e^pos / (e^pos + Σ e^neg))
    i.e. the paper's reweighting e^{s(t-1)(cos⁻+1) I_k} folded into the logit. m = 0 gives
    plain SV-Softmax; t = 1 gives AM-Softmax over the sampled negatives. The hard/easy
    indicator is a step, so no gradient flows through it. Rows weighted by `weight`, mean
    over anchors; 0 (graph intact) without anchors; an anchor whose negatives are all
    masked contributes 0.
    """
    anchors = _anchor_rows(label)  # (A,)
    if anchors.numel() == 0:
        return _zero_like_graph(user, item, pool)
    anchor_user = _wide(user.index_select(0, anchors))  # (A, dim)
    cos_positive = (anchor_user * _wide(item.index_select(0, anchors))).sum(dim=-1)  # (A,)
    rows = (anchors[:, None] + pool_offset + shifts[None, :]) % pool.shape[0]  # (A, K)
    # index_select, not pool[rows]: its backward is index_add, far cheaper on CPU than the
    # accumulating index_put of advanced indexing
    negatives = _wide(pool.index_select(0, rows.flatten()))  # (A * K, dim)
    negatives = negatives.view(*rows.shape, pool.shape[1])  # (A, K, dim)
    cos_negative = torch.einsum("ad,akd->ak", anchor_user, negatives)  # (A, K)
    hard = cos_negative > (cos_positive - margin)[:, None]  # (A, K): cos⁺ - m - cos⁻ < 0
    negative = scale * torch.where(hard, sv_t * cos_negative + sv_t - 1.0, cos_negative)
    positive = scale * (cos_positive - margin)  # (A,)
    masked = pool_index[rows] == item_index[anchors][:, None]  # (A, K)
    per_anchor = _softmax_cross_entropy(positive, negative, masked)  # (A,)
    return _weighted_mean(per_anchor, weight[anchors] if weight is not None else None)


def dropoutnet_mse(user: Tensor, item: Tensor, target: Tensor) -> Tensor:
    """Original DropoutNet objective (Volkovs et al. 2017, "DropoutNet: Addressing Cold Start
    in Recommender Systems", eq. 2): mean over rows of (u · v - target)², where u · v is the
    raw dot product of the model's outputs (not a cosine) and target = U_u · V_v from the
    pretrained (e.g. matrix-factorisation) vectors. (batch, dim), (batch, dim), (batch,) ->
    scalar.
    """
    if user.ndim != 2 or user.shape != item.shape or tuple(target.shape) != (user.shape[0],):
        raise ValueError(f"dropoutnet_mse needs (batch, dim), (batch, dim), (batch,); got "
                         f"{tuple(user.shape)}, {tuple(item.shape)}, {tuple(target.shape)}")
    score = _wide((user * item).sum(dim=-1))  # (batch,)
    return F.mse_loss(score, target.to(score.dtype))
