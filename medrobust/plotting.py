"""Plotting helpers below training and evaluation (matplotlib, Agg backend): the pyplot handle, atomic
PNG writing, the mid-slice picker, and the training-curve and margin-history figures that training writes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def pyplot():
    """Return ``matplotlib.pyplot`` with the non-interactive Agg backend selected."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> None:
    """Write ``fig`` to ``path`` atomically (format from the suffix, PNG by default) and close it."""
    from medrobust.utils import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=110, bbox_inches="tight")
    pyplot().close(fig)


def mid_slice(t: np.ndarray, lab: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """The 2D slice of a 3D array (last axis) with the most foreground in ``lab`` (the middle one without)."""
    if t.ndim == 2:
        return t, lab
    if lab is not None and (lab > 0).any():
        k = int(np.argmax((lab > 0).reshape(-1, lab.shape[-1]).sum(0)))
    else:
        k = t.shape[-1] // 2
    return t[..., k], (lab[..., k] if lab is not None else None)


def plot_training_curves(history: list[dict[str, Any]], path: Path, task: str) -> None:
    plt = pyplot()
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
    keys += [k for k in ("val_robust_dice", "val_robust_acc") if any(k in r for r in history)]
    for k in keys:
        pts = [(r["epoch"], r[k]) for r in history if r.get(k) is not None]
        if pts:
            axes[1].plot(*zip(*pts), marker="o", ms=3, label=k)
    axes[1].set_xlabel("epoch")
    axes[1].set_ylabel("validation metric")
    axes[1].set_ylim(0, 1.02)
    axes[1].legend(fontsize=8)
    fig.suptitle("training curves")
    save_figure(fig, path)


def plot_margin_history(hist: dict[int, np.ndarray], path: Path, units: str, eps_max: float | None = None) -> None:
    """Distribution of the per-sample IMA margins over training epochs (violins + median line)."""
    plt = pyplot()
    epochs = sorted(hist)
    if len(epochs) > 12:  # keep the figure readable
        keep = np.unique(np.linspace(0, len(epochs) - 1, 12).round().astype(int))
        epochs = [epochs[i] for i in keep]
    data = [hist[e] for e in epochs]
    fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(epochs) + 2), 3.8))
    ax.violinplot(data, positions=epochs, widths=max(0.6, 0.8 * (epochs[-1] - epochs[0] + 1) / max(1, len(epochs))),
                  showmedians=True)
    ax.plot(epochs, [np.median(d) for d in data], "k-", lw=1, label="median")
    if eps_max is not None:
        ax.axhline(eps_max, color="r", ls="--", lw=1, label="eps_max")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"per-sample margin ({units} units)")
    ax.set_title("IMA margins over training")
    ax.legend(fontsize=8)
    save_figure(fig, path)
