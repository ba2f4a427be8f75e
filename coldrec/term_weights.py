"""The served terms' weights, fitted on the validation split at the end of `coldrec train`.

The served terms (coldrec.served) add scores of fixed weight to the towers' cosine. They are
not trained, so their weights are chosen the way a default is, on validation, once the best
epoch's weights are restored: coordinate ascent over GRID (each weight in turn takes every
value of its row, the others held; twice round), scored by training.select_on's figure,
which needs no retraining, only a re-ranking per value. A value replaces the current one only
if it beats it by MIN_GAIN (relative), so noise does not move a weight; a weight fitted to 0
turns its part off and the model is saved without it.

What validation can see: the popularity prior through the warm ranking (validation is the
next slice of time) and the content-only users; the imputed profiles through the content-only
users and validation's new users; the profile match through all three figures. Not the
new-item prior: every item of the content-only items view gets it, so it shifts no ranking;
it keeps its configured value.
"""

from __future__ import annotations

from typing import Any

import torch

from coldrec import log
from coldrec.config import TrainConfig
from coldrec.features import EncodedData
from coldrec.model import TwoTower
from coldrec.validation import ValidationSet, evaluate_for_selection, selection_metric

# Each weight's candidates, as multiples of its configured value (0 = off).
GRID = (0.0, 0.5, 1.0, 2.0)
MIN_GAIN = 0.005
ROUNDS = 2


def fit_term_weights(model: TwoTower, data: EncodedData, valid: ValidationSet, config: TrainConfig, device: torch.device, figures: dict[str, float]) -> dict[str, Any]:
    """Set model.terms' weights (and config.model's) to the validation best, starting from
    `figures`, the validation record of the model as it stands (its best epoch); returns what
    was chosen, from what, and the figures: {"weights", "configured", "metric", "before",
    "after", "metrics"} (`metrics`: every validation figure with the chosen weights)."""
    configured = model.terms.weights()
    metric = selection_metric(config.training)
    before = best = figures[metric]
    chosen = dict(configured)
    for _ in range(ROUNDS):
        moved = False
        for key, start in configured.items():
            for value in (start * factor for factor in GRID):
                if value == chosen[key]:
                    continue
                model.terms.set_weights({**chosen, key: value})
                trial = evaluate_for_selection(model, data, valid, config.training, device)
                if trial[metric] > best * (1 + MIN_GAIN):
                    best, figures, chosen[key], moved = trial[metric], trial, value, True
        if not moved:
            break
    model.terms.set_weights(chosen)
    model.terms.drop_unused()
    for key, value in chosen.items():
        setattr(config.model, key, value)
    _log(configured, chosen, metric, before, best)
    return {"weights": chosen, "configured": configured, "metric": metric, "before": before, "after": best, "metrics": figures}


def _log(configured: dict[str, float], chosen: dict[str, float], metric: str, before: float, after: float) -> None:
    if not configured:
        return
    moves = ", ".join(f"{key} {configured[key]:g}" + (f" -> {chosen[key]:g}" if chosen[key] != configured[key] else " (kept)") for key in configured)
    log.info(f"served terms fitted on validation: {moves}; {metric} {before:.4f} -> {after:.4f}")
