"""Towers and input dropout: exactly the preference block is zeroed, at the configured rates."""

from __future__ import annotations

import datetime as dt
import math

import polars as pl
import pytest
import torch
import torch.nn.functional as F

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
    from coldrec.features import profile_width

    assert model.user.preference_width == 32 + 1 + profile_width(spec.item)  # id embedding ⊕ one stats column ⊕ click profile


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
    assert torch.allclose(view, model.embed("item", cold_inputs), atol=1e-6)  # == serving a cold item
    assert not torch.allclose(view, model.embed("item", item_inputs))  # warm rows differ: ids matter
    assert torch.allclose(model.content_view("item", item_inputs, served=False), model.item(cold_inputs), atol=1e-6)


def test_profile_smoothing_is_validated():
    from coldrec.errors import ConfigError

    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ConfigError, match="profile_smoothing"):
            ModelConfig(profile_smoothing=bad).validate()


# --------------------------------------------------------------------------- click profiles


def test_profile_matrix_rows_split_one_click_over_each_columns_values():
    from coldrec.features import FIRST, OOV, PROFILE_NUMERIC_BUCKETS, encode_content, profile_groups, profile_matrix

    train = pl.DataFrame({"user_id": ["a"] * 5, "item_id": [1, 2, 3, 4, 5], "ts": [dt.datetime(2026, 1, 1)] * 5, "label": pl.Series([1] * 5, dtype=pl.Int8)})
    users = pl.DataFrame({"user_id": ["a"], "country": ["de"]})
    items = pl.DataFrame(
        {
            "item_id": [1, 2, 3, 4, 5],
            "kind": ["film", "film", "show", None, "rare"],
            "tags": [["x"], ["y", "x"], [], ["y"], ["x"]],
            "year": [1990.0, 1995.0, None, 2000.0, 2005.0],
        }
    )
    spec = fit_spec(train, users, items, FeaturesConfig(vocab_min_count=2))  # "show", "rare" -> OOV
    groups = profile_groups(spec.item)
    assert [(role, width) for _, role, width in groups] == [("categorical", FIRST + 1), ("multi_hot", FIRST + 2), ("numeric", PROFILE_NUMERIC_BUCKETS + 1)]
    matrix = profile_matrix(spec.item, encode_content(spec.item, items, "items.parquet")).numpy()  # (5, width)
    kind, tags, year = matrix[:, :3], matrix[:, 3:7], matrix[:, 7:]
    for part in (kind, tags, year):
        assert part.sum(1) == pytest.approx([1.0] * 5)  # one click = one unit per column
    assert kind[:, FIRST].tolist() == [1, 1, 0, 0, 0] and kind[:, OOV].tolist() == [0, 0, 1, 0, 1] and kind[3, 0] == 1  # null -> slot 0
    x, y = FIRST + spec.item.columns[1].vocab.index("x"), FIRST + spec.item.columns[1].vocab.index("y")
    assert tags[1, x] == tags[1, y] == 0.5  # a bag splits its unit
    assert tags[2, 0] == 1.0  # an empty bag counts as null
    assert year[2, PROFILE_NUMERIC_BUCKETS] == 1.0  # missing
    buckets = year[[0, 1, 3, 4]].argmax(1)
    assert list(buckets) == sorted(buckets) and buckets[0] < buckets[-1]  # ordered quantile buckets
    # The served projection gathers basis rows instead: the same as the matrix times the basis.
    from coldrec.features import profile_edges, profile_projection

    content = encode_content(spec.item, items, "items.parquet")
    basis = torch.linalg.qr(torch.randn(matrix.shape[1], 3, generator=torch.Generator().manual_seed(0)))[0]  # (width, 3)
    projected = profile_projection(spec.item, content, profile_edges(spec.item, content), basis)
    assert torch.allclose(projected, torch.from_numpy(matrix) @ basis, atol=1e-6)


def _profile_model():
    spec, users, items, stats = _spec()
    model = build_model(spec, ModelConfig(dim=16, hidden=[8], user_profile=True, item_profile=True, profile_smoothing=2.0))
    return model, spec, users, items, stats


def test_profile_is_zero_for_a_cold_id_and_a_smoothed_log_lift_otherwise():
    model, spec, users, items, stats = _profile_model()
    tower = model.user
    width = tower.profile_width
    assert width > 0 and model.item.profile_width > 0
    assert tower.preference_width == 32 + 1 + width
    with torch.no_grad():
        tower.profile_prior.copy_(torch.full((width,), 0.5))
        tower.profile_sum[1] = torch.arange(width, dtype=torch.float32)
        tower.profile_count[1] = 4.0
    out = tower.profile({"id": torch.tensor([0, 1])})
    assert torch.equal(out[0], torch.zeros(width))  # cold: exactly zero, as under input dropout
    expected = torch.log((torch.arange(width) + 2.0 * 0.5) / (4.0 + 2.0) / 0.5)
    assert torch.allclose(out[1], expected)


def test_leave_one_out_equals_the_profile_without_that_click():
    model, *_ = _profile_model()
    tower = model.user
    width = tower.profile_width
    torch.manual_seed(0)
    clicks = torch.rand(3, width)
    with torch.no_grad():
        tower.profile_prior.copy_(torch.full((width,), 0.3))
        tower.profile_sum[1] = clicks.sum(0)
        tower.profile_count[1] = 3.0
        tower.profile_sum[2] = clicks[:2].sum(0)
        tower.profile_count[2] = 2.0
    minus = {"id": torch.tensor([1]), "profile_minus": clicks[2:], "profile_count_minus": torch.tensor([1.0])}
    assert torch.allclose(tower.profile(minus), tower.profile({"id": torch.tensor([2])}), atol=1e-6)


def test_dropout_zeroes_the_profile_with_the_rest_of_the_preference_block():
    model, spec, users, items, stats = _profile_model()
    model.eval()
    tower = model.user
    with torch.no_grad():
        tower.profile_prior.fill_(0.2)
        tower.profile_sum.uniform_(0.0, 3.0)
        tower.profile_count.fill_(3.0)
        tower.profile_sum[0] = 0.0
        tower.profile_count[0] = 0.0
    user_inputs, _ = _inputs(spec, users, items, stats)
    dropped = tower(user_inputs, torch.ones(4, dtype=torch.bool))
    cold = {**user_inputs, "id": torch.zeros_like(user_inputs["id"]), "stats": torch.zeros_like(user_inputs["stats"])}
    assert torch.allclose(dropped, tower(cold, None), atol=1e-6)  # dropped = served cold, profile included
    assert not torch.allclose(dropped, tower(user_inputs, None), atol=1e-3)  # the profile (and id) do move warm users


def _fill_user_profiles(model: TwoTower) -> None:
    """Random click sums for every user id row but the cold row 0, which stays empty."""
    with torch.no_grad():
        model.user.profile_sum.uniform_(0.0, 2.0)
        model.user.profile_count.fill_(2.0)
        model.user.profile_sum[0] = 0.0
        model.user.profile_count[0] = 0.0
        model.user.profile_prior.fill_(0.3)


def test_served_scores_are_the_cosine_plus_the_profile_match():
    from coldrec.features import profile_groups, profile_matrix, profile_width

    spec, users, items, stats = _spec()
    torch.manual_seed(0)
    model = build_model(spec, ModelConfig(dim=16, hidden=[8], profile_match=0.04, popularity_prior=0.0))
    model.eval()
    width = profile_width(spec.item)
    assert model.output_dim == 16 + width + 2
    _fill_user_profiles(model)
    user_inputs, item_inputs = _inputs(spec, users, items, stats)
    served_users, served_items = model.embed("user", user_inputs), model.embed("item", item_inputs)
    cosine = F.normalize(model.user(user_inputs), dim=1) @ F.normalize(model.item(item_inputs), dim=1).T  # (4, 4)
    match = model.user.profile(user_inputs) @ profile_matrix(spec.item, item_inputs, model.terms.match.item_value_edges).T  # (4, 4)
    assert torch.allclose(served_users @ served_items.T, cosine + 0.04 * match, atol=1e-5)
    # One norm per side, so normalising keeps the ranking exact both ways (items for a user,
    # users for an item).
    assert torch.allclose(served_items.norm(dim=1), torch.full((4,), (1 + 0.04 * len(profile_groups(spec.item))) ** 0.5), atol=1e-5)
    assert torch.allclose(served_users.norm(dim=1), torch.full((4,), (1 + 0.04 * width * 9.0) ** 0.5), atol=1e-4)
    # A cold user (the 4th: no id row) gets no match term.
    assert user_inputs["id"][3] == 0 and torch.equal(served_users[3, 16 : 16 + width], torch.zeros(width))
    cold_view = model.content_view("user", user_inputs)
    assert torch.equal(cold_view[:, 16 : 16 + width], torch.zeros(4, width))


def test_profile_match_rank_projects_both_sides_onto_the_basis():
    from coldrec.features import profile_groups, profile_matrix, profile_width

    spec, users, items, stats = _spec()
    width = profile_width(spec.item)
    torch.manual_seed(0)
    model = build_model(spec, ModelConfig(dim=16, hidden=[8], profile_match=0.04, profile_match_rank=2, popularity_prior=0.0))
    model.eval()
    assert width > 2 and model.terms.match.width == 2 and model.output_dim == 16 + 2 + 2
    with torch.no_grad():
        model.terms.match.match_basis.copy_(torch.linalg.qr(torch.randn(width, 2))[0])  # orthonormal columns
    _fill_user_profiles(model)
    user_inputs, item_inputs = _inputs(spec, users, items, stats)
    served_users, served_items = model.embed("user", user_inputs), model.embed("item", item_inputs)
    cosine = F.normalize(model.user(user_inputs), dim=1) @ F.normalize(model.item(item_inputs), dim=1).T  # (4, 4)
    basis = model.terms.match.match_basis
    match = (model.user.profile(user_inputs) @ basis) @ (profile_matrix(spec.item, item_inputs, model.terms.match.item_value_edges) @ basis).T
    assert torch.allclose(served_users @ served_items.T, cosine + 0.04 * match, atol=1e-5)
    assert torch.allclose(served_items.norm(dim=1), torch.full((4,), (1 + 0.04 * len(profile_groups(spec.item))) ** 0.5), atol=1e-5)
    assert torch.allclose(served_users.norm(dim=1), torch.full((4,), (1 + 0.04 * width * 9.0) ** 0.5), atol=1e-4)
    with pytest.raises(Exception, match="profile_match_rank"):
        ModelConfig(profile_match_rank=-1).validate()


def test_popularity_prior_adds_to_item_scores_and_leaves_user_rankings_alone():
    from coldrec.features import profile_groups, profile_matrix

    spec, users, items, stats = _spec()
    torch.manual_seed(0)
    model = build_model(spec, ModelConfig(dim=16, hidden=[8], profile_match=0.04, popularity_prior=0.1))
    model.eval()
    width = model.terms.match.width
    assert model.output_dim == 16 + width + 1 + 2
    popularity = torch.log(torch.tensor([0.0, 5.0, 0.0, 2.0]) + 1.0) - math.log(6.0)  # rows: new, item 1, 2, 3
    popularity[0] = popularity[1:].mean()  # an item without a row: the known items' mean
    with torch.no_grad():
        model.terms.prior.item_popularity.copy_(popularity)
        model.terms.prior.popularity_floor.fill_(-math.log(6.0))
    user_inputs, item_inputs = _inputs(spec, users, items, stats)
    served_users, served_items = model.embed("user", user_inputs), model.embed("item", item_inputs)
    cosine = F.normalize(model.user(user_inputs), dim=1) @ F.normalize(model.item(item_inputs), dim=1).T  # (4, 4)
    match = model.user.profile(user_inputs).clamp(-3, 3) @ profile_matrix(spec.item, item_inputs, model.terms.match.item_value_edges).T
    prior = popularity[item_inputs["id"]]  # (4,): item 4 has no row, so the mean
    assert item_inputs["id"][3] == 0 and prior[3] == popularity[0] and prior.min() < prior[3] < prior.max()
    assert torch.allclose(served_users @ served_items.T, cosine + 0.04 * match + 0.1 * prior, atol=1e-5)
    # One norm per side: ranking by angle is ranking by that score, and the prior, the same
    # for every user, moves no user up or down for a given item.
    assert torch.allclose(served_items.norm(dim=1), torch.full((4,), (1 + 0.04 * len(profile_groups(spec.item)) + 0.1 * math.log(6.0) ** 2) ** 0.5), atol=1e-5)
    assert torch.allclose(served_users.norm(dim=1), served_users.norm(dim=1)[0].expand(4), atol=1e-5)
    # The content-only view of an item is served as a new item.
    cold_view = model.content_view("item", item_inputs)
    assert torch.allclose(cold_view[:, 16 + width], torch.full((4,), 0.1**0.5 * float(popularity[0])))
    # The prior alone (no match): one dimension plus the two pads.
    alone = build_model(spec, ModelConfig(dim=16, hidden=[8], profile_match=0.0, popularity_prior=0.1))
    alone.eval()
    with torch.no_grad():
        alone.terms.prior.item_popularity.copy_(popularity)
        alone.terms.prior.popularity_floor.fill_(-math.log(6.0))
    assert alone.output_dim == 16 + 1 + 2
    cosine = F.normalize(alone.user(user_inputs), dim=1) @ F.normalize(alone.item(item_inputs), dim=1).T
    served = alone.embed("user", user_inputs) @ alone.embed("item", item_inputs).T
    assert torch.allclose(served, cosine + 0.1 * prior, atol=1e-5)
    with pytest.raises(Exception, match="popularity_prior"):
        ModelConfig(popularity_prior=-1.0).validate()
    with pytest.raises(Exception, match="popularity_days"):
        ModelConfig(popularity_days=-1.0).validate()
    for quantile in (-0.1, 1.5):
        with pytest.raises(Exception, match="new_item_prior"):
            ModelConfig(new_item_prior=quantile).validate()


def test_profile_impute_serves_users_without_a_profile_the_profile_their_content_predicts():
    from coldrec.features import profile_edges, profile_groups, profile_matrix, profile_width

    spec, users, items, stats = _spec()
    torch.manual_seed(0)
    config = ModelConfig(dim=16, hidden=[8], profile_match=0.04, popularity_prior=0.0)
    plain = build_model(spec, config)
    model = build_model(spec, ModelConfig(**{**config.__dict__, "profile_impute": 2.0}))
    model.load_state_dict(plain.state_dict(), strict=False)  # the same tower weights
    for m in (plain, model):
        m.eval()
    _fill_user_profiles(plain)
    model.user.load_state_dict(plain.user.state_dict())
    with torch.no_grad():  # user 'b' (id row 2) has no train click: imputed, like 'd' (no id row)
        for m in (plain, model):
            m.user.profile_sum[2] = 0.0
            m.user.profile_count[2] = 0.0
    user_inputs, item_inputs = _inputs(spec, users, items, stats)
    values = profile_matrix(spec.user, user_inputs, profile_edges(spec.user, user_inputs))  # (4, user width)
    assert values.shape[1] == profile_width(spec.user) > 0
    with torch.no_grad():
        model.terms.match.user_value_edges.copy_(profile_edges(spec.user, user_inputs))
        model.terms.match.impute_map.copy_(torch.randn(profile_width(spec.user), profile_width(spec.item)))
    groups = len(profile_groups(spec.user))
    imputed = 2.0 * values @ model.terms.match.impute_map / groups  # (4, item width); far below the length cap
    profile = model.user.profile(user_inputs).clamp(-3, 3)
    expected = torch.where(torch.tensor([False, True, False, True]).unsqueeze(1), imputed, profile)
    served_users, served_items = model.embed("user", user_inputs), model.embed("item", item_inputs)
    cosine = F.normalize(model.user(user_inputs), dim=1) @ F.normalize(model.item(item_inputs), dim=1).T
    item_values = profile_matrix(spec.item, item_inputs, model.terms.match.item_value_edges)
    assert torch.allclose(served_users @ served_items.T, cosine + 0.04 * expected @ item_values.T, atol=1e-5)
    # Users with a profile are served as without the option; every user keeps one norm.
    plain_users = plain.embed("user", user_inputs)
    assert torch.allclose(served_users[[0, 2]], plain_users[[0, 2]], atol=1e-6)
    assert not torch.allclose(served_users[[1, 3]], plain_users[[1, 3]], atol=1e-3)
    assert torch.allclose(served_users.norm(dim=1), plain_users.norm(dim=1), atol=1e-4)
    # A huge imputed profile is capped at a clipped profile's largest length: norms stay equal.
    with torch.no_grad():
        model.terms.match.impute_map.mul_(1e4)
    assert torch.allclose(model.embed("user", user_inputs).norm(dim=1), plain_users.norm(dim=1), atol=1e-3)
    with torch.no_grad():
        model.terms.match.impute_map.mul_(1e-4)
    # The content-only view imputes every user.
    width = profile_width(spec.item)
    assert torch.allclose(model.content_view("user", user_inputs)[:, 16 : 16 + width], 0.04**0.5 * imputed, atol=1e-6)
    with pytest.raises(Exception, match="profile_impute"):
        ModelConfig(profile_impute=-1.0).validate()
    assert build_model(spec, ModelConfig(profile_match=0.0, profile_impute=2.0)).terms.get("match") is None  # needs the match


def test_profile_match_zero_serves_the_plain_tower_output():
    spec, users, items, stats = _spec()
    model = build_model(spec, ModelConfig(dim=16, hidden=[8], profile_match=0.0, popularity_prior=0.0))
    model.eval()
    user_inputs, item_inputs = _inputs(spec, users, items, stats)
    assert model.output_dim == 16
    assert torch.equal(model.embed("item", item_inputs), model.item(item_inputs))
    with pytest.raises(Exception, match="profile_match"):
        ModelConfig(profile_match=-0.1).validate()


def test_profile_edges_work_beyond_torch_quantiles_size_limit():
    from types import SimpleNamespace

    from coldrec.features import PROFILE_NUMERIC_BUCKETS, profile_edges

    values = torch.arange(2**24 + 8, dtype=torch.float32)  # torch.quantile refuses more than 2^24
    spec = SimpleNamespace(numeric_columns=[object()])
    edges = profile_edges(spec, {"num": torch.stack([values, torch.zeros_like(values)], dim=1)})
    assert edges.shape == (1, PROFILE_NUMERIC_BUCKETS - 1)
    expected = [(len(values) - 1) * q / PROFILE_NUMERIC_BUCKETS for q in range(1, PROFILE_NUMERIC_BUCKETS)]
    assert torch.allclose(edges[0], torch.tensor(expected), rtol=1e-6)
