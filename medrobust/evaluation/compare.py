"""``compare`` pipeline step: one table and plot across methods evaluated with the same attacks.

```yaml
- id: compare
  command: compare
  config:
    evals: {standard: ${eval_standard.run_dir}, ima: ${eval_ima.run_dir}}
    trains: {standard: ${train_standard.run_dir}, ima: ${train_ima.run_dir}}   # optional: training time
    attack: worst_case            # an attack label of the evaluations, or worst_case (default)
```

With several training seeds give each method a list of run folders (one per seed, same order in
``evals`` and ``trains``); a pipeline with ``seeds:`` fills these lists itself.

Writes ``comparison.csv`` (method x budget), paired by case against ``reference`` (default: the
first method): ``clean_mean`` / ``robust_mean`` (mean over seeds of the case means) with ``_sd``
over seeds, ``diff`` (mean per-case difference, seeds averaged per case first) with ``ci_low`` /
``ci_high`` (bootstrap, paired by case), ``p_value`` (Wilcoxon signed-rank) and ``p_holm`` (Holm
over every method x budget), ``pareto`` (on the clean-vs-robust front at that budget), each
method's compute (``passes_train``, ``passes_val_attack``, ``train_seconds``, ``epochs_run``,
``select_metric``, ``best_epoch``), plus the evaluation summaries' means (``clean``, ``robust``,
pooled and case-level Dice, or accuracy / balanced accuracy / AUC, training time). Also
``per_case.csv``, ``comparison.md``, ``comparison.png``, ``pareto.png``, ``forest.png`` and
``study_report.html``, which leads with a plain-language verdict per budget (see
:mod:`medrobust.study`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Optional, Union

import numpy as np
import pandas as pd
from pydantic import Field

from medrobust.config import Strict, resolve_path
from medrobust.errors import ConfigError
from medrobust.evaluation.results import RunResult
from medrobust.utils import write_text_atomic


class CompareConfig(Strict):
    evals: dict[str, Union[str, list[str]]]
    trains: dict[str, Union[str, list[str]]] = Field(default_factory=dict)
    attack: str = "worst_case"
    output_dir: str = "runs/compare"
    title: str = "method comparison"
    reference: Optional[str] = Field(None, description="method the others are compared with; default the first")
    confidence: float = Field(0.95, gt=0, lt=1)
    alpha: float = Field(0.05, gt=0, lt=1, description="family-wise level for the Holm-corrected tests")
    n_resamples: int = Field(9999, ge=100, description="bootstrap resamples")


@dataclass
class CompareResult(RunResult):
    table: pd.DataFrame
    FILES: ClassVar[dict[str, str]] = {"results": "comparison.csv", "summary": "comparison.md", "report": "study_report.html"}


def _load_summary(path: str) -> dict[str, Any]:
    p = Path(path)
    if p.is_dir():
        p = p / "summary.json"
    if not p.is_file():
        raise ConfigError(f"evaluation summary '{p}' does not exist; run the evaluation step first.")
    return json.loads(p.read_text())


def _train_time(path: str) -> tuple[Optional[float], Optional[float], Optional[int]]:
    p = Path(path) / "metrics.csv"
    if not p.is_file():
        return None, None, None
    m = pd.read_csv(p)
    if "time_train_s" not in m:
        return None, None, None
    return float(m["time_train_s"].sum()), float(m["time_train_s"].min()), int(len(m))


def _as_list(v: Union[str, list[str]]) -> list[str]:
    return [v] if isinstance(v, str) else list(v)


def _mean(vals: list[Any]) -> Optional[float]:
    v = [float(x) for x in vals if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return float(np.mean(v)) if v else None


def run_compare(cfg: CompareConfig, base_dir: Path) -> CompareResult:
    from medrobust.outputs import check_writable_dir, claim_output_dir, release_output_dir

    out_dir = Path(resolve_path(cfg.output_dir, base_dir))
    check_writable_dir(out_dir)
    from medrobust.study.report import study

    for method, tr in cfg.trains.items():
        if method in cfg.evals and len(_as_list(tr)) != len(_as_list(cfg.evals[method])):
            raise ConfigError(f"compare: method '{method}' has {len(_as_list(cfg.evals[method]))} evaluation(s) but {len(_as_list(tr))} training run(s); give one training run per seed.")
    rows = []
    ref_epoch = None
    for method, paths in cfg.evals.items():
        sums = [_load_summary(resolve_path(p, base_dir)) for p in _as_list(paths)]
        seg = sums[0]["task"] == "segmentation"
        pers = []
        for s in sums:
            per = s["worst_case"] if cfg.attack == "worst_case" else s["attacks"].get(cfg.attack)
            if per is None:
                raise ConfigError(f"attack '{cfg.attack}' is not in the evaluation of '{method}' (it has {', '.join(s['attacks'])}); set compare.attack.")
            pers.append(per)
        clean = _mean([s["clean"]["dice"]["mean"] if seg else s["clean"]["accuracy"] for s in sums])
        clean_case = _mean([s["clean"].get("case_dice", {}).get("mean") for s in sums]) if seg else None
        times = [_train_time(resolve_path(p, base_dir)) for p in _as_list(cfg.trains[method])] if method in cfg.trains else []
        t_total = _mean([t[0] for t in times])
        t_epoch = _mean([t[1] for t in times])
        n_ep = _mean([t[2] for t in times])
        if ref_epoch is None and t_epoch:
            ref_epoch = t_epoch
        for b in sorted(pers[0], key=float):
            blks = [p[b] for p in pers if b in p]
            r = {"method": method, "attack": cfg.attack, "budget": float(b), "clean": clean}
            if seg:
                r.update({"robust": _mean([k["dice"]["mean"] for k in blks]), "robust_sd": _mean([k["dice"]["sd"] for k in blks]),
                          "robust_median": _mean([k["dice"]["median"] for k in blks]),
                          "robust_pooled": _mean([k["pooled_dice_mean"] for k in blks]), "clean_case_dice": clean_case,
                          "robust_case_dice": _mean([k.get("case_dice", {}).get("mean") for k in blks])})
            else:
                r.update({"robust": _mean([k["accuracy"] for k in blks]), "robust_bacc": _mean([k["balanced_accuracy"] for k in blks]),
                          "robust_auc": _mean([k["auc"] for k in blks])})
            r.update({"train_time_s": t_total, "epochs": n_ep, "time_per_epoch_s": t_epoch,
                      "time_per_epoch_vs_first": (t_epoch / ref_epoch) if (t_epoch and ref_epoch) else None})
            rows.append(r)
    legacy = pd.DataFrame(rows)
    claim_output_dir(out_dir, "compare", cfg.model_dump(mode="json"))
    table = study(cfg, base_dir, out_dir, legacy)
    write_text_atomic(out_dir / "comparison.csv", table.to_csv(index=False))
    write_text_atomic(out_dir / "comparison.md", _markdown(legacy, cfg) + "\n" + _stats_markdown(table, cfg))
    _plot(legacy, out_dir / "comparison.png", cfg)
    release_output_dir(out_dir)
    return CompareResult(out_dir, table)


def _stats_markdown(t: pd.DataFrame, cfg: CompareConfig) -> str:
    from medrobust.study.stats import fmt_diff

    ref = t.attrs.get("reference", "")
    lines = ["## Paired statistics (per case; seeds averaged per case)", "",
             f"Reference: {ref}. Difference = method minus reference, mean over cases, {cfg.confidence:.0%} bootstrap CI; "
             "Wilcoxon signed-rank p, Holm-corrected over every method x budget; mean +- sd over seeds of the case means.", "",
             "| method | budget | seeds | cases | clean | robust | diff vs ref [CI] | p | p (Holm) | Pareto | train passes | train s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in t.iterrows():
        sd = lambda v: f" +- {v:.3f}" if pd.notna(v) and r.n_seeds > 1 else ""  # noqa: E731
        lines.append(f"| {r.method} | {r.budget:g} | {int(r.n_seeds)} | {int(r.n_cases)} | {r.clean_mean:.3f}{sd(r.clean_sd)} | "
                     f"{r.robust_mean:.3f}{sd(r.robust_sd)} | {fmt_diff(r['diff'], r.ci_low, r.ci_high) if r.method != ref else 'reference'} | "
                     f"{_p(r.p_value)} | {_p(r.p_holm)} | {'yes' if r.pareto else ''} | {_int(r.get('passes_train'))} | {_num(r.get('train_seconds'))} |")
    return "\n".join(lines) + "\n"


def _p(v: Any) -> str:
    return "" if v is None or pd.isna(v) else (f"{v:.2g}" if v < 0.01 else f"{v:.3f}")


def _int(v: Any) -> str:
    return "" if v is None or pd.isna(v) else f"{float(v):,.0f}"


def _num(v: Any) -> str:
    return "" if v is None or pd.isna(v) else f"{float(v):.0f}"


def _markdown(t: pd.DataFrame, cfg: CompareConfig) -> str:
    budgets = sorted(t.budget.unique())
    case = "robust_case_dice" in t and t["robust_case_dice"].notna().any()
    first = t["method"].iloc[0]
    head = ("| method | clean | " + " | ".join(f"robust @ {b:g}" for b in budgets)
            + f" | train time (s) | s/epoch (fastest) | s/epoch vs {first} |")
    sep = "|" + "---|" * (len(budgets) + 5)
    if case:
        head = head.replace(" | train time", " | case Dice clean / @ " + " / @ ".join(f"{b:g}" for b in budgets if b > 0) + " | train time")
        sep += "---|"
    lines = [f"# {cfg.title} (attack: {cfg.attack})", "", head, sep]
    for m, g in t.groupby("method", sort=False):
        vals = [f"{g[g.budget == b]['robust'].iloc[0]:.4f}" if (g.budget == b).any() else "" for b in budgets]
        tt, te, ratio = g["train_time_s"].iloc[0], g["time_per_epoch_s"].iloc[0], g["time_per_epoch_vs_first"].iloc[0]
        timing = f" {tt:.0f} | {te:.1f} | {ratio:.2f} |" if pd.notna(tt) and pd.notna(ratio) else " | | |"
        if case:
            cd = [g["clean_case_dice"].iloc[0]] + [g[g.budget == b]["robust_case_dice"].iloc[0] for b in budgets if b > 0 and (g.budget == b).any()]
            timing = " " + " / ".join(f"{v:.3f}" for v in cd) + " |" + timing
        lines.append(f"| {m} | {g['clean'].iloc[0]:.4f} | " + " | ".join(vals) + " |" + timing)
    return "\n".join(lines) + "\n"


def _plot(t: pd.DataFrame, path: Path, cfg: CompareConfig) -> None:
    from medrobust.plotting import pyplot, save_figure

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for m, g in t.groupby("method", sort=False):
        axes[0].plot(g["budget"], g["robust"], marker="o", label=m)
    axes[0].set_xlabel("budget")
    axes[0].set_ylabel("robust metric (mean per case)")
    axes[0].set_ylim(-0.02, 1.02)
    axes[0].grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[0].set_title(f"{cfg.attack} vs budget")
    budgets = [b for b in sorted(t.budget.unique()) if b > 0]
    markers = "osD^v<>px*"
    for i, b in enumerate(budgets):
        d = t[t.budget == b]
        axes[1].scatter(d["clean"], d["robust"], marker=markers[i % len(markers)], label=f"budget {b:g}")
        for _, r in d.iterrows():
            axes[1].annotate(r["method"], (r["clean"], r["robust"]), fontsize=7, xytext=(3, 2), textcoords="offset points")
    axes[1].set_xlabel("clean metric")
    axes[1].set_ylabel("robust metric")
    axes[1].grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    axes[1].set_title("clean versus robust")
    fig.suptitle(cfg.title)
    save_figure(fig, path)
