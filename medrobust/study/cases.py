"""Per-case metrics from an evaluation run folder, for paired comparisons.

From ``results.csv`` (one row per sample x attack x budget) this gives one value per case and
budget: the clean metric, and the robust metric under one attack or the per-sample worst case
over all attacks. Segmentation: Dice over the foreground classes; 2D models on volumes pool the
slices of a case (TP / FP / FN summed over slices, as the evaluation summary's ``case_dice``), a
case without any foreground in label and prediction scores 1. Classification: 1 if correct, else 0
(the mean over cases is the accuracy).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medrobust.errors import ConfigError


def load_eval(run_dir: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """``(results table, summary)`` of an evaluation run folder.

    Raises:
        ConfigError: when the folder lacks ``results.csv`` or ``summary.json``.
    """
    d = Path(run_dir)
    res, summ = d / "results.csv", d / "summary.json"
    if not res.is_file() or not summ.is_file():
        raise ConfigError(f"evaluation folder '{d}' has no results.csv / summary.json; run the evaluation step first (or fix the path).")
    return pd.read_csv(res, dtype={"case": str, "sample": str}), json.loads(summ.read_text())


def _class_ids(t: pd.DataFrame) -> list[int]:
    return sorted(int(c[3:]) for c in t.columns if c.startswith("tp_") and c[3:].isdigit())


def _case_metric(d: pd.DataFrame, seg: bool, ks: list[int]) -> pd.Series:
    if not seg:
        return d.groupby("case")["correct"].apply(lambda s: float(s.astype(float).mean()))
    if not (d["slice"] >= 0).any() or not ks:
        return d.groupby("case")["dice"].mean()

    def pooled(g: pd.DataFrame) -> float:
        tp = np.array([g[f"tp_{k}"].sum() for k in ks], dtype=float)
        fp = np.array([g[f"fp_{k}"].sum() for k in ks], dtype=float)
        fn = np.array([g[f"fn_{k}"].sum() for k in ks], dtype=float)
        den = 2 * tp + fp + fn
        v = np.where(den > 0, 2 * tp / np.maximum(den, 1), np.nan)
        return float(np.nanmean(v)) if np.isfinite(v).any() else 1.0

    return d.groupby("case").apply(pooled, include_groups=False) if _has_include_groups() else d.groupby("case").apply(pooled)


def _has_include_groups() -> bool:
    import inspect

    return "include_groups" in inspect.signature(pd.core.groupby.DataFrameGroupBy.apply).parameters


def case_scores(run_dir: str | Path, attack: str = "worst_case") -> pd.DataFrame:
    """Per-case clean and robust metric at every budget of an evaluation.

    Args:
        run_dir: an evaluation run folder.
        attack: an attack label of the evaluation, or ``worst_case`` (per sample, the lowest
            metric over all attacks at that budget).

    Returns:
        Rows ``(case, budget, clean, robust)``; at budget 0 ``robust`` equals ``clean``.

    Raises:
        ConfigError: when ``attack`` is not in the evaluation.
    """
    t, summary = load_eval(run_dir)
    seg = summary.get("task", "segmentation") == "segmentation"
    t["case"] = t["case"].astype(str)
    ks = _class_ids(t)
    clean = _case_metric(t[t.attack == "clean"], seg, ks)
    adv = t[t.attack != "clean"]
    if attack != "worst_case":
        if attack not in set(adv.attack):
            raise ConfigError(f"attack '{attack}' is not in the evaluation '{run_dir}' (it has {', '.join(sorted(set(adv.attack)))}); set compare.attack.")
        adv = adv[adv.attack == attack]
    metric = "dice" if seg else "correct"
    rows = []
    for b in sorted(adv.budget.unique()):
        d = adv[adv.budget == b]
        idx = d.assign(_m=d[metric].astype(float)).groupby("sample")["_m"].idxmin()
        robust = _case_metric(d.loc[idx], seg, ks)
        for case, v in robust.items():
            rows.append({"case": str(case), "budget": float(b), "clean": float(clean.get(case, np.nan)), "robust": float(v)})
    if not rows:  # no attack rows: clean only
        rows = [{"case": str(c), "budget": 0.0, "clean": float(v), "robust": float(v)} for c, v in clean.items()]
    return pd.DataFrame(rows)
