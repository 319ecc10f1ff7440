"""Set-valued labels: codes, scoring against predictions, merged (coarse) confusion matrices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geoseg.training.label_sets import LabelSets, merge_confusion, with_sets
from geoseg.training.losses import SetCrossEntropy, SetCrossEntropyDice, SetDice

NAMES = ["building", "road", "water", "tree", "low_vegetation", "bare_land"]


def test_codes_follow_the_legend_then_the_sets():
    sets = with_sets(6, [[0], [4, 3], [3, 4], [1, 2]])
    assert sets.sets == ((3, 4), (1, 2))  # deduplicated, sorted, in order of first use
    assert sets.num_codes == 8
    assert sets.code_for([2]) == 2 and sets.code_for([4, 3]) == 6 and sets.code_for([2, 1]) == 7
    assert sets.members(6) == (3, 4) and sets.members(0) == (0,)
    table = sets.membership()
    assert table.shape == (8, 6)
    assert table[6].tolist() == [False, False, False, True, True, False]
    assert table[:6].sum() == 6 and np.all(np.diag(table[:6]))
    with pytest.raises(ValueError, match="two or more"):
        LabelSets(6, ((3,),))


def test_a_set_pixel_is_right_when_the_prediction_is_a_member():
    sets = LabelSets(6, ((3, 4),))
    truth = np.array([6, 6, 6, 2, 255], dtype=np.uint8)
    pred = np.array([3, 4, 5, 2, 1], dtype=np.uint8)
    # tree and low vegetation both satisfy "vegetation"; bare land does not (counted as tree,
    # the set's first member, so it is an error either way); single labels and ignore unchanged
    assert sets.resolve(truth, pred).tolist() == [3, 4, 3, 2, 255]


def test_merged_confusion_sums_rows_and_columns():
    cm = np.arange(36, dtype=np.int64).reshape(6, 6)
    merged, names = merge_confusion(cm, NAMES, {"vegetation": ["tree", "low_vegetation"]})
    assert names == ["building", "road", "water", "vegetation", "bare_land"]
    assert merged.sum() == cm.sum()
    assert merged[3, 3] == cm[3:5, 3:5].sum()
    assert merged[0, 3] == cm[0, 3] + cm[0, 4]
    assert merged[4, 4] == cm[5, 5]
    with pytest.raises(ValueError, match="cannot merge 'grass'"):
        merge_confusion(cm, NAMES, {"vegetation": ["tree", "grass"]})


def test_set_cross_entropy_is_minus_log_of_the_members_probability():
    torch.manual_seed(0)
    sets = LabelSets(3, ((1, 2),))
    logits = torch.randn(2, 3, 4, 5, requires_grad=True)
    target = torch.randint(0, 4, (2, 4, 5))
    target[0, 0, 0] = 255
    loss = SetCrossEntropy(sets)(logits, target)
    p = logits.softmax(dim=1)
    member = torch.stack([p[:, 0], p[:, 1], p[:, 2], p[:, 1] + p[:, 2]], dim=1)
    valid = target != 255
    picked = member.gather(1, target.clamp(max=3)[:, None])[:, 0]
    expected = -(picked.log()[valid]).mean()
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert logits.grad is not None
    assert torch.all(logits.grad[0, :, 0, 0] == 0)  # the ignored pixel
    assert logits.grad.abs().sum() > 0


def test_set_cross_entropy_equals_weighted_cross_entropy_on_single_labels():
    torch.manual_seed(1)
    weights = [0.5, 2.0, 1.0]
    logits = torch.randn(3, 3, 6, 6)
    target = torch.randint(0, 3, (3, 6, 6))
    target[1, 2:4] = 255
    ours = SetCrossEntropy(LabelSets(3), weights)(logits, target)
    ce = torch.nn.CrossEntropyLoss(weight=torch.tensor(weights), ignore_index=255)
    torch.testing.assert_close(ours, ce(logits, target))
    all_ignored = torch.full((1, 6, 6), 255)
    assert SetCrossEntropy(LabelSets(3))(logits[:1], all_ignored).item() == 0.0


def test_set_dice_equals_smp_dice_on_single_labels():
    smp = pytest.importorskip("segmentation_models_pytorch")
    torch.manual_seed(2)
    logits = torch.randn(3, 4, 6, 6)
    target = torch.randint(0, 3, (3, 6, 6))  # class 3 is absent: it counts 0 in the mean
    target[0, :2] = 255
    reference = smp.losses.DiceLoss(mode="multiclass", ignore_index=255)
    torch.testing.assert_close(SetDice(LabelSets(4))(logits, target), reference(logits, target))


def test_set_dice_scores_a_set_pixel_as_its_top_member():
    sets = LabelSets(3, ((1, 2),))
    # confident predictions: class 0, then class 2 and class 1 on pixels labelled "1 or 2"
    logits = torch.full((1, 3, 1, 3), -20.0)
    logits[0, 0, 0, 0] = logits[0, 2, 0, 1] = logits[0, 1, 0, 2] = 20.0
    as_set = torch.tensor([[[0, 3, 3]]])
    as_members = torch.tensor([[[0, 2, 1]]])
    loss = SetDice(sets)(logits, as_set)
    torch.testing.assert_close(loss, SetDice(sets)(logits, as_members))
    assert loss.item() < 1e-6  # every pixel right: no loss
    # a set pixel predicted outside the set is an error
    logits[0, :, 0, 1] = torch.tensor([20.0, -20.0, -20.0])
    assert SetDice(sets)(logits, as_set).item() > 0.1


def test_set_cross_entropy_dice_is_the_sum_and_skips_ignored_pixels():
    torch.manual_seed(3)
    sets = LabelSets(3, ((1, 2),))
    weights = [1.0, 2.0, 0.5, 1.5]
    logits = torch.randn(2, 3, 5, 5, requires_grad=True)
    target = torch.randint(0, 4, (2, 5, 5))
    target[:, :2] = 255
    loss = SetCrossEntropyDice(sets, weights)(logits, target)
    expected = SetCrossEntropy(sets, weights)(logits, target) + SetDice(sets)(logits, target)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert logits.grad is not None
    assert torch.all(logits.grad[:, :, :2] == 0) and torch.any(logits.grad[:, :, 2:] != 0)
