"""Study plots: the Pareto front of clean versus robust metric per budget, and a forest plot of
the paired differences with their confidence intervals. Each writes a PNG atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from medrobust.plotting import pyplot, save_figure


def plot_pareto(table: pd.DataFrame, path: Path, metric: str = "Dice", budget_label: str = "budget") -> None:
    """One panel per budget > 0: clean versus robust mean per method (error bars: sd over seeds),
    the Pareto front joined by a line.

    Args:
        table: rows with ``method, budget, clean_mean, clean_sd, robust_mean, robust_sd, pareto``.
        path: the PNG to write.
        metric: axis label.
        budget_label: panel title prefix.
    """
    plt = pyplot()
    budgets = [b for b in sorted(table.budget.unique()) if b > 0] or sorted(table.budget.unique())
    n = len(budgets)
    cols = min(3, n)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 4.0 * rows), squeeze=False)
    for ax, b in zip(axes.flat, budgets):
        g = table[table.budget == b]
        for _, r in g.iterrows():
            on = bool(r.pareto)
            ax.errorbar(r.clean_mean, r.robust_mean, xerr=r.get("clean_sd", 0) or 0, yerr=r.get("robust_sd", 0) or 0,
                        fmt="o" if on else "x", color="C3" if on else "C0", capsize=2)
            ax.annotate(str(r.method), (r.clean_mean, r.robust_mean), fontsize=7, xytext=(3, 3), textcoords="offset points")
        f = g[g.pareto.astype(bool)].sort_values("clean_mean")
        if len(f) > 1:
            ax.plot(f.clean_mean, f.robust_mean, "-", color="C3", alpha=0.6, label="Pareto front")
            ax.legend(fontsize=7)
        ax.set_xlabel(f"clean {metric} (mean over cases)")
        ax.set_ylabel(f"robust {metric}")
        ax.set_title(f"{budget_label} {b:g}")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    save_figure(fig, path)


def plot_forest(table: pd.DataFrame, path: Path, reference: str, metric: str = "Dice", budget_label: str = "budget") -> None:
    """Paired differences (method minus reference) with confidence intervals, grouped by budget.

    Args:
        table: rows with ``method, budget, diff, ci_low, ci_high, p_holm`` (reference rows skipped).
        path: the PNG to write.
        reference: the reference method's name (axis label).
    """
    plt = pyplot()
    t = table[table.method != reference].dropna(subset=["diff"]).sort_values(["budget", "method"])
    n = max(1, len(t))
    fig, ax = plt.subplots(figsize=(7.5, 0.32 * n + 1.4))
    labels = []
    for i, (_, r) in enumerate(t.iterrows()):
        y = n - 1 - i
        sig = (r.p_holm < 0.05) and (r.ci_low > 0 or r.ci_high < 0)
        lo = r["diff"] - r.ci_low if np.isfinite(r.ci_low) else 0
        hi = r.ci_high - r["diff"] if np.isfinite(r.ci_high) else 0
        ax.errorbar(r["diff"], y, xerr=[[lo], [hi]], fmt="s" if sig else "o", color="C3" if sig else "C0", capsize=3)
        labels.append(f"{r.method} @ {r.budget:g}")
    ax.set_yticks(range(n - 1, n - 1 - len(labels), -1) if labels else [])
    ax.set_yticklabels(labels, fontsize=7)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel(f"difference in per-case {metric} vs {reference} (95% CI; red: Holm p < 0.05)")
    ax.set_title(f"paired differences by {budget_label}")
    ax.grid(axis="x", alpha=0.3)
    save_figure(fig, path)
