"""The per-sample contract shared by attacks, trainers and margin estimators.

Classification and segmentation differ only in the functions below. Everything else in
medrobust is written once against them, for 2D and 3D inputs alike:

- ``loss(logits, target) -> [B]``: per-sample loss (segmentation: soft Dice + CE per sample);
- ``success(logits, target) -> bool [B]``: is the sample still "correct"?
  (classification: argmax equals the label; segmentation: Dice >= threshold, mean or max over
  the foreground classes);
- ``score(logits, target) -> [B]``: the reported metric (accuracy 0/1, or mean foreground Dice);
- ``unit_margin(logits, target) -> [B]`` or ``[B, *spatial]``: the logit margin
  ``z_y - max_{j != y} z_j`` per sample (classification) or per voxel (segmentation).

Shapes: ``logits`` is ``(B, C, *spatial)`` (segmentation, softmax over C) or ``(B, C)``
(classification). Segmentation targets may be ``(B, 1, *spatial)`` or ``(B, *spatial)``
integer masks; classification targets are ``(B,)`` integers.

**Empty-mask convention (hard Dice).** Per sample and class, ``Dice = 2 TP / (2 TP + FP + FN)``.
A class absent from both the ground truth and the prediction is undefined (NaN) and left out of
the mean over classes; a class absent from the ground truth but predicted scores 0. A sample
where every foreground class is undefined (empty ground truth, empty prediction) scores 1.
Where the ground truth holds the class this equals MONAI's ``DiceMetric``; for an empty
ground truth it follows nnU-Net (NaN if nothing is predicted, 0 for false positives), so that an
attack that paints false positives on an empty slice is penalised.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from medrobust.errors import ConfigError, DataError
from medrobust.schema import SegLossConfig, SuccessConfig


def margin_from_logits(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``z_y - max_{j != y} z_j`` along dim 1. ``z``: (B, C, ...), ``y``: (B, ...) long."""
    zy = z.gather(1, y.unsqueeze(1)).squeeze(1)
    other = z.scatter(1, y.unsqueeze(1), float("-inf")).amax(dim=1)
    return zy - other


def soft_logit_margin(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """IMA's 'slm' attack loss: ``logsumexp_{j != y} z_j - z_y`` (larger = more wrong)."""
    zy = z.gather(1, y.unsqueeze(1)).squeeze(1)
    other = torch.logsumexp(z.scatter(1, y.unsqueeze(1), float("-inf")), dim=1)
    return other - zy


def hard_dice(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-sample, per-class hard Dice with the module's empty-mask convention.

    ``pred``, ``target``: (B, *spatial) integer label maps. Returns (B, num_classes) with NaN
    where the class is absent from both.
    """
    # not MONAI's compute_dice: false positives on an empty ground truth score NaN there (ignore_empty) or empty/empty 1
    b = pred.shape[0]
    p = pred.reshape(b, -1)
    t = target.reshape(b, -1)
    out = torch.empty(b, num_classes, dtype=torch.float64, device=pred.device)
    for c in range(num_classes):
        pc, tc = p == c, t == c
        tp = (pc & tc).sum(1).double()
        fp = (pc & ~tc).sum(1).double()
        fn = (~pc & tc).sum(1).double()
        den = 2 * tp + fp + fn
        out[:, c] = torch.where(den > 0, 2 * tp / den.clamp_min(1), torch.full_like(den, float("nan")))
    return out


def confusion_counts(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, num_classes, 3) TP / FP / FN counts per sample and class (for pooled Dice)."""
    # not MONAI's get_confusion_matrix: it counts in float32 (inexact above 2^24 voxels) from full one-hot copies
    b = pred.shape[0]
    p, t = pred.reshape(b, -1), target.reshape(b, -1)
    out = torch.empty(b, num_classes, 3, dtype=torch.float64, device=pred.device)
    for c in range(num_classes):
        pc, tc = p == c, t == c
        out[:, c, 0] = (pc & tc).sum(1)
        out[:, c, 1] = (pc & ~tc).sum(1)
        out[:, c, 2] = (~pc & tc).sum(1)
    return out


def reduce_foreground(dice: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Mean (or max) over foreground classes ignoring NaN; all-NaN rows score 1."""
    fg = dice[:, 1:] if dice.shape[1] > 1 else dice
    valid = ~torch.isnan(fg)
    if reduction == "max":
        filled = torch.where(valid, fg, torch.full_like(fg, -1.0))
        out = filled.amax(dim=1)
    else:
        out = torch.where(valid, fg, torch.zeros_like(fg)).sum(1) / valid.sum(1).clamp_min(1)
    return torch.where(valid.any(1), out, torch.ones_like(out))


class Task:
    """Base class of the per-sample contract (see the module docstring)."""

    kind: str = ""
    num_classes: int = 0

    # --- the contract -------------------------------------------------------------------
    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def success(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def score(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def unit_margin(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        z, y = self.elements(logits, target)
        m = margin_from_logits(z, y)
        return m.reshape(self._unit_shape(logits))

    # --- helpers shared by attacks and methods --------------------------------------------
    def elements(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Flatten to per-element form: logits ``(B, C, N)`` and labels ``(B, N)`` (N = 1 for classifiers)."""
        raise NotImplementedError

    def _unit_shape(self, logits: torch.Tensor) -> tuple[int, ...]:
        raise NotImplementedError

    def reduce(self, per_elem: torch.Tensor, target: torch.Tensor, class_balanced: bool = False,
               mask: torch.Tensor | None = None) -> torch.Tensor:
        """Average a per-element quantity ``(B, N)`` to ``(B,)``.

        ``class_balanced``: mean within each ground-truth class present in the sample, then over
        those classes (so background does not swamp small structures). ``mask``: (B, N) weights.
        """
        b = per_elem.shape[0]
        q = per_elem.reshape(b, -1)
        w = torch.ones_like(q) if mask is None else mask.reshape(b, -1).to(q.dtype)
        if not class_balanced or q.shape[1] == 1:
            return (q * w).sum(1) / w.sum(1).clamp_min(1e-12)
        y = self.label_elements(target)
        total = torch.zeros(b, dtype=q.dtype, device=q.device)
        n_present = torch.zeros(b, dtype=q.dtype, device=q.device)
        for c in range(self.num_classes):
            wc = w * (y == c).to(q.dtype)
            cnt = wc.sum(1)
            present = cnt > 0
            total = total + torch.where(present, (q * wc).sum(1) / cnt.clamp_min(1e-12), torch.zeros_like(cnt))
            n_present = n_present + present.to(q.dtype)
        return total / n_present.clamp_min(1)

    def label_elements(self, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        """Hard predictions: ``(B,)`` classes or ``(B, *spatial)`` label maps."""
        return logits.argmax(dim=1)

    def elementwise_ce(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-element cross-entropy ``(B, N)``."""
        z, y = self.elements(logits, target)
        return F.cross_entropy(z, y, reduction="none")

    def check_target(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        pass

    def describe(self) -> dict:
        return {"kind": self.kind, "num_classes": self.num_classes}


class ClassificationTask(Task):
    """Softmax classification: ``logits (B, C)``, ``target (B,)``."""

    kind = "classification"

    def __init__(self, num_classes: int) -> None:
        if num_classes < 2:
            raise DataError(f"classification needs at least 2 classes, got {num_classes}; check the label map.")
        self.num_classes = int(num_classes)

    def elements(self, logits, target):
        return logits.unsqueeze(-1), target.reshape(-1, 1).long()

    def label_elements(self, target):
        return target.reshape(-1, 1).long()

    def _unit_shape(self, logits):
        return (logits.shape[0],)

    def loss(self, logits, target):
        return F.cross_entropy(logits, target.long(), reduction="none")

    def success(self, logits, target):
        return logits.argmax(1) == target.long()

    def score(self, logits, target):
        return self.success(logits, target).double()

    def check_target(self, logits, target):
        if logits.ndim != 2:
            raise ConfigError(f"a classifier must return logits of shape (B, C), got {tuple(logits.shape)}; use a classification model.")
        if target.ndim != 1:
            raise DataError(f"classification targets must have shape (B,), got {tuple(target.shape)}; give one integer class label per sample.")


@dataclass
class SegmentationTask(Task):
    """Softmax segmentation: ``logits (B, C, *spatial)``, ``target (B[, 1], *spatial)``.

    Args:
        num_classes: including background (label 0).
        loss_cfg: weights of soft Dice and CE, background in the Dice or not.
        success_cfg: Dice threshold and mean / max over foreground classes for ``success``.
    """

    num_classes: int
    loss_cfg: SegLossConfig = None  # type: ignore[assignment]
    success_cfg: SuccessConfig = None  # type: ignore[assignment]
    kind: str = "segmentation"

    def __post_init__(self) -> None:
        if self.num_classes < 2:
            raise DataError(f"segmentation needs background plus at least one class, got {self.num_classes} classes; check the label map.")
        self.loss_cfg = self.loss_cfg or SegLossConfig()
        self.success_cfg = self.success_cfg or SuccessConfig()

    def _labels(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        t = target.long()
        if t.ndim == logits.ndim:
            t = t[:, 0]
        return t

    def label_elements(self, target):
        t = target.long()
        if t.ndim >= 3 and t.shape[1] == 1:
            t = t[:, 0]
        return t.reshape(t.shape[0], -1)

    def elements(self, logits, target):
        b, c = logits.shape[:2]
        return logits.reshape(b, c, -1), self._labels(logits, target).reshape(b, -1)

    def _unit_shape(self, logits):
        return (logits.shape[0], *logits.shape[2:])

    def soft_dice_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # MONAI's DiceLoss(reduction="none") agrees only to rounding (~6e-8, not bit for bit), which would move attacks
        z, y = self.elements(logits, target)
        p = torch.softmax(z.float(), dim=1)
        g = F.one_hot(y, self.num_classes).permute(0, 2, 1).to(p.dtype)
        if not self.loss_cfg.include_background:
            p, g = p[:, 1:], g[:, 1:]
        inter = (p * g).sum(-1)
        den = p.sum(-1) + g.sum(-1)
        s = self.loss_cfg.smooth
        dice = (2 * inter + s) / (den + s)
        return 1.0 - dice.mean(1)

    def loss(self, logits, target):
        out = torch.zeros(logits.shape[0], device=logits.device, dtype=torch.float32)
        if self.loss_cfg.dice_weight:
            out = out + self.loss_cfg.dice_weight * self.soft_dice_loss(logits, target)
        if self.loss_cfg.ce_weight:
            out = out + self.loss_cfg.ce_weight * self.elementwise_ce(logits, target).mean(1)
        return out

    def class_dice(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return hard_dice(self.predict(logits), self._labels(logits, target), self.num_classes)

    def score(self, logits, target):
        return reduce_foreground(self.class_dice(logits, target), "mean")

    def success(self, logits, target):
        d = reduce_foreground(self.class_dice(logits, target), self.success_cfg.reduction)
        return d >= self.success_cfg.threshold

    def success_from_dice(self, dice: torch.Tensor) -> torch.Tensor:
        return reduce_foreground(dice, self.success_cfg.reduction) >= self.success_cfg.threshold

    def check_target(self, logits, target):
        t = self._labels(logits, target)
        if tuple(t.shape) != (logits.shape[0], *logits.shape[2:]):
            raise DataError(f"segmentation target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}; "
                            f"targets must be (B, 1, *spatial) masks on the same grid.")
        if logits.shape[1] != self.num_classes:
            raise ConfigError(f"the model returns {logits.shape[1]} channels but the label map has {self.num_classes} classes; "
                              f"set model.out_channels to {self.num_classes}.")
        if int(t.max()) >= self.num_classes or int(t.min()) < 0:
            raise DataError(f"target labels span [{int(t.min())}, {int(t.max())}] but the model has {self.num_classes} classes; fix the labels or the label map.")

    def describe(self) -> dict:
        return {"kind": self.kind, "num_classes": self.num_classes, "loss": self.loss_cfg.model_dump(),
                "success": self.success_cfg.model_dump()}


def build_task(kind: Literal["segmentation", "classification"], num_classes: int,
               loss_cfg: SegLossConfig | None = None, success_cfg: SuccessConfig | None = None) -> Task:
    if kind == "segmentation":
        return SegmentationTask(num_classes, loss_cfg or SegLossConfig(), success_cfg or SuccessConfig())
    return ClassificationTask(num_classes)


def classification_metrics(probs: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, float]:
    """Accuracy, balanced accuracy and AUC (binary: positive class; more: macro one-vs-rest)."""
    pred = probs.argmax(1)
    acc = float((pred == labels).mean()) if len(labels) else float("nan")
    recalls = [float((pred[labels == k] == k).mean()) for k in range(num_classes) if (labels == k).any()]
    bacc = float(np.mean(recalls)) if recalls else float("nan")
    return {"accuracy": acc, "balanced_accuracy": bacc, "auc": auc_score(probs, labels, num_classes)}


def auc_score(probs: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """ROC AUC via MONAI's ``compute_roc_auc`` (NaN if a class is missing from ``labels``)."""
    from monai.metrics import compute_roc_auc

    if len(np.unique(labels)) < 2:
        return float("nan")
    if num_classes == 2:
        return float(compute_roc_auc(torch.tensor(probs[:, 1]), torch.tensor(labels)))
    onehot = np.eye(num_classes)[labels]
    present = onehot.sum(0) > 0
    if not present.all():
        probs, onehot = probs[:, present], onehot[:, present]
    return float(compute_roc_auc(torch.as_tensor(probs), torch.as_tensor(onehot), average="macro"))
