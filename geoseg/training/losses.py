"""Training losses that torchgeo does not have: cross-entropy for set-valued labels.

Imported only by training (it imports torch at the top).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from geoseg.training.label_sets import IGNORE_INDEX, LabelSets


class SetCrossEntropy(torch.nn.Module):
    """Cross-entropy where a label may be a set of classes: ``-log sum_{k in S} p_k``.

    Codes ``0..K-1`` are single classes (the loss is then plain cross-entropy), codes ``K..``
    are the sets of ``label_sets``, :data:`IGNORE_INDEX` is skipped. With ``weights`` (one per
    code) the mean is weighted as :class:`torch.nn.CrossEntropyLoss` weights it: the sum of
    weighted pixel losses over the sum of the weights.
    """

    def __init__(self, label_sets: LabelSets, weights: Sequence[float] | None = None) -> None:
        super().__init__()
        # Not persistent: the config, not a checkpoint, says what the labels and weights are.
        membership = torch.from_numpy(label_sets.membership())
        self.register_buffer("membership", membership, persistent=False)
        codes = label_sets.num_codes
        if weights is not None and len(weights) != codes:
            raise ValueError(f"{len(weights)} weights for {codes} label codes")
        w = torch.tensor(list(weights) if weights is not None else [1.0] * codes)
        self.register_buffer("weights", w.float(), persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean loss over labelled pixels; ``logits`` ``(N, K, H, W)``, ``target`` ``(N, H, W)``."""
        membership: torch.Tensor = self.membership  # type: ignore[assignment]
        weights: torch.Tensor = self.weights  # type: ignore[assignment]
        valid = (target != IGNORE_INDEX) & (target >= 0) & (target < membership.shape[0])
        codes = torch.where(valid, target, torch.zeros_like(target))
        allowed = membership[codes].permute(0, 3, 1, 2)  # (N, K, H, W)
        logits = logits.float()
        everything = torch.logsumexp(logits, dim=1)
        members = torch.logsumexp(logits.masked_fill(~allowed, float("-inf")), dim=1)
        w = weights[codes] * valid
        total = w.sum()
        if total == 0:
            return logits.sum() * 0.0
        return ((everything - members) * w).sum() / total
