"""Served score terms: what a served vector adds to the towers' cosine.

The towers score a (user, item) pair by the cosine of their outputs u, v. A served term adds
a score of its own, s(user, item) = a_u . b_v, by appending a_u to the user vector and b_v to
the item vector, so that one dot product (or angle, in the index) still ranks by

    cos(u, v) + sum over terms of a_u . b_v.

Two pads close the vectors: every user vector is filled up to one norm, every item vector to
another, so that ranking by dot product and ranking by angle agree (the index normalises).
Served vectors are laid out user [u, a_1, a_2, ..., 0, pad_u], item [v, b_1, b_2, ..., pad_v, 0].

Each term is one class with one small interface:
- `fit(...)`: its tables from the train samples, once before the training loop;
- `user(...)` / `item(...)`: its columns for a batch, the largest squared norm they can reach
  (the pad's ceiling) and their squared norm per row (None: the same for every row);
- its tables are buffers, saved beside the weights as `terms.<key>.<buffer>`.
Removing a term means deleting its class and its line in TERMS.
"""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import polars as pl
import torch
from torch import Tensor, nn

from coldrec import log
from coldrec.config import ModelConfig
from coldrec.features import (
    PROFILE_NUMERIC_BUCKETS,
    EncodedData,
    EntitySpec,
    FeatureSpec,
    id_indices,
    profile_edges,
    profile_groups,
    profile_matrix,
    profile_projection,
    profile_width,
)

PROFILE_MATCH_CLIP = 3.0  # model.profile_match: profile slots beyond +-3 (20x over-clicked) count as 3

# (batch, width) columns, the ceiling of their squared norm, their squared norm (batch, 1) or None
Part = tuple[Tensor, "float | Tensor", "Tensor | None"]


class ProfileMatch(nn.Module):
    """model.profile_match: user [c p_u B], item [c values_v B], so u . v gains
    profile_match x p_u B B' values_v.

    p_u is the user's click profile (the user tower's `profile`, clipped to +-PROFILE_MATCH_CLIP),
    values_v the item's content values (`profile_matrix`), c^2 = profile_match. B is the
    identity, or with more value slots than model.profile_match_rank the items' top principal
    directions (`match_basis`). model.profile_impute: a user without a click profile is served
    (user values @ impute_map) / column groups x profile_impute, projected like a profile;
    impute_map[s] = the mean clipped profile of the train users with user value s.
    """

    key = "match"

    @staticmethod
    def active(config: ModelConfig, user_spec: EntitySpec, item_spec: EntitySpec) -> bool:
        return config.user_profile and config.profile_match > 0 and profile_width(item_spec) > 0

    def __init__(self, config: ModelConfig, user_spec: EntitySpec, item_spec: EntitySpec) -> None:
        super().__init__()
        self.weight = config.profile_match
        self.user_spec, self.item_spec = user_spec, item_spec
        self.value_width = profile_width(item_spec)  # slots of an item's values
        self.value_groups = len(profile_groups(item_spec))  # each sums to 1: |values|^2 <= groups
        self.profile_norm2_max = self.value_width * PROFILE_MATCH_CLIP**2  # the largest |clipped p_u|^2 (projecting only shrinks it)
        rank = config.profile_match_rank
        self.width = self.value_width if rank == 0 or rank >= self.value_width else rank  # served dims
        self.register_buffer("item_value_edges", torch.zeros(len(item_spec.numeric_columns), PROFILE_NUMERIC_BUCKETS - 1))
        self.projected = self.width < self.value_width
        if self.projected:
            self.register_buffer("match_basis", torch.zeros(self.value_width, self.width))  # filled by fit
        self.impute = config.profile_impute if profile_width(user_spec) else 0.0
        if self.impute:
            self.user_value_groups = len(profile_groups(user_spec))
            self.register_buffer("user_value_edges", torch.zeros(len(user_spec.numeric_columns), PROFILE_NUMERIC_BUCKETS - 1))
            self.register_buffer("impute_map", torch.zeros(profile_width(user_spec), self.value_width))  # filled by fit

    # ----------------------------------------------------------------------- fit

    def fit(self, user_tower: nn.Module, data: EncodedData, spec: FeatureSpec, train: pl.DataFrame, config: ModelConfig) -> None:
        """The items' value buckets, the match basis and the imputed profiles; the user
        tower's click profiles must be filled already."""
        items = data.entity("item").content
        edges = profile_edges(spec.item, items)
        with torch.no_grad():
            self.item_value_edges.copy_(edges)  # served items' values use the training buckets
        if self.projected:
            self._fit_basis(profile_matrix(spec.item, items, edges))
        if self.impute:
            self._fit_impute(user_tower, data, spec)

    def _fit_basis(self, values: Tensor, chunk: int = 1 << 16) -> None:
        """model.profile_match_rank: the top principal directions of the items' values (rows of
        `values`, (items, value_width)), the eigenvectors of their second-moment matrix, so
        values B B' keeps as much of each item's values as `width` directions can."""
        moment = torch.zeros(values.shape[1], values.shape[1], dtype=torch.float64)
        for start in range(0, len(values), chunk):
            part = values[start : start + chunk].double()
            moment += part.T @ part
        eigenvalues, eigenvectors = torch.linalg.eigh(moment)  # ascending
        with torch.no_grad():
            self.match_basis.copy_(eigenvectors[:, -self.width :].flip(1).float())  # (value_width, width)
        kept = float(eigenvalues[-self.width :].sum() / eigenvalues.sum().clamp(min=1e-12))
        log.info(f"profile match: {self.width} of {self.value_width} item value slots served, "
                 f"{kept:.0%} of the values' energy kept (model.profile_match_rank)")

    def _fit_impute(self, user_tower: nn.Module, data: EncodedData, spec: FeatureSpec, chunk: int = 1 << 16) -> None:
        """model.profile_impute: `impute_map[s]` = the mean clipped click profile of the users
        (rows of the users table with a train click) having user value s, each weighted by its
        share of s (a bag splits one unit over its values); 0 for a value no such user has."""
        users = data.entity("user")
        edges = profile_edges(spec.user, users.content)
        clicked = user_tower.profile_count.index_select(0, users.id_index) > 0  # (users,)
        width = self.impute_map.shape[0]
        total = torch.zeros(width, self.value_width, dtype=torch.float64)
        weight = torch.zeros(width, dtype=torch.float64)
        with torch.no_grad():
            for start in range(0, len(clicked), chunk):  # `chunk` users at a time: memory stays flat
                keep = clicked[start : start + chunk]
                content = {key: tensor[start : start + chunk][keep] for key, tensor in users.content.items()}
                part = profile_matrix(spec.user, content, edges).double()  # (k, user value width)
                profile = user_tower.profile({"id": users.id_index[start : start + chunk][keep]})  # (k, value_width)
                total += part.T @ profile.clamp(-PROFILE_MATCH_CLIP, PROFILE_MATCH_CLIP).double()
                weight += part.sum(0)
            self.user_value_edges.copy_(edges)
            self.impute_map.copy_((total / weight.clamp(min=1e-12).unsqueeze(1)).float())
        log.info(f"imputed profiles: {int(clicked.sum()):,} users with a train click, {int((weight > 0).sum()):,} of "
                 f"{width} user value slots seen (model.profile_impute {self.impute:g})")

    # ----------------------------------------------------------------------- serve

    def user(self, inputs: dict[str, Tensor], drop: Tensor | None, user_tower: nn.Module) -> Part:
        profile = inputs["profile"] if "profile" in inputs else user_tower.profile(inputs)  # (batch, value_width); 0 when cold
        profile = profile.clamp(-PROFILE_MATCH_CLIP, PROFILE_MATCH_CLIP)
        if drop is not None:
            profile = profile * (~drop).unsqueeze(1).to(profile.dtype)
        if self.projected:
            profile = profile @ self.match_basis  # (batch, width); B has orthonormal columns
        if self.impute:
            missing = user_tower.profile_count.index_select(0, inputs["id"]) == 0  # no train click
            missing = missing | drop if drop is not None else missing
            profile = torch.where(missing.unsqueeze(1), self._imputed(inputs), profile)
        profile = profile * self.weight**0.5
        return profile, self.weight * self.profile_norm2_max, profile.pow(2).sum(1, keepdim=True)

    def _imputed(self, inputs: dict[str, Tensor]) -> Tensor:
        """(batch, width): the imputed profile, predicted from user content, projected like a
        clicked profile: impute x (values @ impute_map) / groups @ B, its length capped at a
        clipped profile's largest, so the pads keep every norm equal."""
        table = self.impute_map @ self.match_basis if self.projected else self.impute_map  # (user slots, width)
        predicted = profile_projection(self.user_spec, inputs, self.user_value_edges, table) * (self.impute / self.user_value_groups)
        return predicted * (self.profile_norm2_max / predicted.pow(2).sum(1, keepdim=True).clamp(min=1e-12)).sqrt().clamp(max=1.0)

    def item(self, inputs: dict[str, Tensor], drop: Tensor | None) -> Part:
        c = self.weight**0.5
        if self.projected:
            values = profile_projection(self.item_spec, inputs, self.item_value_edges, self.match_basis) * c  # (batch, width)
        else:
            values = profile_matrix(self.item_spec, inputs, self.item_value_edges) * c  # (batch, value_width)
        return values, self.weight * self.value_groups, values.pow(2).sum(1, keepdim=True)


class PopularityPrior(nn.Module):
    """model.popularity_prior: user [c_r], item [c_r r_v], so u . v gains popularity_prior x r_v.

    r_v = `item_popularity` of the item's id row: log((clicks + 1) / (most clicks + 1)) over the
    last model.popularity_days of train, between `popularity_floor` and 0; row 0 (an item
    without a row: new or rare) holds model.new_item_prior's quantile of the known items.
    """

    key = "prior"

    @staticmethod
    def active(config: ModelConfig, user_spec: EntitySpec, item_spec: EntitySpec) -> bool:
        return bool(config.popularity_prior)

    def __init__(self, config: ModelConfig, user_spec: EntitySpec, item_spec: EntitySpec) -> None:
        super().__init__()
        self.weight = config.popularity_prior
        self.width = 1
        self.item_spec = item_spec
        self.register_buffer("item_popularity", torch.zeros(item_spec.n_ids))  # filled by fit
        self.register_buffer("popularity_floor", torch.zeros(()))  # the lowest possible r_v

    def fit(self, user_tower: nn.Module, data: EncodedData, spec: FeatureSpec, train: pl.DataFrame, config: ModelConfig) -> None:
        """`item_popularity` = log((c + 1) / (c_max + 1)) per item id row, c = the row's train
        clicks with ts in the last `popularity_days` days before the last train sample (every
        click with 0), so an item without such a click gets the floor log(1 / (c_max + 1));
        row 0 gets the `new_item_prior` quantile of the other rows, or their mean if that is
        higher: a new item is presumed as popular as a well-placed known item, never less
        than a typical one."""
        days, new_quantile = config.popularity_days, config.new_item_prior
        clicks = train.filter(pl.col("label") > 0)
        if days > 0:
            clicks = clicks.filter(pl.col("ts") > train["ts"].max() - dt.timedelta(days=days))
        rows = torch.from_numpy(id_indices(spec.item, clicks["item_id"]))  # (recent clicks,)
        counts = torch.bincount(rows, minlength=self.item_popularity.shape[0]).double()  # (item id rows,)
        c_max = float(counts[1:].max()) if len(counts) > 1 else 0.0
        values = torch.log((counts + 1.0) / (c_max + 1.0))  # (item id rows,)
        if len(values) > 1:
            known = values[1:].numpy()
            values[0] = max(float(np.quantile(known, new_quantile)), float(known.mean()))
        else:
            values[0] = 0.0
        with torch.no_grad():
            self.item_popularity.copy_(values.float())
            self.popularity_floor.fill_(-math.log(c_max + 1.0))
        span = f"the last {days:g} days" if days > 0 else "all days"
        log.info(f"popularity prior: {len(clicks):,} train clicks of {span} on {int((counts[1:] > 0).sum()):,} items "
                 f"(the most clicked: {int(c_max):,}; new items get {float(values[0]):.2f}, the {new_quantile:.0%} "
                 f"quantile of the known items or their mean, model.new_item_prior)")

    def user(self, inputs: dict[str, Tensor], drop: Tensor | None, user_tower: nn.Module) -> Part:
        batch = inputs["id"].shape[0]
        return self.item_popularity.new_full((batch, 1), self.weight**0.5), 0.0, None  # the same for every user

    def item(self, inputs: dict[str, Tensor], drop: Tensor | None) -> Part:
        prior = self.item_popularity.index_select(0, inputs["id"]).unsqueeze(1)  # (batch, 1) <= 0
        if drop is not None:  # served as a new item
            prior = torch.where(drop.unsqueeze(1), self.item_popularity[0], prior)
        prior = prior * self.weight**0.5
        return prior, self.weight * self.popularity_floor.pow(2), prior.pow(2)  # (a tensor: no host sync per batch)


TERMS: tuple[type[nn.Module], ...] = (ProfileMatch, PopularityPrior)  # in the order of their columns
# The weights `coldrec train` fits on validation (coldrec.term_weights): model config key ->
# (term key, attribute). 0 turns the part off.
FITTED = {"profile_match": ("match", "weight"), "profile_impute": ("match", "impute"), "popularity_prior": ("prior", "weight")}


class ServedTerms(nn.Module):
    """The active terms of TERMS (none for objective "dropoutnet": its vectors are regressions,
    not cosines); `apply` turns a tower output into a served vector."""

    def __init__(self, config: ModelConfig, user_spec: EntitySpec, item_spec: EntitySpec, *, enabled: bool = True) -> None:
        super().__init__()
        for term in TERMS:
            if enabled and term.active(config, user_spec, item_spec):
                self.add_module(term.key, term(config, user_spec, item_spec))
        self.width = sum(term.width for term in self.children()) + 2 if len(self) else 0  # + the two pads

    def __len__(self) -> int:
        return len(self._modules)

    def get(self, key: str) -> nn.Module | None:
        return self._modules.get(key)

    def fit(self, user_tower: nn.Module, data: EncodedData, spec: FeatureSpec, train: pl.DataFrame, config: ModelConfig) -> None:
        for term in self.children():
            term.fit(user_tower, data, spec, train, config)

    def weights(self) -> dict[str, float]:
        """{FITTED key: value} of the parts that are on."""
        values = {key: float(getattr(self.get(term), attribute, 0.0)) for key, (term, attribute) in FITTED.items()}
        return {key: value for key, value in values.items() if value > 0}

    def set_weights(self, weights: dict[str, float]) -> None:
        """Serve with these weights (keys of `weights()`; 0 turns a part off)."""
        for key, value in weights.items():
            term, attribute = FITTED[key]
            setattr(self.get(term), attribute, float(value))

    def drop_unused(self) -> None:
        """Remove the terms and tables a weight of 0 turned off, so the module is what a
        config with those weights at 0 builds (and loads)."""
        match = self.get("match")
        if match is not None and not match.impute and "impute_map" in match._buffers:
            del match._buffers["impute_map"], match._buffers["user_value_edges"]
        for key in [key for key, term in self._modules.items() if not term.weight]:
            del self._modules[key]
        self.width = sum(term.width for term in self.children()) + 2 if len(self) else 0

    def apply(self, side: str, out: Tensor, inputs: dict[str, Tensor], drop: Tensor | None, user_tower: nn.Module) -> Tensor:
        """(batch, dim) tower output -> (batch, dim + width) served vector; `drop` (batch,) bool
        marks rows served without their preference block (None: none)."""
        if not len(self):
            return out
        zero = out.new_zeros((out.shape[0], 1))
        parts, ceiling, filled = [torch.nn.functional.normalize(out, dim=1)], 0.0, zero
        for term in self.children():
            part, top, norm2 = term.user(inputs, drop, user_tower) if side == "user" else term.item(inputs, drop)
            parts.append(part)
            ceiling = ceiling + top
            if norm2 is not None:
                filled = filled + norm2
        pad = torch.sqrt((ceiling - filled).clamp(min=0.0))  # (batch, 1)
        return torch.cat([*parts, zero, pad] if side == "user" else [*parts, pad, zero], dim=1)
