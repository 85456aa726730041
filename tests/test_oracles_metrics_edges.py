"""Segmentation metrics (medrobust/evaluation/metrics.py) at their edges (issue #17): IoU of a single
matching voxel (TP + FP + FN = 1, IoU 1 by the formula TP / (TP + FP + FN)), the 95th percentile of
HD95 on a spread of surface distances (numpy's linear interpolation worked out by hand), and the
distance-metric machinery (one-hot masks, spacing) left alone when only Dice / IoU are asked for."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import medrobust.evaluation.metrics as metrics


def test_iou_of_one_matching_voxel_is_one():
    pred = torch.zeros(2, 3, 3, dtype=torch.long)
    tgt = torch.zeros(2, 3, 3, dtype=torch.long)
    pred[0, 1, 1] = tgt[0, 1, 1] = 1  # sample 0: TP 1, FP 0, FN 0 -> 1 / 1
    pred[1, 0, 0] = 1  # sample 1: TP 0, FP 1, FN 1 -> 0 / 2
    tgt[1, 2, 2] = 1
    m = metrics.segmentation_metrics(pred, tgt, 2, torch.ones(2, 2), {"iou"})
    np.testing.assert_array_equal(m["counts"][:, 1], [[1, 0, 0], [0, 1, 1]])
    assert m["iou"][0, 1] == pytest.approx(1.0) and m["iou"][1, 1] == 0.0
    assert m["dice"][0, 1] == pytest.approx(1.0) and m["dice"][1, 1] == 0.0
    # background: 8 of 9 voxels agree in sample 0 -> 8 / 8; sample 1: TP 7, FP 1, FN 1 -> 7 / 9
    np.testing.assert_allclose(m["iou"][:, 0], [1.0, 7 / 9])


def test_dice_and_iou_alone_build_no_one_hot_masks(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("one-hot masks built although no distance metric was asked for")

    monkeypatch.setattr(metrics, "_onehot", boom)
    pred = torch.tensor([[[0, 1], [1, 1]]])
    m = metrics.segmentation_metrics(pred, pred, 2, torch.ones(1, 2), {"iou"})
    assert set(m) == {"dice", "counts", "iou"}
    assert set(metrics.segmentation_metrics(pred, pred, 2, torch.ones(1, 2), set())) == {"dice", "counts"}
    with pytest.raises(AssertionError, match="one-hot"):
        metrics.segmentation_metrics(pred, pred, 2, torch.ones(1, 2), {"nsd"})


def test_hd95_is_the_95th_percentile_of_the_surface_distances():
    # target: one voxel; prediction: a one-voxel-thick line of 20 voxels at distances 1 .. 20 from it,
    # every one of them a surface voxel. Prediction -> target distances 1 .. 20: the 95th percentile with
    # linear interpolation sits at position 0.95 * 19 = 18.05 -> 19 + 0.05 * (20 - 19) = 19.05;
    # target -> prediction: 1. HD95 is the larger.
    tgt = torch.zeros(1, 3, 25, dtype=torch.long)
    pred = torch.zeros(1, 3, 25, dtype=torch.long)
    tgt[0, 1, 0] = 1
    pred[0, 1, 1:21] = 1
    m = metrics.segmentation_metrics(pred, tgt, 2, torch.ones(1, 2), {"hd95"})
    assert m["hd95"][0, 1] == pytest.approx(19.05, abs=1e-4)
    # 0.5 mm along the line: every distance halves
    m2 = metrics.segmentation_metrics(pred, tgt, 2, torch.tensor([[1.0, 0.5]]), {"hd95"})
    assert m2["hd95"][0, 1] == pytest.approx(19.05 / 2, abs=1e-4)


def test_single_voxel_masks_are_not_empty():
    # one predicted voxel 3 voxels from one target voxel: HD95 3 mm, NSD 0 at 1 mm and 1 at 3.5 mm
    tgt = torch.zeros(1, 5, 7, dtype=torch.long)
    pred = torch.zeros(1, 5, 7, dtype=torch.long)
    tgt[0, 2, 1] = 1
    pred[0, 2, 4] = 1
    m = metrics.segmentation_metrics(pred, tgt, 2, torch.ones(1, 2), {"hd95", "nsd"})
    assert m["hd95"][0, 1] == pytest.approx(3.0) and m["nsd"][0, 1] == pytest.approx(0.0)
    m2 = metrics.segmentation_metrics(pred, tgt, 2, torch.ones(1, 2), {"nsd"}, nsd_tolerance=3.5)
    assert m2["nsd"][0, 1] == pytest.approx(1.0)
