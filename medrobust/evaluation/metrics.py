"""Metrics with one documented convention.

Segmentation, per sample and foreground class (see :mod:`medrobust.tasks` for the Dice rule):

- ``dice``: hard Dice; NaN when the class is absent from ground truth and prediction;
- ``iou``: ``TP / (TP + FP + FN)`` with the same NaN rule;
- ``hd95``: MONAI's 95th-percentile Hausdorff distance in **mm** (the sample's spacing); NaN when
  both masks are empty; **the image diagonal in mm** when exactly one of them is empty (a total
  miss or a pure false positive is penalised, not dropped);
- ``nsd``: MONAI's normalised surface Dice at a tolerance in mm, with the same empty rules
  (0 when exactly one is empty).

Dataset level: per-case mean (average of per-sample scores) and pooled ("voxel") Dice from TP,
FP and FN summed over all samples.

Classification: accuracy, balanced accuracy, AUC (:mod:`medrobust.training.validation`).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from medrobust.tasks import auc_score, classification_metrics, confusion_counts, hard_dice  # noqa: F401 (re-exported)


def _onehot(lbl: torch.Tensor, k: int) -> torch.Tensor:
    return F.one_hot(lbl.long(), k).movedim(-1, 1).float()


def segmentation_metrics(pred: torch.Tensor, target: torch.Tensor, num_classes: int, spacing: torch.Tensor,
                         which: set[str], nsd_tolerance: float = 1.0) -> dict[str, np.ndarray]:
    """Per-sample metrics. ``pred``, ``target``: (B, *spatial) labels; ``spacing``: (B, nd) mm.

    Returns arrays ``dice`` (B, K), ``counts`` (B, K, 3) and, if asked, ``iou``, ``hd95``,
    ``nsd`` (B, K) with column 0 (background) NaN for the distance metrics.
    """
    out: dict[str, np.ndarray] = {"dice": hard_dice(pred, target, num_classes).cpu().numpy(),
                                  "counts": confusion_counts(pred, target, num_classes).cpu().numpy()}
    if "iou" in which:
        c = out["counts"]
        den = c[..., 0] + c[..., 1] + c[..., 2]
        with np.errstate(invalid="ignore", divide="ignore"):
            out["iou"] = np.where(den > 0, c[..., 0] / np.maximum(den, 1), np.nan)
    if not ({"hd95", "nsd"} & which):
        return out
    b = pred.shape[0]
    sp = [list(map(float, s)) for s in spacing.reshape(b, -1).tolist()]
    p1, t1 = _onehot(pred.cpu(), num_classes), _onehot(target.cpu(), num_classes)
    has_p = p1.reshape(b, num_classes, -1).sum(-1)[:, 1:] > 0
    has_t = t1.reshape(b, num_classes, -1).sum(-1)[:, 1:] > 0
    one_empty = (has_p ^ has_t).numpy()
    both_empty = (~has_p & ~has_t).numpy()
    shape = pred.shape[1:]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if "hd95" in which:
            from monai.metrics import compute_hausdorff_distance

            hd = compute_hausdorff_distance(p1, t1, include_background=False, percentile=95, spacing=sp).numpy()
            diag = np.array([math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, sp_i))) for sp_i in sp])[:, None]
            hd = np.where(one_empty, np.broadcast_to(diag, hd.shape), hd)
            hd = np.where(both_empty, np.nan, hd)
            out["hd95"] = np.concatenate([np.full((b, 1), np.nan), hd], 1)
        if "nsd" in which:
            from monai.metrics import compute_surface_dice

            nsd = compute_surface_dice(p1, t1, class_thresholds=[nsd_tolerance] * (num_classes - 1), include_background=False,
                                       spacing=sp).numpy()
            nsd = np.where(one_empty, 0.0, nsd)
            nsd = np.where(both_empty, np.nan, nsd)
            out["nsd"] = np.concatenate([np.full((b, 1), np.nan), nsd], 1)
    return out


def pooled_dice(counts: np.ndarray) -> np.ndarray:
    """Pooled ("voxel") Dice per class from summed (N, K, 3) TP / FP / FN counts."""
    s = counts.sum(0)
    den = 2 * s[:, 0] + s[:, 1] + s[:, 2]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, 2 * s[:, 0] / np.maximum(den, 1), np.nan)


def nanmean_fg(values: np.ndarray, empty_value: float = float("nan")) -> np.ndarray:
    """Mean over foreground columns (1:) ignoring NaN; rows with no value get ``empty_value``."""
    fg = values[:, 1:]
    valid = ~np.isnan(fg)
    s = np.where(valid, fg, 0).sum(1)
    n = valid.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, s / np.maximum(n, 1), empty_value)


def normalised_auc(budgets: list[float], values: list[float]) -> float:
    """Trapezoidal area under metric-versus-budget from 0 to the largest budget, divided by it."""
    pts = sorted((float(b), float(v)) for b, v in zip(budgets, values) if v == v)
    if len(pts) < 2 or pts[-1][0] <= 0:
        return float("nan")
    area = sum((b2 - b1) * (v1 + v2) / 2 for (b1, v1), (b2, v2) in zip(pts, pts[1:]))
    return area / (pts[-1][0] - pts[0][0])
