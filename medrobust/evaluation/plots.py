"""Plots (matplotlib, Agg backend): training curves, metric-versus-budget curves, distributions,
example figures and margin heat maps. Every function writes a PNG atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    from medrobust.utils import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=110, bbox_inches="tight")
    _plt().close(fig)


def plot_training_curves(history: list[dict[str, Any]], path: Path, task: str) -> None:
    plt = _plt()
    ep = [r["epoch"] for r in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    axes[0].plot(ep, [r.get("train_loss", np.nan) for r in history], label="train loss")
    if any("val_loss" in r for r in history):
        axes[0].plot([r["epoch"] for r in history if "val_loss" in r], [r["val_loss"] for r in history if "val_loss" in r], label="val loss")
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("loss")
    axes[0].legend()
    keys = ["val_dice"] + sorted({k for r in history for k in r if k.startswith("val_dice_class")}) if task == "segmentation" \
        else ["val_acc", "val_bacc", "val_auc"]
    for k in keys:
        pts = [(r["epoch"], r[k]) for r in history if r.get(k) is not None]
        if pts:
            axes[1].plot(*zip(*pts), marker="o", ms=3, label=k)
    axes[1].set_xlabel("epoch")
    axes[1].set_ylabel("validation metric")
    axes[1].set_ylim(0, 1.02)
    axes[1].legend(fontsize=8)
    fig.suptitle("training curves")
    _save(fig, path)
