"""The study: per-case tables of every method (and seed), paired statistics against a reference,
Pareto fronts, verdicts, plots and ``study_report.html``.

Aggregation over seeds: for each method and budget, each seed's mean over cases gives one number
per seed; the table reports their mean and sample standard deviation (``clean_mean``,
``clean_sd``, ``robust_mean``, ``robust_sd``). For the paired tests each case's metric is averaged
over the seeds first, so a method contributes one value per case.

Family for the Holm correction: every (method other than the reference, budget) pair of the
comparison, budget 0 (clean) included when evaluated. The "not distinguishable" sentence compares
the best robust method at a budget with every other method there (Wilcoxon, Holm within that
budget); it is descriptive and not part of the family.
"""

from __future__ import annotations

import html
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from medrobust.config import resolve_path
from medrobust.errors import ConfigError
from medrobust.study.cases import case_scores
from medrobust.study.stats import wilcoxon_p, aggregate_seeds, holm, paired_difference, pareto_front, verdicts
from medrobust.utils import write_text_atomic

log = logging.getLogger(__name__)


def _paths(v: Any) -> list[str]:
    return [v] if isinstance(v, str) else list(v)


def train_compute(run_dir: str | Path) -> dict[str, Any]:
    """Compute and selection facts of one training run folder (``summary.json``, else ``metrics.csv``).

    Returns:
        ``passes_train``, ``passes_val_attack``, ``train_seconds``, ``epochs_run``,
        ``select_metric``, ``best_epoch``, ``budget_passes``, ``budget_seconds`` (None where unknown).
    """
    d = Path(run_dir)
    out: dict[str, Any] = {k: None for k in ("passes_train", "passes_val_attack", "train_seconds", "epochs_run",
                                             "select_metric", "best_epoch", "budget_passes", "budget_seconds")}
    m = pd.read_csv(d / "metrics.csv") if (d / "metrics.csv").is_file() else None
    if m is not None and len(m):
        if {"forward_per_step", "backward_per_step", "steps"} <= set(m.columns):
            out["passes_train"] = float(((m.forward_per_step + m.backward_per_step) * m.steps).round().sum())
        if "time_train_s" in m:
            out["train_seconds"] = float(m.time_train_s.sum())
        out["epochs_run"] = int(m.epoch.max())
        if "passes_val_attack_total" in m:
            out["passes_val_attack"] = float(m.passes_val_attack_total.dropna().iloc[-1]) if m.passes_val_attack_total.notna().any() else 0.0
    if (d / "summary.json").is_file():
        s = json.loads((d / "summary.json").read_text())
        c = s.get("compute") or {}
        out.update({"select_metric": s.get("select_metric"), "best_epoch": s.get("best_epoch"),
                    "budget_passes": c.get("budget_passes"), "budget_seconds": c.get("budget_seconds")})
        if c.get("passes_train") is not None:
            out["passes_train"] = float(c["passes_train"])
            out["passes_val_attack"] = float(c.get("passes_val_attack") or 0)
            out["train_seconds"] = float(c.get("seconds_train") or 0)
        out["epochs_run"] = s.get("epochs_run", out["epochs_run"])
    return out


def collect(cfg: Any, base_dir: Path) -> pd.DataFrame:
    """Per-case rows ``(method, seed, case, budget, clean, robust)`` of every evaluation."""
    frames = []
    for method, paths in cfg.evals.items():
        for seed_i, p in enumerate(_paths(paths)):
            cs = case_scores(resolve_path(p, base_dir), cfg.attack)
            cs.insert(0, "seed", seed_i)
            cs.insert(0, "method", method)
            frames.append(cs)
    return pd.concat(frames, ignore_index=True)


def statistics(per_case: pd.DataFrame, reference: str, confidence: float = 0.95, n_resamples: int = 9999,
               alpha: float = 0.05) -> tuple[pd.DataFrame, dict[float, dict[str, float]]]:
    """Paired statistics of every method against ``reference`` at every budget.

    Args:
        per_case: rows ``(method, seed, case, budget, clean, robust)``.
        reference: the reference method.
        confidence, n_resamples: of the bootstrap interval.
        alpha: unused here except by callers; kept for symmetry.

    Returns:
        ``(table, pairwise)``: the table has one row per method and budget (see the module
        docstring); ``pairwise[budget][method]`` is the Holm-adjusted p of the best robust method
        at that budget against ``method``.

    Raises:
        ConfigError: when ``reference`` has no evaluation, or a method shares no case with it.
    """
    methods = list(dict.fromkeys(per_case.method))
    if reference not in methods:
        raise ConfigError(f"compare.reference '{reference}' is not one of the compared methods ({', '.join(methods)}); fix compare.reference.")
    rows, by_case = [], {}
    for b in sorted(per_case.budget.unique()):
        for m in methods:
            d = per_case[(per_case.method == m) & (per_case.budget == b)]
            if not len(d):
                continue
            cl, cl_case = aggregate_seeds(d, "clean")
            rb, rb_case = aggregate_seeds(d, "robust")
            by_case[(m, b)] = rb_case
            rows.append({"method": m, "budget": float(b), "n_seeds": rb["n_seeds"], "n_cases": rb["n_cases"],
                         "clean_mean": cl["mean"], "clean_sd": cl["sd"], "robust_mean": rb["mean"], "robust_sd": rb["sd"]})
    t = pd.DataFrame(rows)
    stats_cols = {"diff": np.nan, "ci_low": np.nan, "ci_high": np.nan, "p_value": np.nan, "n_paired": np.nan}
    for k, v in stats_cols.items():
        t[k] = v
    for i, r in t.iterrows():
        if r.method == reference or (reference, r.budget) not in by_case:
            continue
        ref, cur = by_case[(reference, r.budget)], by_case[(r.method, r.budget)]
        common = ref.index.intersection(cur.index)
        if len(common) == 0:
            raise ConfigError(f"method '{r.method}' and the reference '{reference}' share no evaluated case; evaluate both on the same split.")
        if len(common) < max(len(ref), len(cur)):
            log.warning("%s vs %s at budget %g: only %d common cases are paired", r.method, reference, r.budget, len(common))
        res = paired_difference(ref.loc[common].to_numpy(), cur.loc[common].to_numpy(), confidence, n_resamples)
        t.loc[i, ["diff", "ci_low", "ci_high", "p_value", "n_paired"]] = [res.diff, res.ci_low, res.ci_high, res.p_value, res.n]
    t["p_holm"] = holm(t["p_value"].to_numpy())
    t["pareto"] = False
    pairwise: dict[float, dict[str, float]] = {}
    for b, g in t.groupby("budget"):
        t.loc[g.index, "pareto"] = pareto_front(g.clean_mean.to_numpy(), g.robust_mean.to_numpy())
        best = g.sort_values("robust_mean", ascending=False).iloc[0].method
        names, ps = [], []
        for m in g.method:
            if m == best:
                continue
            a, c = by_case[(best, b)], by_case[(m, b)]
            common = a.index.intersection(c.index)
            names.append(m)
            ps.append(wilcoxon_p(a.loc[common].to_numpy() - c.loc[common].to_numpy()) if len(common) > 1 else np.nan)
        pairwise[float(b)] = dict(zip(names, holm(ps))) if names else {}
    t.attrs["reference"] = reference
    return t, pairwise


def study(cfg: Any, base_dir: Path, out_dir: Path, legacy: Optional[pd.DataFrame] = None) -> pd.DataFrame:
    """Run the study for a compare config; writes per-case table, plots and ``study_report.html``.

    Returns:
        The comparison table (statistics, compute, and the ``legacy`` summary columns merged in).
    """
    from medrobust.study.plots import plot_forest, plot_pareto

    per_case = collect(cfg, base_dir)
    write_text_atomic(out_dir / "per_case.csv", per_case.to_csv(index=False))
    reference = cfg.reference or next(iter(cfg.evals))
    table, pairwise = statistics(per_case, reference, cfg.confidence, cfg.n_resamples, cfg.alpha)
    compute_rows = []
    for m in cfg.evals:
        runs = _paths(cfg.trains[m]) if m in cfg.trains else []
        facts = [train_compute(resolve_path(p, base_dir)) for p in runs]
        row: dict[str, Any] = {"method": m}
        for k in ("passes_train", "passes_val_attack", "train_seconds", "epochs_run", "best_epoch", "budget_passes", "budget_seconds"):
            vals = [f[k] for f in facts if f[k] is not None]
            row[k] = float(np.mean(vals)) if vals else np.nan
        sel = sorted({str(f["select_metric"]) for f in facts if f["select_metric"]})
        row["select_metric"] = "/".join(sel) if sel else ""
        compute_rows.append(row)
    comp = pd.DataFrame(compute_rows)
    out = table.merge(comp, on="method", how="left")
    if legacy is not None and len(legacy):
        leg = legacy
        leg = leg.rename(columns={c: f"{c}_samples" for c in leg.columns if c in out.columns and c not in ("method", "budget")})
        out = out.merge(leg, on=["method", "budget"], how="left")
    out.attrs["reference"] = reference
    first = _first_summary(cfg, base_dir)
    seg = first.get("task", "segmentation") == "segmentation"
    metric = "Dice" if seg else "accuracy"
    st = first.get("settings", {})
    budget_label = f"{st.get('norm', '')} {st.get('units', '')}".strip() or "budget"
    verdict = verdicts(out, reference, cfg.alpha, pairwise, budget_label)
    plot_pareto(out, out_dir / "pareto.png", metric, budget_label)
    plot_forest(out, out_dir / "forest.png", reference, metric, budget_label)
    write_text_atomic(out_dir / "verdict.json", json.dumps({str(k): v for k, v in verdict.items()}, indent=2))
    _html(out_dir, cfg, base_dir, out, verdict, metric, budget_label, reference)
    return out


def _first_summary(cfg: Any, base_dir: Path) -> dict[str, Any]:
    p = Path(resolve_path(_paths(next(iter(cfg.evals.values())))[0], base_dir)) / "summary.json"
    return json.loads(p.read_text()) if p.is_file() else {}


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else ""
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        if v == 0:
            return "0"
        if abs(v) >= 10:
            return f"{v:,.0f}" if float(v).is_integer() or abs(v) >= 1000 else f"{v:,.1f}"
        return f"{v:.{digits}g}" if abs(v) < 0.01 and v != 0 else f"{v:.{digits}f}"
    return html.escape(str(v))


def _html(out_dir: Path, cfg: Any, base_dir: Path, t: pd.DataFrame, verdict: dict[float, str], metric: str,
          budget_label: str, reference: str) -> None:
    e = html.escape
    parts = [f"<html><head><meta charset='utf-8'><title>{e(cfg.title)}</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}th{background:#eee}.v{font-size:15px;margin:.4em 0}</style>",
             f"</head><body><h1>{e(cfg.title)}</h1>", "<h2>Verdict</h2>"]
    n_seeds = int(t.n_seeds.max()) if len(t) else 0
    n_cases = int(t.n_cases.max()) if len(t) else 0
    for b, s in verdict.items():
        parts.append(f"<p class='v'><b>{'clean' if b == 0 else e(f'{budget_label} {b:g}')}:</b> {e(s)}</p>")
    parts.append(f"<p>Per-case {metric} on {n_cases} test cases, {n_seeds} seed(s); attack: {e(cfg.attack)}. Differences are "
                 f"method minus {e(reference)} with {cfg.confidence:.0%} bootstrap intervals paired by case; p-values from the "
                 f"Wilcoxon signed-rank test, Holm-corrected over all methods and budgets (level {cfg.alpha}).</p>")
    parts.append("<h2>Compute per method</h2><table><tr><th>method</th><th>selected by</th><th>epochs run</th><th>best epoch</th>"
                 "<th>training passes (fwd+bwd)</th><th>validation-attack passes</th><th>training s</th><th>pass budget</th></tr>")
    for m, g in t.groupby("method", sort=False):
        r = g.iloc[0]
        parts.append("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in (m, r.get("select_metric"), r.get("epochs_run"), r.get("best_epoch"),
                                                                     r.get("passes_train"), r.get("passes_val_attack"),
                                                                     r.get("train_seconds"), r.get("budget_passes"))) + "</tr>")
    parts.append("</table>")
    cols = ["method", "budget", "n_seeds", "n_cases", "clean_mean", "clean_sd", "robust_mean", "robust_sd", "diff", "ci_low",
            "ci_high", "p_value", "p_holm", "pareto"]
    parts.append("<h2>Table</h2><table><tr>" + "".join(f"<th>{c}</th>" for c in cols) + "</tr>")
    for _, r in t.iterrows():
        parts.append("<tr>" + "".join(f"<td>{_fmt(r[c])}</td>" for c in cols) + "</tr>")
    parts.append("</table>")
    for img, cap in (("pareto.png", "Clean versus robust per budget (Pareto front in red)"),
                     ("forest.png", "Paired differences with confidence intervals"), ("comparison.png", "Metric versus budget")):
        parts.append(f"<h3>{cap}</h3><img src='{img}' style='max-width:100%'>")
    parts.append("<h2>Per-case tables</h2><ul><li><a href='per_case.csv'>per_case.csv</a> (every method, seed, case and budget)</li>"
                 "<li><a href='comparison.csv'>comparison.csv</a></li>")
    for m, paths in cfg.evals.items():
        for i, p in enumerate(_paths(paths)):
            d = Path(resolve_path(p, base_dir))
            rel = os.path.relpath(d.resolve(), out_dir.resolve())
            parts.append(f"<li>{e(m)} seed #{i}: <a href='{e(rel)}/results.csv'>results.csv</a>, "
                         f"<a href='{e(rel)}/report.html'>report</a></li>")
    parts.append("</ul></body></html>")
    write_text_atomic(out_dir / "study_report.html", "\n".join(parts))
