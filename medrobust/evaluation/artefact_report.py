"""Artefact parts of an evaluation report: Dice (or accuracy) versus severity per artefact.

Artefact rows of ``results.csv`` carry a ``severity`` column (0-5; ``budget`` holds the same
level); adversarial and white-noise rows leave it empty. Artefacts are kept out of the
budget-axis plot and out of the per-budget worst case over attacks, since a severity level is
not a budget.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medrobust.plotting import pyplot, save_figure


def artefact_labels(table: pd.DataFrame) -> list[str]:
    """Attack labels whose rows are artefacts (non-empty ``severity``), in table order."""
    if "severity" not in table:
        return []
    return list(dict.fromkeys(table.loc[table["severity"].notna(), "attack"]))


def attack_levels(table: pd.DataFrame, attack: str, budgets: list[float]) -> list[float]:
    """The budgets of an attack, or its severity levels for an artefact."""
    if attack in artefact_labels(table):
        return sorted(float(b) for b in table.loc[table.attack == attack, "budget"].unique())
    return budgets


def severity_table(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Mean metric per artefact (rows) and severity (columns)."""
    labs = artefact_labels(table)
    d = table[table.attack.isin(labs)]
    if d.empty:
        return pd.DataFrame()
    t = d.groupby(["attack", "severity"])[metric].apply(lambda s: s.astype(float).mean()).unstack("severity")
    return t.reindex(labs)


def plot_severity_curves(table: pd.DataFrame, path: Path, metric: str) -> bool:
    """One panel per artefact: mean metric (IQR band) versus severity, with the mean of draws when present."""
    labs = artefact_labels(table)
    if not labs:
        return False
    plt = pyplot()
    n = len(labs)
    cols = min(5, n)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.9 * cols, 2.5 * rows), squeeze=False, sharey=True)
    for ax, a in zip(axes.ravel(), labs):
        d = table[table.attack == a]
        sv = sorted(d.severity.unique())
        v = [d[d.severity == s][metric].astype(float) for s in sv]
        ax.plot(sv, [x.mean() for x in v], "o-", label="worst draw")
        ax.fill_between(sv, [x.quantile(0.25) for x in v], [x.quantile(0.75) for x in v], alpha=0.15)
        mcol = f"{metric}_mean"
        if mcol in d and d[mcol].notna().any():
            mm = [d[(d.severity == s)][mcol].astype(float).mean() if s > 0 else v[i].mean() for i, s in enumerate(sv)]
            ax.plot(sv, mm, "s--", ms=3, label="mean of draws")
        ax.set_title(a, fontsize=9)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xticks(sv)
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    axes[0][0].set_ylabel("mean Dice per case" if metric == "dice" else "accuracy")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("acquisition artefacts: metric versus severity (band: IQR of the worst draw)")
    fig.subplots_adjust(hspace=0.45)
    save_figure(fig, path)
    return True


def artefact_summary(table: pd.DataFrame, metric: str) -> dict[str, Any]:
    """Per artefact and severity: mean of the worst draw, mean over draws, and the drop from clean."""
    out: dict[str, Any] = {}
    clean = table[table.attack == "clean"][metric].astype(float).mean()
    for a in artefact_labels(table):
        d = table[table.attack == a]
        out[a] = {}
        for s in sorted(d.severity.unique()):
            g = d[d.severity == s]
            blk = {"mean": float(g[metric].astype(float).mean()), "drop": float(clean - g[metric].astype(float).mean())}
            if f"{metric}_mean" in g and g[f"{metric}_mean"].notna().any():
                blk["mean_of_draws"] = float(g[f"{metric}_mean"].astype(float).mean())
            out[a][str(int(s))] = blk
    return out
