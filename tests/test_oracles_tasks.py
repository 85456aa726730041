"""Independent oracles for medrobust.tasks: every expected number below is worked out by hand or
by a formula written out in the test, never by the code under test."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medrobust.config import SegLossConfig, SuccessConfig
from medrobust.errors import MedrobustError
from medrobust.tasks import (ClassificationTask, SegmentationTask, build_task, confusion_counts, hard_dice,
                             margin_from_logits, reduce_foreground, soft_logit_margin)

NAN = float("nan")

# Two samples of 2 x 4 pixels, three classes (0 = background); worked by hand below.
#   sample 0: target [0 1 1 1 | 2 2 0 0], prediction [0 1 1 0 | 2 1 1 0]
#   sample 1: target [2 2 2 0 | 0 0 0 0], prediction [2 0 0 0 | 0 0 0 1]
TARGET = torch.tensor([[[0, 1, 1, 1], [2, 2, 0, 0]], [[2, 2, 2, 0], [0, 0, 0, 0]]])
PRED = torch.tensor([[[0, 1, 1, 0], [2, 1, 1, 0]], [[2, 0, 0, 0], [0, 0, 0, 1]]])
# (TP, FP, FN) per sample and class
COUNTS = [[(2, 1, 1), (2, 2, 1), (1, 0, 1)],
          [(4, 2, 1), (0, 1, 0), (1, 0, 2)]]
DICE = [[4 / 6, 4 / 7, 2 / 3],
        [8 / 11, 0.0, 2 / 4]]


def _logits_from(pred: torch.Tensor, k: int, scale: float = 10.0) -> torch.Tensor:
    return F.one_hot(pred, k).movedim(-1, 1).float() * scale


def test_hard_dice_and_counts_on_a_hand_worked_example():
    np.testing.assert_allclose(hard_dice(PRED, TARGET, 3).numpy(), np.array(DICE), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(confusion_counts(PRED, TARGET, 3).numpy(), np.array(COUNTS, dtype=float))
    # a class absent from both prediction and ground truth is NaN; present only in one: 0
    t = torch.tensor([[[1, 1, 0, 0]]])
    p = torch.tensor([[[1, 0, 0, 0]]])
    d = hard_dice(p, t, 3)
    assert d[0, 0].item() == pytest.approx(2 * 2 / (2 * 2 + 1 + 0))  # background: TP 2, FP 1, FN 0
    assert d[0, 1].item() == pytest.approx(2 / 3)  # TP 1, FP 0, FN 1
    assert math.isnan(d[0, 2].item())
    np.testing.assert_array_equal(confusion_counts(p, t, 3)[0].numpy(), [[2, 1, 0], [1, 0, 1], [0, 0, 0]])


def test_reduce_foreground_mean_max_and_nan_rules():
    d = torch.tensor(DICE, dtype=torch.float64)
    np.testing.assert_allclose(reduce_foreground(d, "mean").numpy(), [(4 / 7 + 2 / 3) / 2, (0.0 + 0.5) / 2])
    np.testing.assert_allclose(reduce_foreground(d, "max").numpy(), [2 / 3, 0.5])
    rows = torch.tensor([[0.9, NAN, 0.3], [0.9, 0.0, NAN], [0.9, NAN, NAN], [0.2, 0.0, 0.0]], dtype=torch.float64)
    np.testing.assert_allclose(reduce_foreground(rows, "mean").numpy(), [0.3, 0.0, 1.0, 0.0])
    np.testing.assert_allclose(reduce_foreground(rows, "max").numpy(), [0.3, 0.0, 1.0, 0.0])
    # a single column is its own foreground
    np.testing.assert_allclose(reduce_foreground(torch.tensor([[0.25], [NAN]], dtype=torch.float64)).numpy(), [0.25, 1.0])


def test_task_score_success_and_success_from_dice():
    lg = _logits_from(PRED, 3)
    y = TARGET[:, None]  # (B, 1, H, W) targets too
    t = SegmentationTask(3, success_cfg=SuccessConfig(threshold=0.5, reduction="mean"))
    mean = [(4 / 7 + 2 / 3) / 2, 0.25]
    np.testing.assert_allclose(t.score(lg, y).numpy(), mean)
    np.testing.assert_allclose(t.score(lg, TARGET).numpy(), mean)
    assert t.success(lg, y).tolist() == [True, False]
    tmax = SegmentationTask(3, success_cfg=SuccessConfig(threshold=0.5, reduction="max"))
    assert tmax.success(lg, y).tolist() == [True, True]  # max Dice of sample 1 is exactly 0.5 (>= threshold)
    d = torch.tensor(DICE, dtype=torch.float64)
    assert t.success_from_dice(d).tolist() == [True, False]
    assert tmax.success_from_dice(d).tolist() == [True, True]
    assert SegmentationTask(3, success_cfg=SuccessConfig(threshold=0.51, reduction="max")).success_from_dice(d).tolist() == [True, False]
    np.testing.assert_allclose(t.class_dice(lg, y).numpy(), np.array(DICE))


def _soft_dice_oracle(logits: np.ndarray, labels: np.ndarray, k: int, include_background: bool, smooth: float) -> np.ndarray:
    """1 - mean_c (2 sum p_c g_c + s) / (sum p_c + sum g_c + s), softmax over channels, written out."""
    b = logits.shape[0]
    z = logits.reshape(b, k, -1).astype(np.float64)
    y = labels.reshape(b, -1)
    e = np.exp(z - z.max(1, keepdims=True))
    p = e / e.sum(1, keepdims=True)
    out = []
    for i in range(b):
        ds = []
        for c in range(0 if include_background else 1, k):
            g = (y[i] == c).astype(np.float64)
            ds.append((2 * (p[i, c] * g).sum() + smooth) / (p[i, c].sum() + g.sum() + smooth))
        out.append(1 - np.mean(ds))
    return np.array(out)


def _ce_oracle(logits: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    b = logits.shape[0]
    z = logits.reshape(b, k, -1).astype(np.float64)
    y = labels.reshape(b, -1)
    lse = np.log(np.exp(z).sum(1))
    zy = np.take_along_axis(z, y[:, None], 1)[:, 0]
    return (lse - zy).mean(1)


@pytest.mark.parametrize("include_background,smooth", [(False, 1e-5), (True, 1e-5), (False, 0.5)])
def test_soft_dice_loss_matches_the_formula_at_non_trivial_predictions(include_background, smooth):
    g = torch.Generator().manual_seed(3)
    k = 4
    logits = torch.randn(3, k, 5, 6, generator=g) * 2
    y = torch.randint(0, k, (3, 1, 5, 6), generator=g)
    y[1] = 0
    y[1, 0, :2, :3] = 2  # a sample with one small structure and two absent classes
    t = SegmentationTask(k, loss_cfg=SegLossConfig(include_background=include_background, smooth=smooth))
    ours = t.soft_dice_loss(logits, y).double().numpy()
    ref = _soft_dice_oracle(logits.numpy(), y.numpy(), k, include_background, smooth)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)
    assert ours.min() > 0.05  # non-trivial
    # loss = dice_weight * soft Dice loss + ce_weight * mean voxel CE, per sample
    t2 = SegmentationTask(k, loss_cfg=SegLossConfig(dice_weight=0.3, ce_weight=1.7, include_background=include_background, smooth=smooth))
    ce = _ce_oracle(logits.numpy(), y.numpy(), k)
    np.testing.assert_allclose(t2.loss(logits, y).double().numpy(), 0.3 * ref + 1.7 * ce, rtol=1e-5, atol=1e-6)
    t3 = SegmentationTask(k, loss_cfg=SegLossConfig(dice_weight=0.0, ce_weight=2.0))
    np.testing.assert_allclose(t3.loss(logits, y).double().numpy(), 2.0 * ce, rtol=1e-5, atol=1e-6)
    t4 = SegmentationTask(k, loss_cfg=SegLossConfig(dice_weight=0.5, ce_weight=0.0, include_background=include_background, smooth=smooth))
    np.testing.assert_allclose(t4.loss(logits, y).double().numpy(), 0.5 * ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(t.elementwise_ce(logits, y).double().mean(1).numpy(), ce, rtol=1e-5)


def test_soft_dice_loss_3d_and_perfect_prediction():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 3, 4, 3, 5, generator=g)
    y = torch.randint(0, 3, (2, 4, 3, 5), generator=g)
    t = SegmentationTask(3)
    np.testing.assert_allclose(t.soft_dice_loss(logits, y).double().numpy(),
                               _soft_dice_oracle(logits.numpy(), y.numpy(), 3, False, 1e-5), rtol=1e-5, atol=1e-6)
    assert float(t.soft_dice_loss(_logits_from(y, 3, 100.0), y).max()) < 1e-4


def test_margins_on_hand_worked_logits():
    z = torch.tensor([[3.0, 1.0, 2.5], [0.0, -1.0, 4.0]])
    y = torch.tensor([0, 1])
    np.testing.assert_allclose(margin_from_logits(z, y).numpy(), [3.0 - 2.5, -1.0 - 4.0])
    slm = [math.log(math.exp(1.0) + math.exp(2.5)) - 3.0, math.log(math.exp(0.0) + math.exp(4.0)) + 1.0]
    np.testing.assert_allclose(soft_logit_margin(z, y).numpy(), slm, rtol=1e-6)
    c = ClassificationTask(3)
    np.testing.assert_allclose(c.unit_margin(z, y).numpy(), [0.5, -5.0])
    # segmentation: one margin per voxel, (B, *spatial)
    zs = torch.tensor([[[[1.0, 0.0]], [[2.0, -1.0]], [[0.5, 3.0]]]])  # (1, 3, 1, 2)
    ys = torch.tensor([[[[1, 0]]]])
    m = SegmentationTask(3).unit_margin(zs, ys)
    assert m.shape == (1, 1, 2)
    np.testing.assert_allclose(m.numpy().ravel(), [2.0 - 1.0, 0.0 - 3.0])


def test_classification_contract_values():
    c = ClassificationTask(3)
    z = torch.tensor([[2.0, 0.0, 1.0], [0.0, 3.0, -1.0], [1.0, 1.5, 2.0]])
    y = torch.tensor([0, 2, 2])
    lse = np.log(np.exp(z.numpy().astype(np.float64)).sum(1))
    np.testing.assert_allclose(c.loss(z, y).numpy(), lse - np.array([2.0, -1.0, 2.0]), rtol=1e-6)
    assert c.success(z, y).tolist() == [True, False, True]
    assert c.score(z, y).tolist() == [1.0, 0.0, 1.0] and c.score(z, y).dtype == torch.float64
    assert c.predict(z).tolist() == [0, 1, 2]
    np.testing.assert_allclose(c.elementwise_ce(z, y).numpy()[:, 0], lse - np.array([2.0, -1.0, 2.0]), rtol=1e-6)
    assert c.describe() == {"kind": "classification", "num_classes": 3}
    with pytest.raises(MedrobustError, match="shape \\(B, C\\)"):
        c.check_target(torch.zeros(2, 3, 4), torch.zeros(2))
    with pytest.raises(MedrobustError, match="shape \\(B,\\)"):
        c.check_target(torch.zeros(2, 3), torch.zeros(2, 1))
    c.check_target(torch.zeros(2, 3), torch.zeros(2))
    with pytest.raises(MedrobustError, match="at least 2 classes"):
        ClassificationTask(1)
    ClassificationTask(2)


def test_reduce_plain_masked_and_class_balanced():
    t = SegmentationTask(3)
    y = torch.tensor([[0, 0, 0, 0, 0, 1, 1, 2], [0, 0, 0, 0, 0, 0, 1, 1]])
    q = torch.tensor([[1.0, 1, 1, 1, 1, 4, 6, 9], [2.0, 2, 2, 2, 2, 2, 0, 6]])
    np.testing.assert_allclose(t.reduce(q, y).numpy(), [24 / 8, 18 / 8])
    np.testing.assert_allclose(t.reduce(q, y, class_balanced=True).numpy(), [(1 + 5 + 9) / 3, (2 + 3) / 2])
    mask = torch.tensor([[1.0, 0, 0, 0, 0, 1, 0, 1], [0.0, 0, 0, 0, 0, 0, 1, 1]])
    np.testing.assert_allclose(t.reduce(q, y, mask=mask).numpy(), [14 / 3, 3.0])
    np.testing.assert_allclose(t.reduce(q, y, class_balanced=True, mask=mask).numpy(), [(1 + 4 + 9) / 3, 3.0])
    # (B, 1, H, W) targets flatten the same way
    np.testing.assert_allclose(t.reduce(q.reshape(2, 2, 4), y.reshape(2, 1, 2, 4), class_balanced=True).numpy(), [5.0, 2.5])
    c = ClassificationTask(2)
    np.testing.assert_allclose(c.reduce(torch.tensor([[3.0], [5.0]]), torch.tensor([0, 1]), class_balanced=True).numpy(), [3.0, 5.0])


def test_segmentation_checks_and_builder():
    t = SegmentationTask(3)
    ok = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    t.check_target(torch.zeros(1, 3, 4, 4), ok)
    bad = ok.clone()
    bad[0, 0, 0, 0] = 3
    with pytest.raises(MedrobustError, match="span \\[0, 3\\]"):
        t.check_target(torch.zeros(1, 3, 4, 4), bad)
    bad[0, 0, 0, 0] = -1
    with pytest.raises(MedrobustError, match="span \\[-1, 0\\]"):
        t.check_target(torch.zeros(1, 3, 4, 4), bad)
    two = ok.clone()
    two[0, 0, 1, 1] = 2
    t.check_target(torch.zeros(1, 3, 4, 4), two)
    with pytest.raises(MedrobustError, match="background plus at least one class"):
        SegmentationTask(1)
    SegmentationTask(2)
    lc, sc = SegLossConfig(dice_weight=0.2), SuccessConfig(threshold=0.3)
    b = build_task("segmentation", 4, lc, sc)
    assert isinstance(b, SegmentationTask) and b.num_classes == 4 and b.loss_cfg.dice_weight == 0.2 and b.success_cfg.threshold == 0.3
    d = b.describe()
    assert d["kind"] == "segmentation" and d["num_classes"] == 4 and d["loss"]["dice_weight"] == 0.2 and d["success"]["threshold"] == 0.3
    bc = build_task("classification", 5)
    assert isinstance(bc, ClassificationTask) and bc.num_classes == 5
    assert SegmentationTask(3).label_elements(torch.zeros(2, 1, 3, 4)).shape == (2, 12)
    assert SegmentationTask(3).label_elements(torch.zeros(2, 3, 4)).shape == (2, 12)
