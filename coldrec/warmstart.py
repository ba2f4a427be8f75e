"""Warm start (`coldrec train --init-from`): yesterday's model grown by today's data.

`extend_spec` keeps every known id and value at its index and appends the new ones;
`transfer_weights` copies what carries over into the freshly built model.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from coldrec.errors import WrongDtype
from coldrec.features import FeatureSpec
from coldrec.model import LoadedModel, TwoTower


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
