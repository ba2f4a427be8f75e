"""What one epoch trains on: every click, and a sample of the exposures that were not clicked.

In real logs 95-99% of exposures are not clicked. They feed only the pointwise (and pairwise)
loss, and the in-batch softmax pool as hard negatives; the softmax, the loss that drives
retrieval, anchors on the clicked rows alone. So an epoch is made to follow the clicks:

- every positive sample (label > 0) once, in a random order;
- k = min(round(training.negative_rate x positives), negatives) of the exposed-not-clicked
  samples, drawn without replacement afresh each epoch, shuffled in among them.

**The estimator.** A drawn negative carries the importance weight negatives / k, the
inverse of its inclusion probability, multiplied into its sample weight. The pointwise loss
of a batch is sum(weight x loss) / batch, so over an epoch the expected total of the
pointwise losses is that of an epoch over every exposure, in fewer steps: the sampled epoch
is an unbiased estimate of the full one (tests/test_batches.py checks it against the full
loss). The positives keep their own weights, so the softmax is unchanged.

**Log-Q.** The in-batch softmax corrects each item's logit by the log of its probability of
being in the batch; with sampled negatives that is (its clicks + k / negatives x its
non-clicked exposures) / (positives + k).

With k equal to every negative (a rate at or above negatives / positives) an epoch is every
sample once, exactly as before sampling existed (the same order for the same seed).
"""

from __future__ import annotations

import torch
from torch import Tensor


class EpochSampler:
    """The rows of each epoch and their importance weights; `len()` rows per epoch."""

    def __init__(self, label: Tensor, negative_rate: float) -> None:
        label = label.cpu()
        self.n = len(label)
        self.positives = torch.nonzero(label > 0).squeeze(1)  # (P,)
        self.negatives = torch.nonzero(label <= 0).squeeze(1)  # (N,)
        self.k = min(int(round(negative_rate * len(self.positives))), len(self.negatives))
        self.every_row = self.k == len(self.negatives)  # no sampling: every sample, each epoch
        self.negative_weight = len(self.negatives) / self.k if self.k else 0.0

    def __len__(self) -> int:
        return len(self.positives) + self.k

    @property
    def positive_share(self) -> float:
        """The clicked share of an epoch's rows."""
        return len(self.positives) / max(len(self), 1)

    def describe(self) -> str:
        if self.every_row:
            return f"every sample each epoch ({len(self.positives):,} positives, {len(self.negatives):,} negatives)"
        return (f"each epoch: {len(self.positives):,} positives + {self.k:,} of {len(self.negatives):,} negatives "
                f"(training.negative_rate), each negative weighted x{self.negative_weight:.2f}")

    def rows(self, generator: torch.Generator) -> tuple[Tensor, Tensor | None]:
        """-> (the epoch's sample rows (len,) in training order, their importance weights
        (len,), or None when every row is taken: weight 1)."""
        if self.every_row:
            return torch.randperm(self.n, generator=generator), None
        drawn = self.negatives[torch.randperm(len(self.negatives), generator=generator)[: self.k]]  # (k,)
        rows = torch.cat([self.positives, drawn])
        importance = torch.cat([torch.ones(len(self.positives)), torch.full((self.k,), self.negative_weight)])
        order = torch.randperm(len(rows), generator=generator)
        return rows[order], importance[order]

    def item_log_q(self, item_row: Tensor, n_items: int) -> Tensor:
        """(items,) log of each item's expected share of an epoch's rows (the in-batch
        sampling probability of the log-Q correction)."""
        item_row = item_row.cpu()
        if self.every_row:  # every sample once: its plain share
            counts = torch.bincount(item_row, minlength=n_items).float().clamp(min=1.0)  # (items,)
            return torch.log(counts / max(len(item_row), 1))
        positive = torch.bincount(item_row[self.positives], minlength=n_items).float()
        negative = torch.bincount(item_row[self.negatives], minlength=n_items).float()
        expected = (positive + negative * (self.k / len(self.negatives))).clamp(min=1e-6)  # (items,)
        return torch.log(expected / max(len(self), 1))
