"""Training losses that torchgeo does not have: cross-entropy and Dice for set-valued labels.

Imported only by training (it imports torch at the top).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from geoseg.training.label_sets import IGNORE_INDEX, LabelSets


def _allowed_classes(
    membership: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(valid, codes, allowed)`` of a ``(N, H, W)`` target of label codes.

    ``valid``: pixels with a known code (not :data:`IGNORE_INDEX`); ``codes``: the target with
    invalid pixels set to 0; ``allowed``: ``(N, K, H, W)``, the classes each pixel's code allows.
    """
    valid = (target != IGNORE_INDEX) & (target >= 0) & (target < membership.shape[0])
    codes = torch.where(valid, target, torch.zeros_like(target))
    return valid, codes, membership[codes].permute(0, 3, 1, 2)


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
        valid, codes, allowed = _allowed_classes(membership, target)
        logits = logits.float()
        everything = torch.logsumexp(logits, dim=1)
        members = torch.logsumexp(logits.masked_fill(~allowed, float("-inf")), dim=1)
        w = weights[codes] * valid
        total = w.sum()
        if total == 0:
            return logits.sum() * 0.0
        return ((everything - members) * w).sum() / total


class SetDice(torch.nn.Module):
    """Soft Dice loss where a label may be a set of classes, as smp's multiclass ``DiceLoss``.

    A single-class pixel's target is its class; a set pixel's target is the member the network
    ranks first (held fixed, no gradient), which is how scoring counts a set pixel
    (:meth:`LabelSets.resolve`): right when the prediction is any member. Sums run over the whole
    batch; the loss is the mean over classes of ``1 - Dice``, with classes absent from the
    batch's targets counted as 0, and :data:`IGNORE_INDEX` pixels skipped, all as in
    ``segmentation_models_pytorch.losses.DiceLoss(mode="multiclass")``, which this equals on
    labels without sets.
    """

    def __init__(self, label_sets: LabelSets, smooth: float = 0.0, eps: float = 1e-7) -> None:
        super().__init__()
        membership = torch.from_numpy(label_sets.membership())
        self.register_buffer("membership", membership, persistent=False)
        self.smooth, self.eps = float(smooth), float(eps)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss over labelled pixels; ``logits`` ``(N, K, H, W)``, ``target`` ``(N, H, W)``."""
        membership: torch.Tensor = self.membership  # type: ignore[assignment]
        valid, _, allowed = _allowed_classes(membership, target)
        logits = logits.float()
        pick = logits.detach().masked_fill(~allowed, float("-inf")).argmax(dim=1)
        mask = valid.unsqueeze(1).to(logits.dtype)
        truth = torch.nn.functional.one_hot(pick, logits.shape[1]).permute(0, 3, 1, 2) * mask
        probs = torch.softmax(logits, dim=1) * mask
        dims = (0, 2, 3)
        overlap = (probs * truth).sum(dims)
        size = probs.sum(dims) + truth.sum(dims)
        dice = (2 * overlap + self.smooth) / (size + self.smooth).clamp_min(self.eps)
        present = (truth.sum(dims) > 0).to(dice.dtype)
        return ((1 - dice) * present).mean()


class SetCrossEntropyDice(torch.nn.Module):
    """:class:`SetCrossEntropy` (weighted) plus :class:`SetDice`: the ``ce+dice`` loss for sets."""

    def __init__(self, label_sets: LabelSets, weights: Sequence[float] | None = None) -> None:
        super().__init__()
        self.ce = SetCrossEntropy(label_sets, weights)
        self.dice = SetDice(label_sets)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The sum of the two losses."""
        return self.ce(logits, target) + self.dice(logits, target)  # type: ignore[no-any-return]
