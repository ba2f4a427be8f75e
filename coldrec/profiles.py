"""Click profiles: the part of a tower's preference block counted from the train clicks.

model.user_profile: per user id row, the sum of the profile rows (`features.profile_matrix`:
each content column's values, summing to 1) of the items the user clicked in train, and the
count of those clicks; model.item_profile likewise per item over its clickers. The tower
turns them into log lifts over the global click shares (`Tower.profile`). They are buffers
of the towers, filled here once before training and saved with the weights.

In training every positive sample's own click is taken out of both profiles
(`leave_one_out`), so a profile never contains the click it is scored against.
"""

from __future__ import annotations

import torch
from torch import Tensor

from coldrec import log
from coldrec.features import EncodedData, FeatureSpec, profile_edges, profile_matrix
from coldrec.model import TwoTower


def fill_click_profiles(model: TwoTower, data: EncodedData, spec: FeatureSpec, chunk: int = 1 << 16) -> dict[str, Tensor]:
    """Sum the profile rows of the other side over every entity's train clicks into its
    tower's buffers (per id row; the cold row 0 stays empty).

    -> side -> (other side's entities, width): what a click adds, for `leave_one_out`.
    Clicks are added `chunk` at a time, so the peak memory does not grow with the clicks.
    """
    samples = data.splits["train"]
    clicked = samples.label > 0
    rows = {"user": samples.user_row[clicked], "item": samples.item_row[clicked]}  # (clicks,) each
    out = {}
    for side, other in (("user", "item"), ("item", "user")):
        tower = model.user if side == "user" else model.item
        if not tower.profile_width:
            continue
        content = data.entity(other).content
        per_entity = profile_matrix(spec.side(other), content, profile_edges(spec.side(other), content))  # (others, width)
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
    return out


def leave_one_out(profiles: dict[str, Tensor], user_inputs: dict, item_inputs: dict, user_row: Tensor, item_row: Tensor, label: Tensor) -> None:
    """Take each positive sample's own click out of its user's and item's profiles (ids
    without a row have an empty profile: nothing to take out)."""
    for side, inputs, other_row in (("user", user_inputs, item_row), ("item", item_inputs, user_row)):
        if side in profiles:
            counted = ((label > 0) & (inputs["id"] > 0)).float()  # (batch,)
            inputs["profile_minus"] = profiles[side].index_select(0, other_row) * counted.unsqueeze(1)
            inputs["profile_count_minus"] = counted
