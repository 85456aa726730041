"""Clean validation during training.

Segmentation: mean foreground Dice **per case** (2D models on volumes predict every slice and
are scored on the re-stacked volume), averaged over cases, plus per-class means.
Classification: accuracy, balanced accuracy and AUC (one-vs-rest macro for several classes).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from medrobust.data.datasets import PreparedCase
from medrobust.tasks import classification_metrics
from medrobust.inference import predict_case, to_original_grid
from medrobust.tasks import Task, hard_dice, reduce_foreground


@torch.no_grad()
def validate_segmentation(model: nn.Module, cases: list[PreparedCase], task: Task, dims: int, slice_axis: int,
                          input_size: list[int] | None, batch_size: int, device: torch.device,
                          predictor: nn.Module | None = None) -> dict[str, float]:
    """Mean per-case Dice over whole cases (every slice, every voxel) through the whole-case predictor.

    Args:
        model: the network (put in eval mode for the duration).
        cases: prepared validation cases.
        task: the segmentation task.
        dims, slice_axis: model dims and the slicing axis for 2D models on volumes.
        input_size: the training patch (window of the predictor built when ``predictor`` is None).
        batch_size: slices per forward pass.
        device: where to run.
        predictor: a :class:`~medrobust.inference.CasePredictor` around ``model`` (sliding windows).

    Returns:
        ``val_dice``, ``val_loss`` and ``val_dice_class{k}``.
    """
    if not cases:
        return {}
    was = model.training
    model.eval()
    if predictor is None:
        from medrobust.inference import build_predictor

        predictor = build_predictor(model, input_size)
    per_case, per_class = [], []
    losses = []
    try:
        for c in cases:
            logits = predict_case(predictor, c.image, dims, slice_axis, batch_size, device)
            label = c.label
            if c.extra.get("orig_label") is not None:  # data.preprocess.resize: score on the original grid
                label = c.extra["orig_label"]
                logits = to_original_grid(logits[None], label.shape[1:])[0]
            pred = logits.argmax(0, keepdim=True)
            d = hard_dice(pred, label[:1], task.num_classes)  # (1, K)
            per_case.append(float(reduce_foreground(d, "mean")[0]))
            per_class.append(d[0].numpy())
            losses.append(float(task.loss(logits[None], label[None]).mean()))
    finally:
        model.train(was)
    pc = np.stack(per_class)
    out = {"val_dice": float(np.mean(per_case)), "val_loss": float(np.mean(losses))}
    for k in range(1, task.num_classes):
        col = pc[:, k]
        out[f"val_dice_class{k}"] = float(np.nanmean(col)) if np.isfinite(col).any() else float("nan")
    return out


@torch.no_grad()
def validate_classification(model: nn.Module, loader: Any, task: Task, device: torch.device) -> dict[str, float]:
    was = model.training
    model.eval()
    probs, labels, losses = [], [], []
    try:
        for batch in loader:
            logits = model(batch["image"].to(device))
            y = batch["label"].to(device)
            losses.append(task.loss(logits, y).cpu())
            probs.append(torch.softmax(logits.float(), 1).cpu())
            labels.append(y.cpu())
    finally:
        model.train(was)
    if not probs:
        return {}
    p = torch.cat(probs).numpy()
    lab = torch.cat(labels).numpy()
    m = classification_metrics(p, lab, task.num_classes)
    return {"val_acc": m["accuracy"], "val_bacc": m["balanced_accuracy"], "val_auc": m["auc"],
            "val_loss": float(torch.cat(losses).mean())}
