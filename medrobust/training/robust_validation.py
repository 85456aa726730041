"""Robust validation during training, and the checkpoint selection that uses it.

Adversarial training overfits robustly (Rice et al. 2020): the epoch with the best clean
validation Dice is usually not the most robust one. So every ``val_every`` epochs the engine can
also attack the validation cases with a cheap attack and log the robust metric beside the clean
one:

- segmentation: ``val_robust_dice``, the mean over validation cases of each case's foreground
  Dice under attack (2D models on volumes: every slice attacked, predictions re-stacked and scored
  on the volume, as the clean ``val_dice``; 3D models: the whole case, through sliding windows
  when it is larger than the training patch);
- classification: ``val_robust_acc``, the accuracy under attack;
- ``val_attack_forward`` / ``val_attack_backward``: the passes this validation attack cost
  (counted by the engine's :class:`~medrobust.training.base.PassCounter`, like the method's).

Per-case robust Dice is written to ``robust_validation_cases.csv`` in the run folder.

The budget defaults to the method's own training budget and units (:func:`training_budget`).
For adversarial methods the default ``select_metric`` is the robust metric; the engine keeps the
best clean checkpoint as ``best_clean.pt`` beside ``best.pt``.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from medrobust.attacks import build_attack
from medrobust.config import TrainConfig, ValAttackConfig, plugin_spec
from medrobust.data.samplers import SliceLayout
from medrobust.errors import ConfigError
from medrobust.inference import build_predictor, pad_to, unpad
from medrobust.tasks import Task, hard_dice, reduce_foreground
from medrobust.threat import ThreatModel, budget_to_input
from medrobust.training.base import Method, PassCounter
from medrobust.utils import write_text_atomic

log = logging.getLogger(__name__)

CASES_FILE = "robust_validation_cases.csv"


def training_budget(method: Method) -> Optional[tuple[float, str]]:
    """The budget and units a method trains at, or None for a non-adversarial method.

    Looked up in order: a method's own ``training_budget()`` (new methods may define it), the
    base method of a wrapper (``awp``, ``avg_margin``), the parameter ``eps`` (PGD-AT, TRADES,
    MART, ISEAT, ...), ``eps_max`` (IMA's margin bound; IAAT's optional cap), then IAAT's ``eps0``.

    Args:
        method: a built training method.

    Returns:
        ``(eps, units)`` or None when the method has no positive training budget.
    """
    own = getattr(method, "training_budget", None)
    if callable(own):
        return own()
    base = getattr(method, "base", None)
    if isinstance(base, Method):
        return training_budget(base)
    p = method.params
    units = str(getattr(p, "units", "input"))
    for key in ("eps", "eps_max", "eps0"):
        v = getattr(p, key, None)
        if isinstance(v, (int, float)) and v > 0:
            return float(v), units
    return None


def clean_metric(task_kind: str) -> str:
    """The default clean selection metric: ``val_dice`` (segmentation) or ``val_auc``."""
    return "val_dice" if task_kind == "segmentation" else "val_auc"


def robust_metric(task_kind: str) -> str:
    """The robust validation metric: ``val_robust_dice`` (segmentation) or ``val_robust_acc``."""
    return "val_robust_dice" if task_kind == "segmentation" else "val_robust_acc"


class RobustValidator:
    """Attacks the validation cases at a fixed budget and reports the robust metric.

    Args:
        cfg: the validation-attack settings.
        task, threat: the training run's task contract and threat model.
        eps, units: the budget and its units.
        dims, slice_axis, input_size: the model's spatial dims, the slicing axis of 2D models on
            volumes, and the training input size (padding / sliding windows).
        batch_size: slices per attacked batch.
        train_cfg: the training config (its ``inference`` settings drive sliding windows).

    Raises:
        ConfigError: when the attack spec is invalid.
    """

    def __init__(self, cfg: ValAttackConfig, task: Task, threat: ThreatModel, eps: float, units: str, dims: int,
                 slice_axis: int, input_size: Optional[list[int]], batch_size: int, train_cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.task = task
        self.threat = threat
        self.eps = float(eps)
        self.units = units
        self.layout = SliceLayout(dims, slice_axis, tuple(input_size) if input_size else None)
        self.batch_size = batch_size
        self.train_cfg = train_cfg
        name, params = plugin_spec(cfg.attack, "validation attack")
        if params.get("loss", "auto") == "auto":
            params["loss"] = "dice_ce" if task.kind == "segmentation" else "ce"
        params.setdefault("seed", 0)  # fixed seed: never draws from (or disturbs) the training RNG
        self.attack = build_attack({"name": name, **params}, task, threat)
        self.metric = robust_metric(task.kind)

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(cls, train_cfg: TrainConfig, method: Method, task: Task, threat: ThreatModel, dims: int,
              input_size: Optional[list[int]]) -> Optional["RobustValidator"]:
        """The validator for a run, or None when robust validation is off (or not applicable).

        Raises:
            ConfigError: when ``val_attack.enabled`` is true but no budget is known, or a
                units / norm combination is invalid.
        """
        va = train_cfg.val_attack
        if va.enabled is False:
            return None
        own = training_budget(method)
        if va.enabled == "auto" and own is None:
            return None
        eps = va.eps if va.eps is not None else (own[0] if own else None)
        units = va.units or (own[1] if own else train_cfg.threat.units)
        if eps is None:
            raise ConfigError(f"val_attack is enabled but method '{method.name}' has no training budget; set val_attack.eps (and val_attack.units).")
        if units == "rms" and threat.norm != "L2":
            raise ConfigError("val_attack.units 'rms' applies to the L2 norm only; use units: input or native with threat.norm Linf.")
        if eps == 0:
            return None
        return cls(va, task, threat, eps, units, dims, train_cfg.data.slice_axis, input_size, train_cfg.val_batch_size,
                   train_cfg)

    def describe(self) -> dict[str, Any]:
        """Settings for ``summary.json``."""
        return {"metric": self.metric, "attack": self.attack.describe() if hasattr(self.attack, "describe") else self.attack.name,
                "eps": self.eps, "units": self.units, "norm": self.threat.norm, "max_cases": self.cfg.max_cases}

    # ------------------------------------------------------------------ validation
    def _eps(self, x: torch.Tensor, scale: Any) -> torch.Tensor:
        b = x.shape[0]
        batch = {"intensity_scale": torch.as_tensor(np.asarray(scale), dtype=torch.float64).reshape(1, -1).expand(b, -1)}
        return budget_to_input(self.eps, self.units, self.threat.norm, batch, x)

    def _attacked_logits(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        x_adv = self.attack(model, x, y, eps).x_adv
        with torch.no_grad():
            was = model.training
            model.eval()
            try:
                return model(x_adv).float()
            finally:
                model.train(was)

    def _case_segmentation(self, model: nn.Module, case: Any, device: torch.device) -> float:
        image, label = case.image, case.label[:1]
        cd = image.ndim - 1
        if not self.layout.sliced(case.case_id, cd):
            wrapped = build_predictor(model, self.layout.input_size, self.train_cfg.inference, "segmentation") if cd == 3 else model
            x = image[None].to(device)
            eps = self._eps(x, case.intensity_scale)
            size = None if wrapped is not model else self.layout.input_size
            xp, pads = pad_to(x, size)
            yp, _ = pad_to(label[None].to(device).float(), size)
            logits = unpad(self._attacked_logits(wrapped, xp, yp.long()[:, 0], eps), pads)[0].cpu()
        else:
            ax = 1 + self.layout.slice_axis
            n = image.shape[ax]
            outs = []
            for start in range(0, n, self.batch_size):
                idx = torch.arange(start, min(n, start + self.batch_size))
                xs = image.index_select(ax, idx).movedim(ax, 0).to(device)  # (b, C, h, w)
                ys = label.index_select(ax, idx).movedim(ax, 0)[:, 0].to(device)  # (b, h, w)
                eps = self._eps(xs, case.intensity_scale)
                xp, pads = pad_to(xs, self.layout.input_size)
                yp, _ = pad_to(ys[:, None].float(), self.layout.input_size)
                outs.append(unpad(self._attacked_logits(model, xp, yp[:, 0].long(), eps), pads).cpu())
            logits = torch.cat(outs, 0).movedim(0, ax)
        pred = logits.argmax(0, keepdim=True)
        d = hard_dice(pred, label, self.task.num_classes)
        return float(reduce_foreground(d, "mean")[0])

    def _images_segmentation(self, model: nn.Module, cases: list, device: torch.device) -> list[tuple[str, float]]:
        """2D image cases attacked ``batch_size`` at a time (cases of equal shape share a batch)."""
        out: dict[str, float] = {}
        groups: dict[tuple, list] = {}
        for c in cases:
            groups.setdefault(tuple(c.image.shape), []).append(c)
        for group in groups.values():
            for start in range(0, len(group), self.batch_size):
                part = group[start:start + self.batch_size]
                x = torch.stack([c.image for c in part]).to(device)
                y = torch.stack([c.label[0] for c in part]).to(device)
                scale = np.stack([np.asarray(c.intensity_scale, dtype=np.float64).reshape(-1) for c in part])
                eps = budget_to_input(self.eps, self.units, self.threat.norm, {"intensity_scale": torch.as_tensor(scale)}, x)
                xp, pads = pad_to(x, self.layout.input_size)
                yp, _ = pad_to(y[:, None].float(), self.layout.input_size)
                logits = unpad(self._attacked_logits(model, xp, yp[:, 0].long(), eps), pads).cpu()
                d = hard_dice(logits.argmax(1), y.cpu(), self.task.num_classes)
                for c, v in zip(part, reduce_foreground(d, "mean")):
                    out[c.case_id] = float(v)
        return [(c.case_id, out[c.case_id]) for c in cases]

    def validate(self, model: nn.Module, val_cases: list, val_loader: Any, device: torch.device, epoch: int,
                 run_dir: Optional[Path] = None) -> dict[str, float]:
        """Attack the validation data once; returns the log columns for this epoch.

        Args:
            model: the plain network (no DDP wrapper).
            val_cases: prepared validation cases (segmentation).
            val_loader: the validation loader (classification).
            device: where to run.
            epoch: the 1-based epoch (for the per-case file).
            run_dir: where ``robust_validation_cases.csv`` is kept (None: not written).

        Returns:
            ``{metric: value, "val_attack_forward": n, "val_attack_backward": n}``.
        """
        counter = PassCounter(model)
        rows: list[tuple[str, float]] = []
        try:
            if self.task.kind == "segmentation":
                cases = val_cases[: self.cfg.max_cases] if self.cfg.max_cases else val_cases
                if cases and self.layout.dims == 2 and cases[0].image.ndim == 3:  # 2D images: batch cases of one shape
                    rows.extend(self._images_segmentation(model, cases, device))
                else:
                    for c in cases:
                        rows.append((c.case_id, self._case_segmentation(model, c, device)))
            elif val_loader is not None:
                n_seen = 0
                for batch in val_loader:
                    if self.cfg.max_cases and n_seen >= self.cfg.max_cases:
                        break
                    x, y = batch["image"].to(device), batch["label"].to(device)
                    eps = budget_to_input(self.eps, self.units, self.threat.norm, batch, x)
                    correct = (self._attacked_logits(model, x, y, eps).argmax(1) == y).cpu().numpy()
                    rows.extend((str(i), float(v)) for i, v in zip(batch["id"], correct))
                    n_seen += len(correct)
        finally:
            counter.remove()
        if not rows:
            return {}
        vals = [v for _, v in rows]
        out = {self.metric: float(np.mean(vals)), "val_attack_forward": counter.forward, "val_attack_backward": counter.backward}
        if run_dir is not None:
            _append_cases(Path(run_dir) / CASES_FILE, epoch, rows, self.task.kind)
        return out


def _append_cases(path: Path, epoch: int, rows: list[tuple[str, float]], kind: str) -> None:
    """Rewrite the per-case file with this epoch's rows (rows of this or later epochs replaced: resume-safe)."""
    col = "robust_dice" if kind == "segmentation" else "robust_correct"
    old: list[dict[str, str]] = []
    if path.is_file():
        with path.open(newline="") as f:
            old = [r for r in csv.DictReader(f) if r.get("epoch", "").isdigit() and int(r["epoch"]) < epoch]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["epoch", "case", col])
    for r in old:
        w.writerow([r["epoch"], r["case"], r.get(col, "")])
    for case, v in rows:
        w.writerow([epoch, case, v])
    write_text_atomic(path, buf.getvalue())


class Selection:
    """Tracks the best epoch by the selection metric and, separately, by the clean metric.

    Rebuilt from the history on resume, so it needs no checkpoint field of its own.

    Args:
        select: the selection metric (a column of the history).
        clean: the clean metric whose best epoch is kept as ``best_clean.pt``.
        history: rows logged so far (resume).
    """

    def __init__(self, select: str, clean: str, history: list[dict[str, Any]]) -> None:
        self.select, self.clean = select, clean
        self.best, self.best_clean = -math.inf, -math.inf
        self.best_epoch: Optional[int] = None
        self.best_clean_epoch: Optional[int] = None
        for row in history:
            self.offer(row)

    def offer(self, row: dict[str, Any]) -> tuple[bool, bool]:
        """Offer an epoch's row; returns (best by the selection metric, best by the clean metric) so far."""
        v, c = _num(row.get(self.select)), _num(row.get(self.clean))
        improved = v is not None and v > self.best
        if improved:
            self.best, self.best_epoch = v, int(row["epoch"])
        clean_improved = c is not None and c > self.best_clean
        if clean_improved:
            self.best_clean, self.best_clean_epoch = c, int(row["epoch"])
        return improved, clean_improved

    def summary(self) -> dict[str, Any]:
        return {"select_metric": self.select, "best_epoch": self.best_epoch, "clean_metric": self.clean,
                "best_clean_epoch": self.best_clean_epoch, "best_clean_metric": self.best_clean if self.best_clean_epoch else None}


def _num(v: Any) -> Optional[float]:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f
