"""Towers and input dropout: exactly the preference block is zeroed, at the configured rates."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest
import torch

from coldrec.config import FeaturesConfig, ModelConfig
from coldrec.features import encode_for_serving, fit_spec
from coldrec.model import TwoTower, build_model

torch.set_num_threads(1)


def _spec():
    t0 = dt.datetime(2026, 1, 1)
    train = pl.DataFrame(
        {
            "user_id": ["a", "b", "c", "a"],
            "item_id": [1, 2, 3, 3],
            "ts": [t0] * 4,
            "label": pl.Series([1, 0, 1, 1], dtype=pl.Int8),
        }
    )
    users = pl.DataFrame({"user_id": ["a", "b", "c", "d"], "country": ["de", "fr", "de", "fr"], "age": [1.0, 2.0, 3.0, None]})
    items = pl.DataFrame(
        {
            "item_id": [1, 2, 3, 4],
            "tags": [["x"], ["y", "x"], ["y"], ["x"]],
            "vec": pl.Series([[0.1, 0.2]] * 4, dtype=pl.Array(pl.Float32, 2)),
        }
    )
    stats = pl.DataFrame({"user_id": ["a", "b", "c"], "day": [t0.date()] * 3, "clicks": [1.0, 2.0, 5.0]})
    spec = fit_spec(train, users, items, FeaturesConfig(vocab_min_count=1), user_stats=stats)
    return spec, users, items, stats


def _inputs(spec, users, items, stats):
    user_inputs, _ = encode_for_serving(spec.user, users, stats=stats)
    item_inputs, _ = encode_for_serving(spec.item, items)
    return user_inputs, item_inputs


def test_tower_output_shape_and_unit_norm():
    spec, users, items, stats = _spec()
    torch.manual_seed(0)
    model = build_model(spec, ModelConfig(dim=16, hidden=[8]))
    model.eval()
    user_inputs, item_inputs = _inputs(spec, users, items, stats)
    user, item = model(user_inputs, item_inputs)
    assert user.shape == (4, 16) and item.shape == (4, 16)
    assert torch.allclose(user.norm(dim=1), torch.ones(4), atol=1e-5)
    assert model.user.preference_width == 32 + 1  # id embedding ⊕ one stats column


def test_cold_slot_is_zero_and_stays_zero():
    spec, *_ = _spec()
    model = build_model(spec, ModelConfig())
    assert float(model.user.id_embedding.weight[0].detach().abs().sum()) == 0.0
    model.user.id_embedding(torch.tensor([0, 1])).sum().backward()
    assert float(model.user.id_embedding.weight.grad[0].abs().sum()) == 0.0  # padding row gets no gradient


@pytest.mark.parametrize("normalisation", ["layernorm", "none"])
def test_dropout_zeroes_exactly_the_preference_block(normalisation):
    spec, users, items, stats = _spec()
    torch.manual_seed(0)
    model = build_model(spec, ModelConfig(dim=8, hidden=[16], normalisation=normalisation))
    model.eval()
    user_inputs, _ = _inputs(spec, users, items, stats)
    cold_inputs, _ = encode_for_serving(spec.user, users, stats=stats, cold=True)
    drop = torch.tensor([True, False, True, False])
    dropped = model.user(user_inputs, drop)
    warm = model.user(user_inputs, None)
    cold = model.user(cold_inputs, None)
    # Dropped rows are exactly the cold (content-only) embedding; the others are untouched.
    assert torch.equal(dropped[drop], cold[drop])
    assert torch.equal(dropped[~drop], warm[~drop])
    assert not torch.allclose(warm[drop], cold[drop])  # the preference block mattered
    # Content is never dropped: changing content changes a dropped row.
    changed = dict(user_inputs)
    changed["col0"] = torch.ones_like(user_inputs["col0"]) * 3
    assert not torch.allclose(model.user(changed, drop)[drop], dropped[drop])


def test_dropout_rates_are_per_sample_independent_and_unscaled():
    spec, *_ = _spec()
    model = build_model(spec, ModelConfig(user_dropout_rate=0.3, item_dropout_rate=0.7))
    generator = torch.Generator().manual_seed(1)
    user_drop, item_drop = model.dropout_masks(200_000, torch.device("cpu"), generator)
    assert float(user_drop.float().mean()) == pytest.approx(0.3, abs=0.005)
    assert float(item_drop.float().mean()) == pytest.approx(0.7, abs=0.005)
    both = float((user_drop & item_drop).float().mean())
    assert both == pytest.approx(0.21, abs=0.005)  # independent draws


def test_training_mode_applies_dropout_eval_mode_does_not():
    spec, users, items, stats = _spec()
    torch.manual_seed(0)
    model = build_model(spec, ModelConfig(dim=8, hidden=[16], user_dropout_rate=0.5, item_dropout_rate=0.0))
    user_inputs, item_inputs = _inputs(spec, users, items, stats)
    cold_inputs, _ = encode_for_serving(spec.user, users, stats=stats, cold=True)
    model.eval()
    warm = model.user(user_inputs)
    cold = model.user(cold_inputs)
    model.train()
    generator = torch.Generator().manual_seed(3)
    user_drop, _ = model.dropout_masks(4, torch.device("cpu"), torch.Generator().manual_seed(3))
    user, _ = model(user_inputs, item_inputs, generator)
    expected = torch.where(user_drop[:, None], cold, warm)
    assert torch.allclose(user, expected, atol=1e-6)
    model.eval()
    assert torch.equal(model(user_inputs, item_inputs)[0], warm)


def test_zero_rates_never_drop():
    spec, *_ = _spec()
    model = TwoTower(spec.user, spec.item, ModelConfig(user_dropout_rate=0.0, item_dropout_rate=0.0))
    user_drop, item_drop = model.dropout_masks(10_000, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert not user_drop.any() and not item_drop.any()


def test_content_view_is_the_cold_view_of_every_row():
    spec, users, items, stats = _spec()
    torch.manual_seed(0)
    model = build_model(spec, ModelConfig(dim=8, hidden=[16]))
    model.eval()
    _, item_inputs = _inputs(spec, users, items, stats)
    cold_inputs, _ = encode_for_serving(spec.item, items, cold=True)
    view = model.content_view("item", item_inputs)
    assert torch.allclose(view, model.item(cold_inputs), atol=1e-6)  # == serving a cold item
    assert not torch.allclose(view, model.item(item_inputs))  # warm rows differ: ids matter


def test_content_aux_weight_adds_the_loss_of_the_content_only_item_view():
    from coldrec.losses import LossConfig, RetrievalLoss
    from coldrec.train import Dist, TrainStep

    spec, users, items, stats = _spec()
    user_inputs, item_inputs = _inputs(spec, users, items, stats)
    label = torch.ones(4)
    weight = torch.ones(4)
    item_row = torch.arange(4)
    log_q = torch.full((4,), -1.0)
    totals = {}
    for aux in (0.0, 0.5):
        torch.manual_seed(0)
        config = ModelConfig(dim=8, hidden=[16], user_dropout_rate=0.0, item_dropout_rate=0.0, content_aux_weight=aux)
        model = build_model(spec, config)
        loss = RetrievalLoss(LossConfig(pointwise_weight=0.0, softmax_weight=1.0))
        step = TrainStep(model, loss, "twotower", Dist()).train()
        total, parts = step(user_inputs, item_inputs, label, weight, item_row, log_q, torch.Generator().manual_seed(0))
        totals[aux] = (total, parts)
    user = model.user(user_inputs)
    expected = loss(user, model.content_view("item", item_inputs), label, item_index=item_row, weight=weight, item_log_q=log_q).total
    assert "content_aux" in totals[0.5][1] and "content_aux" not in totals[0.0][1]
    assert (totals[0.5][0] - totals[0.0][0]).item() == pytest.approx(0.5 * expected.item(), rel=1e-5)
    # The auxiliary term trains the item content encoders even with no dropped row.
    totals[0.5][0].backward()
    assert model.item.encoders["col0"].weight.grad.abs().sum() > 0


def test_content_aux_weight_is_validated():
    from coldrec.errors import ConfigError

    with pytest.raises(ConfigError, match="content_aux_weight"):
        ModelConfig(content_aux_weight=-1.0).validate()
