"""coldrec.batches: an epoch of every click and sampled exposures estimates the full epoch."""

from __future__ import annotations

import torch

from coldrec.batches import EpochSampler


def _labels(positives: int, negatives: int) -> torch.Tensor:
    label = torch.cat([torch.ones(positives), torch.zeros(negatives)])
    return label[torch.randperm(len(label), generator=torch.Generator().manual_seed(0))]


def test_sampled_epochs_estimate_the_pointwise_loss_over_every_exposure_without_bias():
    label = _labels(30, 270)
    loss = torch.rand(len(label), generator=torch.Generator().manual_seed(1)) * 3  # per-row loss, any values
    full = float(loss.sum())  # one epoch over every exposure
    sampler = EpochSampler(label, negative_rate=2.0)
    assert len(sampler) == 30 + 60 and sampler.negative_weight == 270 / 60
    assert sampler.positive_share == 30 / 90  # positives/s = samples/s x this share
    totals = []
    for seed in range(3000):
        rows, importance = sampler.rows(torch.Generator().manual_seed(seed))
        assert sorted(rows[label[rows] > 0].tolist()) == sorted(torch.nonzero(label > 0).squeeze(1).tolist())  # every click once
        assert len(set(rows.tolist())) == len(rows)  # without replacement
        totals.append(float((importance * loss[rows]).sum()))
    estimate = sum(totals) / len(totals)
    spread = torch.tensor(totals).std().item() / len(totals) ** 0.5
    assert abs(estimate - full) < 4 * spread and abs(estimate - full) / full < 0.01


def test_a_rate_above_negatives_per_click_takes_every_sample_in_the_old_order():
    label = _labels(10, 40)
    sampler = EpochSampler(label, negative_rate=1e9)
    rows, importance = sampler.rows(torch.Generator().manual_seed(7))
    assert importance is None and torch.equal(rows, torch.randperm(50, generator=torch.Generator().manual_seed(7)))


def test_log_q_is_each_items_expected_share_of_an_epoch():
    label = _labels(40, 160)
    item_row = torch.randint(0, 12, (200,), generator=torch.Generator().manual_seed(2))
    sampler = EpochSampler(label, negative_rate=1.0)
    counts = torch.zeros(12)
    epochs = 2000
    for seed in range(epochs):
        rows, _ = sampler.rows(torch.Generator().manual_seed(seed))
        counts += torch.bincount(item_row[rows], minlength=12).float()
    share = counts / (epochs * len(sampler))
    assert torch.allclose(sampler.item_log_q(item_row, 12).exp(), share, atol=0.003)


def test_without_negatives_the_epoch_is_the_clicks():
    sampler = EpochSampler(torch.ones(25), negative_rate=3.0)
    rows, importance = sampler.rows(torch.Generator().manual_seed(0))
    assert sorted(rows.tolist()) == list(range(25)) and len(sampler) == 25
    none = EpochSampler(_labels(10, 40), negative_rate=0.0)
    rows, importance = none.rows(torch.Generator().manual_seed(0))
    assert len(rows) == 10 and bool((importance == 1).all())
