"""The per-sample contract: shapes in 2D and 3D, Dice conventions against MONAI, margins, success."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medrobust.config import SuccessConfig
from medrobust.tasks import ClassificationTask, SegmentationTask, hard_dice, reduce_foreground


def _logits_from(pred: torch.Tensor, k: int) -> torch.Tensor:
    return F.one_hot(pred, k).movedim(-1, 1).float() * 10


@pytest.mark.parametrize("spatial", [(16, 12), (8, 10, 6)])
def test_contract_shapes(spatial):
    t = SegmentationTask(3)
    logits = torch.randn(4, 3, *spatial, requires_grad=True)
    y = torch.randint(0, 3, (4, 1, *spatial))
    assert t.loss(logits, y).shape == (4,)
    assert t.success(logits, y).dtype == torch.bool and t.success(logits, y).shape == (4,)
    assert t.score(logits, y).shape == (4,)
    assert t.unit_margin(logits, y).shape == (4, *spatial)
    t.loss(logits, y).sum().backward()
    assert logits.grad is not None
    # values, not only shapes: loss = (1 - soft Dice over foreground) + mean CE, score = mean foreground Dice
    from test_oracles_tasks import _ce_oracle, _soft_dice_oracle

    z_np, y_np = logits.detach().numpy(), y.numpy()
    ref = _soft_dice_oracle(z_np, y_np, 3, False, 1e-5) + _ce_oracle(z_np, y_np, 3)
    torch.testing.assert_close(t.loss(logits, y).detach().double(), torch.from_numpy(ref), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(t.score(logits, y), reduce_foreground(hard_dice(logits.argmax(1), y[:, 0], 3)))
    zz = logits.detach().movedim(1, -1).reshape(-1, 3)
    yy = y.reshape(-1)
    top_other = zz.scatter(1, yy[:, None], float("-inf")).max(1).values
    torch.testing.assert_close(t.unit_margin(logits, y).detach().reshape(-1), zz.gather(1, yy[:, None])[:, 0] - top_other)
    c = ClassificationTask(5)
    z, yc = torch.randn(4, 5), torch.randint(0, 5, (4,))
    assert c.loss(z, yc).shape == c.score(z, yc).shape == c.unit_margin(z, yc).shape == (4,)
    torch.testing.assert_close(c.loss(z, yc), -torch.log_softmax(z, 1).gather(1, yc[:, None])[:, 0])
    torch.testing.assert_close(c.score(z, yc), (z.argmax(1) == yc).double())


def test_dice_matches_monai_where_ground_truth_is_present():
    from monai.metrics import DiceMetric

    g = torch.Generator().manual_seed(0)
    pred = torch.randint(0, 3, (6, 20, 20), generator=g)
    tgt = torch.randint(0, 3, (6, 20, 20), generator=g)
    ours = hard_dice(pred, tgt, 3)[:, 1:]
    m = DiceMetric(include_background=False, reduction="none", ignore_empty=True)
    ref = m(F.one_hot(pred, 3).movedim(-1, 1), F.one_hot(tgt, 3).movedim(-1, 1))
    torch.testing.assert_close(ours.float(), ref.float(), atol=1e-6, rtol=1e-6)


def test_empty_mask_convention():
    k = 3
    tgt = torch.zeros(1, 10, 10, dtype=torch.long)
    tgt[0, 2:5, 2:5] = 1  # class 2 absent from the ground truth
    pred_ok = tgt.clone()
    d = hard_dice(pred_ok, tgt, k)
    assert d[0, 1] == 1.0 and torch.isnan(d[0, 2])  # both empty -> NaN, left out of the mean
    assert reduce_foreground(d)[0] == 1.0
    pred_fp = tgt.clone()
    pred_fp[0, 8, 8] = 2  # a false positive of an absent class scores 0 (nnU-Net / MONAI ignore_empty=False)
    d2 = hard_dice(pred_fp, tgt, k)
    assert d2[0, 2] == 0.0 and reduce_foreground(d2)[0] == 0.5
    empty = torch.zeros(1, 10, 10, dtype=torch.long)
    assert reduce_foreground(hard_dice(empty, empty, k))[0] == 1.0  # nothing to find, nothing found
    t = SegmentationTask(k)
    assert t.score(_logits_from(pred_fp, k), tgt)[0] == pytest.approx(0.5)


def test_success_mean_or_max_over_foreground():
    tgt = torch.zeros(1, 10, 10, dtype=torch.long)
    tgt[0, :5, :5], tgt[0, 5:, 5:] = 1, 2
    pred = tgt.clone()
    pred[0, 5:, 5:] = 0  # class 2 completely missed: Dice (1, 0)
    lg = _logits_from(pred, 3)
    assert not SegmentationTask(3, success_cfg=SuccessConfig(threshold=0.6, reduction="mean")).success(lg, tgt)[0]
    assert SegmentationTask(3, success_cfg=SuccessConfig(threshold=0.6, reduction="max")).success(lg, tgt)[0]


def test_unit_margin_and_soft_dice():
    t = SegmentationTask(3)
    z = torch.tensor([[[2.0]], [[0.5]], [[-1.0]]])[None]  # (1, 3, 1, 1)
    y = torch.zeros(1, 1, 1, 1, dtype=torch.long)
    assert t.unit_margin(z, y).item() == pytest.approx(1.5)
    y2 = torch.full((1, 1, 1, 1), 2)
    assert t.unit_margin(z, y2).item() == pytest.approx(-3.0)
    c = ClassificationTask(3)
    assert c.unit_margin(torch.tensor([[1.0, 4.0, 2.0]]), torch.tensor([1])).item() == pytest.approx(2.0)
    perfect = _logits_from(torch.randint(0, 3, (2, 8, 8)), 3) * 10
    assert t.soft_dice_loss(perfect, perfect.argmax(1)).max() < 1e-3
    # a non-trivial prediction: one voxel, p = softmax(z) = (p0, p1, p2), truth class 1, foreground classes 1 and 2
    p = torch.softmax(z.reshape(3), 0).double()
    s = 1e-5
    d1 = (2 * p[1] + s) / (p[1] + 1 + s)
    d2 = (0 + s) / (p[2] + 0 + s)
    assert t.soft_dice_loss(z, torch.ones(1, 1, 1, 1, dtype=torch.long)).item() == pytest.approx(float(1 - (d1 + d2) / 2), rel=1e-5)


def test_class_balanced_reduce():
    t = SegmentationTask(2)
    y = torch.zeros(1, 10)
    y[0, :2] = 1
    q = torch.zeros(1, 10)
    q[0, :2] = 1.0  # quantity 1 on the two foreground elements, 0 elsewhere
    assert t.reduce(q, y.long()).item() == pytest.approx(0.2)
    assert t.reduce(q, y.long(), class_balanced=True).item() == pytest.approx(0.5)


def test_target_checks():
    from medrobust.errors import MedrobustError

    t = SegmentationTask(3)
    with pytest.raises(MedrobustError, match="set model.out_channels to 3"):
        t.check_target(torch.randn(1, 4, 8, 8), torch.zeros(1, 1, 8, 8, dtype=torch.long))
    with pytest.raises(MedrobustError, match="does not match"):
        t.check_target(torch.randn(1, 3, 8, 8), torch.zeros(1, 1, 8, 9, dtype=torch.long))
