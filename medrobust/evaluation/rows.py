"""The row builder of a sweep: one table row per sample of a work item, per attack and budget.

A row holds the sample's identity (sample, case, slice), the attack and the budget in the
configured units and in input / native / RMS units, the metrics (segmentation: Dice per class,
TP / FP / FN per class so pooled metrics can be recomputed, IoU / HD95 / NSD when asked;
classification: label, prediction, margin, class probabilities) and per-attack extras.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from medrobust.config import EvalConfig
from medrobust.evaluation.metrics import segmentation_metrics
from medrobust.inference import to_original_grid
from medrobust.tasks import reduce_foreground


def _label_map(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Integer label maps ``(B, *spatial)`` from targets with or without a channel axis."""
    t = y.long()
    return t[:, 0] if t.ndim == logits.ndim else t


class RowBuilder:
    """Rows of one work item's samples (see the module docstring).

    Args:
        task: the task (segmentation or classification) with its success rule.
        cfg: the evaluation config (norm, units, metrics, NSD tolerance).
        class_names: label id -> name (column names per class).
        ds: the dataset the batches come from (original grids under ``preprocess.resize``), or None.
    """

    def __init__(self, task: Any, cfg: EvalConfig, class_names: dict[int, str], ds: Any = None) -> None:
        self.task, self.cfg, self.class_names, self.ds = task, cfg, class_names, ds
        self.which = set(cfg.metrics)
        self.metric = "dice" if task.kind == "segmentation" else "correct"

    def rows(self, batch: dict[str, Any], logits: torch.Tensor, y: torch.Tensor, attack: str, budget: float,
             units: dict[str, torch.Tensor], extra: Optional[dict[str, torch.Tensor]] = None) -> list[dict[str, Any]]:
        """One row per sample.

        Args:
            batch: the collated work item (ids, cases, slices, spacing).
            logits: the model's outputs on the (clean or attacked) inputs.
            y: the targets.
            attack: the attack's label (``clean`` for clean rows).
            budget: the budget (or artefact severity) in the configured units.
            units: the budget per sample in ``input`` / ``native`` / ``rms`` units (those known).
            extra: per-sample attack extras (``score`` columns are named after the metric).

        Returns:
            The rows, in batch order.
        """
        base = [self._identity(batch, i, attack, budget, units) for i in range(logits.shape[0])]
        if self.task.kind == "segmentation":
            self._segmentation(base, batch, logits, y)
        else:
            self._classification(base, logits, y)
        for key, v in (extra or {}).items():
            v = v.cpu().numpy()
            col = key if key.startswith("member:") else key.replace("score", self.metric)
            for i, r in enumerate(base):
                r[col] = float(v[i])
        return base

    def _identity(self, batch: dict[str, Any], i: int, attack: str, budget: float, units: dict[str, torch.Tensor]) -> dict[str, Any]:
        r = {"sample": batch["id"][i], "case": batch["case"][i], "slice": int(batch["slice"][i]), "attack": attack,
             "norm": self.cfg.threat.norm, "units": self.cfg.threat.units, "budget": float(budget)}
        for k in ("input", "native", "rms"):
            r[f"eps_{k}"] = float(units[k][i]) if k in units else (0.0 if budget == 0 else float("nan"))
        return r

    def _segmentation(self, base: list[dict[str, Any]], batch: dict[str, Any], logits: torch.Tensor, y: torch.Tensor) -> None:
        task = self.task
        m = metrics_on_case_grid(task, logits, y, batch, self.ds, self.which, self.cfg.nsd_tolerance_mm)
        dice_t = torch.as_tensor(m["dice"])
        mean = reduce_foreground(dice_t, "mean").numpy()
        succ = task.success_from_dice(dice_t).numpy()
        for i, r in enumerate(base):
            r["dice"] = float(mean[i])
            r["success"] = bool(succ[i])
            for k in range(1, task.num_classes):
                name = self.class_names.get(k, f"class{k}")
                r[f"dice_{name}"] = float(m["dice"][i, k])
                r[f"tp_{k}"], r[f"fp_{k}"], r[f"fn_{k}"] = (int(v) for v in m["counts"][i, k])
                for met in ("iou", "hd95", "nsd"):
                    if met in m:
                        r[f"{met}_{name}"] = float(m[met][i, k])
            for met in ("iou", "hd95", "nsd"):
                if met in m:
                    vals = m[met][i, 1:]
                    r[met] = float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")

    def _classification(self, base: list[dict[str, Any]], logits: torch.Tensor, y: torch.Tensor) -> None:
        probs = torch.softmax(logits.float(), 1).cpu().numpy()
        pred = probs.argmax(1)
        yy = y.cpu().numpy()
        margin = self.task.unit_margin(logits, y).cpu().numpy()
        for i, r in enumerate(base):
            r.update({"label": int(yy[i]), "pred": int(pred[i]), "correct": bool(pred[i] == yy[i]), "margin": float(margin[i])})
            r["success"] = r["correct"]
            for k in range(probs.shape[1]):
                r[f"prob_{k}"] = float(probs[i, k])


def metrics_on_case_grid(task: Any, logits: torch.Tensor, y: torch.Tensor, batch: dict[str, Any], ds: Any, which: set[str],
                         tol: float) -> dict[str, np.ndarray]:
    """Segmentation metrics per sample on the case's grid.

    With ``preprocess.resize`` the logits of whole cases are resampled back to the grid before
    the resize and scored against the original label (and spacing).

    Args:
        task: the segmentation task.
        logits: ``(B, K, *spatial)`` outputs.
        y: the targets.
        batch: the collated work item (``case_index``, ``slice``, ``spacing``).
        ds: the dataset (its cases' ``extra["orig_label"]``), or None.
        which: the metrics to compute besides Dice.
        tol: the NSD tolerance in mm.

    Returns:
        The arrays of :func:`medrobust.evaluation.metrics.segmentation_metrics`, per sample.
    """
    origs = []
    if ds is not None:
        for i in range(logits.shape[0]):
            ci, s = int(batch["case_index"][i]), int(batch["slice"][i])
            ol = ds.cases[ci].extra.get("orig_label") if hasattr(ds, "cases") else None
            origs.append(ol if ol is not None and s < 0 else None)
    if not any(o is not None for o in origs):
        return segmentation_metrics(task.predict(logits), _label_map(logits, y), task.num_classes, batch["spacing"], which, tol)
    parts = []
    for i, ol in enumerate(origs):
        lg = logits[i:i + 1]
        if ol is None:
            tgt, sp = _label_map(lg, y[i:i + 1]), batch["spacing"][i:i + 1]
        else:
            lg = to_original_grid(lg, ol.shape[1:])
            tgt = ol.to(lg.device)
            sp = torch.tensor([ds.cases[int(batch["case_index"][i])].extra["orig_spacing"]], dtype=torch.float64)
        parts.append(segmentation_metrics(task.predict(lg), tgt, task.num_classes, sp, which, tol))
    return {k: np.concatenate([np.asarray(p[k]) for p in parts], 0) for k in parts[0]}
