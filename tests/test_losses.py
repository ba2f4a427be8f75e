"""The losses against slow, obvious references (Python loops over rows and pairs).

Each vectorised loss in coldrec.losses is checked for values and for gradients w.r.t. the
user and item embeddings (torch.autograd.grad), in float64 so the tolerances are tight.
The references below are written from the definitions in the issue and the papers, not
from the vectorised code.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from coldrec.errors import ConfigError
from coldrec.losses import (
    LossConfig,
    LossOutput,
    RetrievalLoss,
    draw_roll_shifts,
    dropoutnet_mse,
)

DTYPE = torch.float64


# ----------------------------------------------------------------------------- references


def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return sum(a[d] * b[d] for d in range(a.shape[0]))


def log_sum_exp(terms: list[torch.Tensor]) -> torch.Tensor:
    top = max(float(term.detach()) for term in terms)
    return top + torch.log(sum(torch.exp(term - top) for term in terms))


def ref_pointwise(user, item, label, scale, bias, weight=None):
    total = 0.0
    for row in range(user.shape[0]):
        logit = scale * dot(user[row], item[row]) + bias
        if label[row] > 0:
            loss = torch.log1p(torch.exp(-logit))  # -log sigmoid(z)
        else:
            loss = torch.log1p(torch.exp(logit))  # -log(1 - sigmoid(z))
        total = total + (1.0 if weight is None else weight[row]) * loss
    return total / user.shape[0]


def ref_pairwise(user, item, label, scale):
    logits = [scale * dot(user[row], item[row]) for row in range(user.shape[0])]
    losses = []
    for i in range(len(logits)):
        for j in range(len(logits)):
            if label[i] > label[j]:
                losses.append(torch.log1p(torch.exp(-(logits[i] - logits[j]))))
    if not losses:
        return torch.zeros((), dtype=DTYPE)
    return sum(losses) / len(losses)


def ref_inbatch(user, item, label, item_index, scale, *, log_q=None, weight=None,
                pool=None, pool_index=None, pool_log_q=None):
    """Anchor a: positive = its own row; negatives = the other batch rows (or the pool)."""
    losses = []
    for a in range(user.shape[0]):
        if not label[a] > 0:
            continue
        positive = scale * dot(user[a], item[a]) - (log_q[a] if log_q is not None else 0.0)
        terms = [positive]
        if pool is None:
            for c in range(item.shape[0]):
                if c == a or item_index[c] == item_index[a]:
                    continue
                terms.append(scale * dot(user[a], item[c]) - (log_q[c] if log_q is not None else 0.0))
        else:
            for c in range(pool.shape[0]):
                if pool_index[c] == item_index[a]:
                    continue
                correction = pool_log_q[c] if pool_log_q is not None else 0.0
                terms.append(scale * dot(user[a], pool[c]) - correction)
        loss = log_sum_exp(terms) - positive
        losses.append((1.0 if weight is None else weight[a]) * loss)
    if not losses:
        return torch.zeros((), dtype=DTYPE)
    return sum(losses) / len(losses)


def ref_sv(user, item, label, item_index, shifts, scale, margin, t, *, weight=None,
           pool=None, pool_index=None, offset=0):
    """SV-AM-Softmax (Wang et al. 2018) over rolled negatives, one anchor at a time."""
    if pool is None:
        pool, pool_index = item, item_index
    losses = []
    for a in range(user.shape[0]):
        if not label[a] > 0:
            continue
        cos_pos = dot(user[a], item[a])
        positive = scale * (cos_pos - margin)
        terms = [positive]
        for shift in shifts:
            c = (a + offset + int(shift)) % pool.shape[0]
            if pool_index[c] == item_index[a]:
                continue
            cos_neg = dot(user[a], pool[c])
            if float((cos_pos - margin - cos_neg).detach()) < 0:  # a support vector: hard negative
                terms.append(scale * (t * cos_neg + t - 1))
            else:
                terms.append(scale * cos_neg)
        loss = log_sum_exp(terms) - positive
        losses.append((1.0 if weight is None else weight[a]) * loss)
    if not losses:
        return torch.zeros((), dtype=DTYPE)
    return sum(losses) / len(losses)


# ------------------------------------------------------------------------------- helpers


def unit(rows: int, dim: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(rows, dim, generator=gen, dtype=DTYPE), dim=1).requires_grad_()


def grads(value, user, item):
    if not value.requires_grad:  # a reference that found nothing to sum: a constant 0
        return (None, None)
    return torch.autograd.grad(value, [user, item], allow_unused=True)


def assert_same(mine, ref, user, item):
    """Values and gradients w.r.t. user and item agree."""
    assert torch.allclose(mine, ref.to(mine.dtype), rtol=1e-9, atol=1e-10), (mine.item(), ref.item())
    for got, want in zip(grads(mine, user, item), grads(ref, user, item)):
        got = torch.zeros_like(user) if got is None else got
        want = torch.zeros_like(user) if want is None else want
        assert torch.allclose(got, want, rtol=1e-8, atol=1e-10), (got - want).abs().max()


def only(**weights) -> LossConfig:
    """A config with just the named losses on (others 0)."""
    base = {"pointwise_weight": 0.0, "pairwise_weight": 0.0, "softmax_weight": 0.0}
    base.update(weights.pop("w"))
    return LossConfig(**base, **weights)


def batch(rows=8, dim=5, seed=0):
    user, item = unit(rows, dim, seed), unit(rows, dim, seed + 100)
    gen = torch.Generator().manual_seed(seed + 200)
    label = (torch.rand(rows, generator=gen) < 0.5).to(DTYPE)
    label[0], label[-1] = 1.0, 0.0  # at least one positive and one negative
    item_index = torch.randint(0, rows, (rows,), generator=gen)
    log_q = torch.log(torch.rand(rows, generator=gen, dtype=DTYPE) * 0.2 + 0.01)
    weight = torch.rand(rows, generator=gen, dtype=DTYPE) * 3
    return user, item, label, item_index, log_q, weight


# ------------------------------------------------------------------------- the references


@pytest.mark.parametrize("with_weight", [False, True])
def test_pointwise_matches_reference(with_weight):
    user, item, label, item_index, _, weight = batch(seed=1)
    loss = RetrievalLoss(only(w={"pointwise_weight": 1.0}, scale=7.0))
    with torch.no_grad():
        loss.bias.fill_(-0.375)  # exact in float32
    w = weight if with_weight else None
    out = loss(user, item, label, item_index=item_index, weight=w)
    assert_same(out.total, ref_pointwise(user, item, label, 7.0, -0.375, w), user, item)
    assert torch.allclose(out.parts["pointwise"], out.total.detach())
    # the bias is learned: it gets a gradient
    (bias_grad,) = torch.autograd.grad(loss(user, item, label, item_index=item_index).total, [loss.bias])
    assert float(bias_grad) != 0.0


@pytest.mark.parametrize("labels", [
    [1, 0, 0, 1, 0, 1, 0, 0],  # binary (the positives x negatives path)
    [2, 0, 1, 0, 3, 1, 0, 2],  # graded (the general pair-mask path), ties included
])
def test_pairwise_matches_reference(labels):
    user, item, _, item_index, _, weight = batch(seed=2)
    label = torch.tensor(labels, dtype=DTYPE)
    loss = RetrievalLoss(only(w={"pairwise_weight": 1.0}, scale=5.0))
    out = loss(user, item, label, item_index=item_index, weight=weight)  # weight: not used
    assert_same(out.total, ref_pairwise(user, item, label, 5.0), user, item)


@pytest.mark.parametrize("log_q_correction", [False, True])
@pytest.mark.parametrize("with_weight", [False, True])
def test_inbatch_matches_reference(log_q_correction, with_weight):
    user, item, label, item_index, log_q, weight = batch(rows=9, seed=3)
    loss = RetrievalLoss(only(w={"softmax_weight": 1.0}, scale=10.0, log_q_correction=log_q_correction))
    w = weight if with_weight else None
    out = loss(user, item, label, item_index=item_index, item_log_q=log_q, weight=w)
    ref = ref_inbatch(user, item, label, item_index, 10.0, log_q=log_q if log_q_correction else None, weight=w)
    assert_same(out.total, ref, user, item)


def test_inbatch_masks_duplicate_items():
    user, item, _, _, log_q, _ = batch(rows=6, seed=4)
    label = torch.tensor([1, 1, 0, 1, 0, 1], dtype=DTYPE)
    # rows 0, 1 and 4 share item 7 (the same item shown three times): for anchor 0 rows 1
    # and 4 are not negatives; for anchor 1 rows 0 and 4 are not
    item_index = torch.tensor([7, 7, 2, 3, 7, 5])
    config = only(w={"softmax_weight": 1.0}, scale=10.0)
    out = RetrievalLoss(config)(user, item, label, item_index=item_index, item_log_q=log_q)
    ref = ref_inbatch(user, item, label, item_index, 10.0, log_q=log_q)
    assert_same(out.total, ref, user, item)
    # and it differs from treating the duplicates as negatives
    distinct = RetrievalLoss(config)(user, item, label, item_index=torch.arange(6), item_log_q=log_q)
    assert not torch.allclose(out.total, distinct.total)


def test_inbatch_with_external_candidate_pool():
    user, item, label, item_index, log_q, weight = batch(rows=6, seed=5)
    extra = unit(5, 5, seed=55)
    extra_index = torch.tensor([item_index[0].item(), 100, 101, item_index[2].item(), 102])
    extra_log_q = torch.log(torch.full((5,), 0.05, dtype=DTYPE))
    pool = torch.cat([item, extra])  # what DDP passes: this rank's items and the others'
    pool_index = torch.cat([item_index, extra_index])
    pool_log_q = torch.cat([log_q, extra_log_q])
    loss = RetrievalLoss(only(w={"softmax_weight": 1.0}, scale=10.0))
    out = loss(user, item, label, item_index=item_index, item_log_q=log_q, weight=weight,
               candidates=pool, candidate_index=pool_index, candidate_log_q=pool_log_q)
    ref = ref_inbatch(user, item, label, item_index, 10.0, log_q=log_q, weight=weight,
                      pool=pool, pool_index=pool_index, pool_log_q=pool_log_q)
    assert_same(out.total, ref, user, item)
    # a pool that is exactly the batch's items gives the plain in-batch loss
    same = loss(user, item, label, item_index=item_index, item_log_q=log_q, weight=weight,
                candidates=item, candidate_index=item_index, candidate_log_q=log_q)
    plain = loss(user, item, label, item_index=item_index, item_log_q=log_q, weight=weight)
    assert torch.allclose(same.total, plain.total, rtol=1e-12)


def test_log_q_with_uniform_probability_changes_nothing():
    # softmax is shift invariant: a constant log q is no correction at all
    user, item, label, item_index, _, _ = batch(rows=8, seed=6)
    uniform = torch.full((8,), math.log(1 / 8), dtype=DTYPE)
    with_q = RetrievalLoss(only(w={"softmax_weight": 1.0}))(
        user, item, label, item_index=item_index, item_log_q=uniform)
    without = RetrievalLoss(only(w={"softmax_weight": 1.0}, log_q_correction=False))(
        user, item, label, item_index=item_index)
    assert torch.allclose(with_q.total, without.total, rtol=1e-12)


def test_log_q_lowers_the_penalty_of_popular_negatives():
    # the anchor scores a popular negative as high as its positive: with log-Q the
    # popular item counts less as a negative, so the loss falls
    user = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=DTYPE), dim=1)
    item = F.normalize(torch.tensor([[1.0, 0.1], [1.0, -0.1]], dtype=DTYPE), dim=1)
    label = torch.tensor([1.0, 0.0], dtype=DTYPE)
    log_q = torch.log(torch.tensor([0.01, 0.5], dtype=DTYPE))  # item 1 is popular
    on = RetrievalLoss(only(w={"softmax_weight": 1.0}))(
        user, item, label, item_index=torch.arange(2), item_log_q=log_q)
    off = RetrievalLoss(only(w={"softmax_weight": 1.0}, log_q_correction=False))(
        user, item, label, item_index=torch.arange(2))
    assert float(on.total.detach()) < float(off.total.detach()) / 10


def sv_config(**options) -> LossConfig:
    options.setdefault("num_negatives", 4)
    return only(w={"softmax_weight": 1.0}, softmax="svsoftmax", log_q_correction=False, **options)


@pytest.mark.parametrize("with_weight", [False, True])
def test_svsoftmax_matches_reference_with_fixed_generator(with_weight):
    user, item, label, _, _, weight = batch(rows=10, dim=3, seed=7)
    label = torch.tensor([1, 1, 0, 1, 1, 0, 1, 0, 1, 1], dtype=DTYPE)
    item_index = torch.tensor([0, 1, 2, 0, 4, 5, 1, 7, 8, 9])  # duplicates: masked
    config = sv_config(scale=8.0, margin=0.2, sv_t=1.5)
    w = weight if with_weight else None
    out = RetrievalLoss(config)(user, item, label, item_index=item_index, weight=w,
                                generator=torch.Generator().manual_seed(11))
    shifts = draw_roll_shifts(10, 4, generator=torch.Generator().manual_seed(11))
    assert len(set(shifts.tolist())) == 4 and all(1 <= s <= 9 for s in shifts.tolist())
    ref = ref_sv(user, item, label, item_index, shifts, 8.0, 0.2, 1.5, weight=w)
    assert_same(out.total, ref, user, item)
    # the batch really exercises both branches of h(): hard and easy negatives
    kinds = set()
    for a in range(10):
        for s in shifts.tolist():
            c = (a + s) % 10
            if label[a] > 0 and item_index[c] != item_index[a]:
                kinds.add(float((dot(user[a], item[a]) - 0.2 - dot(user[a], item[c])).detach()) < 0)
    assert kinds == {True, False}


def test_svsoftmax_with_margin_0_and_t_1_is_plain_softmax_over_the_rolled_negatives():
    user, item, label, item_index, _, _ = batch(rows=8, seed=8)
    out = RetrievalLoss(sv_config(margin=0.0, sv_t=1.0, scale=6.0))(
        user, item, label, item_index=item_index, generator=torch.Generator().manual_seed(3))
    shifts = draw_roll_shifts(8, 4, generator=torch.Generator().manual_seed(3))
    losses = []
    for a in torch.nonzero(label > 0).flatten().tolist():
        negatives = [(a + s) % 8 for s in shifts.tolist() if item_index[(a + s) % 8] != item_index[a]]
        logits = 6.0 * (item[[a] + negatives] @ user[a])
        losses.append(-F.log_softmax(logits, dim=0)[0])
    assert torch.allclose(out.total, torch.stack(losses).mean())


def test_svsoftmax_hard_negatives_weigh_more():
    # t > 1 only raises the logits of hard negatives, so the loss can only grow
    user, item, label, item_index, _, _ = batch(rows=10, dim=3, seed=9)
    losses = [float(RetrievalLoss(sv_config(sv_t=t))(
        user, item, label, item_index=item_index, generator=torch.Generator().manual_seed(5)).total.detach())
        for t in (1.0, 1.2, 2.0)]
    assert losses[0] < losses[1] < losses[2]


def test_svsoftmax_with_external_pool_and_offset():
    user, item, label, item_index, _, _ = batch(rows=6, seed=10)
    other = unit(6, 5, seed=66)  # another rank's items, before ours in the gathered pool
    other_index = torch.tensor([50, item_index[1].item(), 52, 53, item_index[0].item(), 55])
    pool = torch.cat([other, item])
    pool_index = torch.cat([other_index, item_index])
    config = sv_config(num_negatives=5)
    out = RetrievalLoss(config)(user, item, label, item_index=item_index, candidates=pool,
                                candidate_index=pool_index, candidate_offset=6,
                                generator=torch.Generator().manual_seed(21))
    shifts = draw_roll_shifts(12, 5, generator=torch.Generator().manual_seed(21))
    ref = ref_sv(user, item, label, item_index, shifts, config.scale, config.margin, config.sv_t,
                 pool=pool, pool_index=pool_index, offset=6)
    assert_same(out.total, ref, user, item)
    # a pool that is exactly the batch's items gives the plain roll loss
    same = RetrievalLoss(config)(user, item, label, item_index=item_index, candidates=item,
                                 candidate_index=item_index, generator=torch.Generator().manual_seed(2))
    plain = RetrievalLoss(config)(user, item, label, item_index=item_index,
                                  generator=torch.Generator().manual_seed(2))
    assert torch.allclose(same.total, plain.total, rtol=1e-12)


def test_svsoftmax_is_deterministic_given_the_generator():
    user, item, label, item_index, _, _ = batch(rows=16, seed=12)
    loss = RetrievalLoss(sv_config(num_negatives=3))

    def run(seed):
        return float(loss(user, item, label, item_index=item_index,
                          generator=torch.Generator().manual_seed(seed)).total.detach())

    assert run(1) == run(1)
    assert len({run(seed) for seed in range(6)}) > 1


def test_dropoutnet_mse_matches_reference():
    gen = torch.Generator().manual_seed(13)
    user = (torch.randn(7, 4, generator=gen, dtype=DTYPE) * 3).requires_grad_()  # raw, not unit
    item = (torch.randn(7, 4, generator=gen, dtype=DTYPE) * 2).requires_grad_()
    pretrained_u = torch.randn(7, 6, generator=gen, dtype=DTYPE)
    pretrained_v = torch.randn(7, 6, generator=gen, dtype=DTYPE)
    target = (pretrained_u * pretrained_v).sum(1)
    ref = sum((dot(user[r], item[r]) - target[r]) ** 2 for r in range(7)) / 7
    assert_same(dropoutnet_mse(user, item, target), ref, user, item)
    with pytest.raises(ValueError, match="batch"):
        dropoutnet_mse(user, item, target[:3])


@settings(max_examples=25, deadline=None)
@given(
    rows=st.integers(1, 7),
    seed=st.integers(0, 10_000),
    distinct_items=st.integers(1, 7),
    kind=st.sampled_from(["inbatch", "svsoftmax"]),
    num_negatives=st.integers(1, 8),
)
def test_softmax_matches_reference_on_random_batches(rows, seed, distinct_items, kind, num_negatives):
    user, item = unit(rows, 3, seed), unit(rows, 3, seed + 1)
    gen = torch.Generator().manual_seed(seed)
    label = (torch.rand(rows, generator=gen) < 0.6).to(DTYPE)
    item_index = torch.randint(0, distinct_items, (rows,), generator=gen)
    weight = torch.rand(rows, generator=gen, dtype=DTYPE)
    log_q = torch.log(torch.rand(rows, generator=gen, dtype=DTYPE) + 0.01)
    if kind == "inbatch":
        config = only(w={"softmax_weight": 1.0}, scale=12.0)
        out = RetrievalLoss(config)(user, item, label, item_index=item_index, weight=weight, item_log_q=log_q)
        ref = ref_inbatch(user, item, label, item_index, 12.0, log_q=log_q, weight=weight)
    else:
        config = sv_config(num_negatives=num_negatives, scale=12.0)
        out = RetrievalLoss(config)(user, item, label, item_index=item_index, weight=weight,
                                    generator=torch.Generator().manual_seed(seed))
        shifts = draw_roll_shifts(rows, num_negatives, generator=torch.Generator().manual_seed(seed))
        ref = ref_sv(user, item, label, item_index, shifts, 12.0, config.margin, config.sv_t, weight=weight)
    assert torch.isfinite(out.total)
    assert_same(out.total, ref, user, item)


# ----------------------------------------------------------------------------- edge cases


ALL_ON = dict(pointwise_weight=1.0, pairwise_weight=0.5, softmax_weight=2.0)


@pytest.mark.parametrize("kind", ["inbatch", "svsoftmax"])
def test_no_positive_in_batch_gives_zero_softmax_with_a_graph(kind):
    user, item, _, item_index, log_q, _ = batch(rows=6, seed=14)
    label = torch.zeros(6, dtype=DTYPE)
    config = LossConfig(**ALL_ON, softmax=kind, log_q_correction=kind == "inbatch")
    out = RetrievalLoss(config)(user, item, label, item_index=item_index, item_log_q=log_q)
    assert float(out.parts["softmax"]) == 0.0
    assert float(out.parts["pairwise"]) == 0.0  # all labels equal: no ordered pair
    assert out.total.requires_grad
    user_grad, item_grad = torch.autograd.grad(out.total, [user, item])  # no "unused" error
    ref = ref_pointwise(user, item, label, config.scale, 0.0)
    assert torch.allclose(out.total, ref)
    assert torch.allclose(user_grad, grads(ref, user, item)[0])


def test_all_labels_positive_gives_zero_pairwise_with_a_graph():
    user, item, _, item_index, _, _ = batch(rows=5, seed=15)
    out = RetrievalLoss(only(w={"pairwise_weight": 1.0}))(
        user, item, torch.ones(5, dtype=DTYPE), item_index=item_index)
    assert float(out.total.detach()) == 0.0
    user_grad, _ = torch.autograd.grad(out.total, [user, item])
    assert float(user_grad.abs().sum()) == 0.0


def test_batch_smaller_than_num_negatives_plus_one_uses_every_other_row():
    shifts = draw_roll_shifts(4, 8, generator=torch.Generator().manual_seed(0))
    assert sorted(shifts.tolist()) == [1, 2, 3]
    assert draw_roll_shifts(1, 8).numel() == 0
    user, item, label, item_index, _, _ = batch(rows=4, seed=16)
    item_index = torch.arange(4)
    out = RetrievalLoss(sv_config(num_negatives=8))(
        user, item, label, item_index=item_index, generator=torch.Generator().manual_seed(0))
    ref = ref_sv(user, item, label, item_index, [1, 2, 3], 20.0, 0.1, 1.2)
    assert_same(out.total, ref, user, item)


@pytest.mark.parametrize("kind", ["inbatch", "svsoftmax"])
def test_batch_of_one(kind):
    user, item = unit(1, 4, 17), unit(1, 4, 18)
    config = LossConfig(**ALL_ON, softmax=kind, log_q_correction=kind == "inbatch")
    out = RetrievalLoss(config)(user, item, torch.ones(1, dtype=DTYPE), item_index=torch.zeros(1, dtype=torch.long),
                                item_log_q=torch.zeros(1, dtype=DTYPE))
    assert float(out.parts["softmax"]) == 0.0  # no negative at all: log(1) = 0
    assert float(out.parts["pairwise"]) == 0.0
    assert torch.allclose(out.total, ref_pointwise(user, item, torch.ones(1), 20.0, 0.0))
    assert all(torch.isfinite(g).all() for g in torch.autograd.grad(out.total, [user, item]))


@pytest.mark.parametrize("kind", ["inbatch", "svsoftmax"])
def test_every_negative_masked_gives_zero_not_nan(kind):
    # one item shown to every user: no anchor has a valid negative
    user = unit(5, 4, 19)
    item = F.normalize(torch.ones(5, 4, dtype=DTYPE), dim=1).requires_grad_()
    label = torch.tensor([1, 0, 1, 1, 0], dtype=DTYPE)
    config = only(w={"softmax_weight": 1.0}, softmax=kind, log_q_correction=False, num_negatives=2)
    out = RetrievalLoss(config)(user, item, label, item_index=torch.full((5,), 3),
                                generator=torch.Generator().manual_seed(0))
    assert float(out.total.detach()) == 0.0
    assert all(torch.isfinite(g).all() for g in torch.autograd.grad(out.total, [user, item]))


def test_weights_scale_rows():
    user, item, label, item_index, log_q, _ = batch(rows=8, seed=20)
    loss = RetrievalLoss(LossConfig(pointwise_weight=1.0, softmax_weight=1.0))
    ones = loss(user, item, label, item_index=item_index, item_log_q=log_q)
    unweighted = loss(user, item, label, item_index=item_index, item_log_q=log_q, weight=None)
    doubled = loss(user, item, label, item_index=item_index, item_log_q=log_q,
                   weight=torch.full((8,), 2.0, dtype=DTYPE))
    assert torch.allclose(ones.total, unweighted.total)
    assert torch.allclose(doubled.total, 2 * ones.total)
    # a row with weight 0 contributes nothing to the pointwise loss (still counted in the mean)
    dropped = torch.ones(8, dtype=DTYPE)
    dropped[3] = 0.0
    pointwise = loss(user, item, label, item_index=item_index, item_log_q=log_q, weight=dropped)
    per_row = F.binary_cross_entropy_with_logits(20.0 * (user * item).sum(1), label, reduction="none")
    assert torch.allclose(pointwise.parts["pointwise"], (per_row.sum() - per_row[3]) / 8)


def test_total_is_the_weighted_sum_of_the_parts():
    user, item, label, item_index, log_q, _ = batch(rows=8, seed=21)
    out = RetrievalLoss(LossConfig(**ALL_ON))(user, item, label, item_index=item_index, item_log_q=log_q)
    assert isinstance(out, LossOutput)
    assert set(out.parts) == {"pointwise", "pairwise", "softmax"}
    assert all(not part.requires_grad for part in out.parts.values())
    expected = out.parts["pointwise"] + 0.5 * out.parts["pairwise"] + 2.0 * out.parts["softmax"]
    assert torch.allclose(out.total.detach(), expected)
    assert out.total.requires_grad


def test_disabled_losses_are_zero_in_parts():
    user, item, label, item_index, _, _ = batch(rows=8, seed=22)
    out = RetrievalLoss(only(w={"pointwise_weight": 1.0}))(user, item, label, item_index=item_index)
    assert float(out.parts["softmax"]) == 0.0 and float(out.parts["pairwise"]) == 0.0


def test_half_precision_inputs_give_finite_float32_losses():
    user = F.normalize(torch.randn(16, 8), dim=1).bfloat16().requires_grad_()
    item = F.normalize(torch.randn(16, 8), dim=1).bfloat16().requires_grad_()
    label = (torch.arange(16) % 3 == 0).float()
    out = RetrievalLoss(LossConfig(**ALL_ON))(user, item, label, item_index=torch.arange(16),
                                              item_log_q=torch.full((16,), -3.0))
    assert out.total.dtype == torch.float32 and torch.isfinite(out.total)
    out.total.backward()
    assert torch.isfinite(user.grad.float()).all()


def test_missing_or_misshapen_arguments_are_refused():
    user, item, label, item_index, log_q, _ = batch(rows=4, seed=23)
    loss = RetrievalLoss(LossConfig())
    with pytest.raises(ValueError, match="item_log_q"):
        loss(user, item, label, item_index=item_index)
    with pytest.raises(ValueError, match="label"):
        loss(user, item, label[:3], item_index=item_index, item_log_q=log_q)
    with pytest.raises(ValueError, match="candidate_index"):
        loss(user, item, label, item_index=item_index, item_log_q=log_q, candidates=item)
    with pytest.raises(ValueError, match="candidate_log_q"):
        loss(user, item, label, item_index=item_index, item_log_q=log_q, candidates=item,
             candidate_index=item_index)


# -------------------------------------------------------------------------------- config


@pytest.mark.parametrize(("options", "key"), [
    ({"pointwise_weight": -1.0}, "pointwise_weight"),
    ({"pairwise_weight": float("nan")}, "pairwise_weight"),
    ({"softmax_weight": "1"}, "softmax_weight"),
    ({"pointwise_weight": 0.0, "softmax_weight": 0.0}, "weights are 0"),
    ({"softmax": "sampled"}, "softmax"),
    ({"softmax": "svsoftmax", "log_q_correction": False, "num_negatives": 0}, "num_negatives"),
    ({"num_negatives": 2.5}, "num_negatives"),
    ({"sv_t": 0.9}, "sv_t"),
    ({"margin": -0.1}, "margin"),
    ({"scale": 0.0}, "scale"),
    ({"scale": float("inf")}, "scale"),
    ({"log_q_correction": "yes"}, "log_q_correction"),
    ({"softmax": "svsoftmax"}, "log_q_correction"),  # log-Q is for in-batch negatives only
])
def test_config_errors_name_the_key_and_the_fix(options, key):
    with pytest.raises(ConfigError) as error:
        LossConfig(**options)
    text = str(error.value)
    assert key in text
    assert " — " in text  # a hint with the fix follows


def test_config_accepts_sensible_combinations():
    LossConfig()
    LossConfig(softmax="svsoftmax", log_q_correction=False, num_negatives=1, sv_t=1.0, margin=0.0)
    LossConfig(softmax_weight=0.0, softmax="svsoftmax")  # softmax off: its options are moot
    assert LossConfig(pairwise_weight=1.0).enabled == ("pointwise", "pairwise", "softmax")


def test_config_from_mapping_rejects_unknown_keys():
    assert LossConfig.from_mapping({"softmax_weight": 2.0}) == LossConfig(softmax_weight=2.0)
    with pytest.raises(ConfigError, match="num_negative") as error:
        LossConfig.from_mapping({"num_negative": 4}, source="coldrec.toml")
    assert "coldrec.toml" in str(error.value) and "num_negatives" in str(error.value)


# --------------------------------------------------------------------------------- sanity


def positive_ranks(user_table, item_table, positives) -> torch.Tensor:
    scores = F.normalize(user_table, dim=1) @ F.normalize(item_table, dim=1).T  # (users, items)
    own = scores.gather(1, positives[:, None])
    return (scores > own).sum(1).float()  # 0 = ranked first


@pytest.mark.parametrize("kind", ["inbatch", "svsoftmax"])
def test_minimising_the_softmax_ranks_planted_positives_first(kind):
    # 48 users, 48 items, each user's positive a planted item; learnable embeddings
    torch.manual_seed(0)
    users = items = 48
    positives = torch.randperm(items)
    user_table = torch.nn.Parameter(torch.randn(users, 16))
    item_table = torch.nn.Parameter(torch.randn(items, 16))
    config = LossConfig(pointwise_weight=0.0, softmax_weight=1.0, softmax=kind,
                        log_q_correction=kind == "inbatch", num_negatives=6, scale=10.0)
    loss = RetrievalLoss(config)
    before = positive_ranks(user_table.detach(), item_table.detach(), positives)
    generator = torch.Generator().manual_seed(1)
    for _ in range(60):
        rows = torch.randperm(users, generator=generator)[:16]
        item_rows = positives[rows]
        out = loss(F.normalize(user_table[rows], dim=1), F.normalize(item_table[item_rows], dim=1),
                   torch.ones(16), item_index=item_rows,
                   item_log_q=torch.full((16,), math.log(1 / items)), generator=generator)
        user_grad, item_grad = torch.autograd.grad(out.total, [user_table, item_table])
        with torch.no_grad():  # plain SGD by hand: torch.optim's first step imports dynamo (seconds)
            user_table -= 2.0 * user_grad
            item_table -= 2.0 * item_grad
    after = positive_ranks(user_table.detach(), item_table.detach(), positives)
    assert before.mean() > 15  # chance: about (items - 1) / 2
    assert after.mean() < 1.0
    assert (after == 0).float().mean() > 0.8  # (measured: 1.00 inbatch, 0.98 svsoftmax)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", ["inbatch", "svsoftmax"])
def test_cuda_gives_the_cpu_values(kind):
    user, item, label, item_index, log_q, weight = batch(rows=32, seed=30)
    config = LossConfig(**ALL_ON, softmax=kind, log_q_correction=kind == "inbatch")
    cpu = RetrievalLoss(config)(user, item, label, item_index=item_index, item_log_q=log_q, weight=weight,
                                generator=torch.Generator().manual_seed(4))
    # a CPU generator with CUDA tensors: the trainer's case; the shifts are drawn on the CPU
    gpu = RetrievalLoss(config).cuda()(user.cuda(), item.cuda(), label.cuda(), item_index=item_index.cuda(),
                                       item_log_q=log_q.cuda(), weight=weight.cuda(),
                                       generator=torch.Generator().manual_seed(4))
    assert torch.allclose(gpu.total.cpu(), cpu.total, rtol=1e-9)
