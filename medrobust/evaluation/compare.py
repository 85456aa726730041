"""``compare`` pipeline step: one table and plot across methods evaluated with the same attacks.

```yaml
- id: compare
  command: compare
  config:
    evals: {standard: ${eval_standard.run_dir}, ima: ${eval_ima.run_dir}}
    trains: {standard: ${train_standard.run_dir}, ima: ${train_ima.run_dir}}   # optional: training time
    attack: worst_case            # an attack label of the evaluations, or worst_case (default)
```

Writes ``comparison.csv`` (method x budget: clean and robust metric, sd, pooled Dice, case-level
Dice of 2D models (slices of a case pooled) or accuracy / balanced accuracy / AUC,
training time, fastest training epoch (the usual timing statistic on a shared, noisy machine) and its ratio to the
first method's), ``comparison.md`` and
``comparison.png`` (metric versus budget per method; clean versus robust metric at each budget).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pandas as pd
from pydantic import Field

from medrobust.config import Strict, resolve_path
from medrobust.errors import ConfigError
from medrobust.utils import write_text_atomic


class CompareConfig(Strict):
    evals: dict[str, str]
    trains: dict[str, str] = Field(default_factory=dict)
    attack: str = "worst_case"
    output_dir: str = "runs/compare"
    title: str = "method comparison"


@dataclass
class CompareResult:
    run_dir: Path
    table: pd.DataFrame

    @staticmethod
    def paths(run_dir: Path) -> dict[str, str]:
        """The outputs a comparison in ``run_dir`` writes (the one place pipelines read them from)."""
        run_dir = Path(run_dir)
        return {"run_dir": str(run_dir), "results": str(run_dir / "comparison.csv"),
                "summary": str(run_dir / "comparison.md"), "report": str(run_dir / "comparison.png")}

    def outputs(self) -> dict[str, str]:
        return self.paths(self.run_dir)


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


def run_compare(cfg: CompareConfig, base_dir: Path) -> CompareResult:
    from medrobust.outputs import check_writable_dir, claim_output_dir, release_output_dir

    out_dir = Path(resolve_path(cfg.output_dir, base_dir))
    check_writable_dir(out_dir)
    rows = []
    ref_epoch = None
    for method, path in cfg.evals.items():
        s = _load_summary(resolve_path(path, base_dir))
        seg = s["task"] == "segmentation"
        per = s["worst_case"] if cfg.attack == "worst_case" else s["attacks"].get(cfg.attack)
        if per is None:
            raise ConfigError(f"attack '{cfg.attack}' is not in the evaluation of '{method}' (it has {', '.join(s['attacks'])}); set compare.attack.")
        clean = s["clean"]["dice"]["mean"] if seg else s["clean"]["accuracy"]
        clean_case = s["clean"].get("case_dice", {}).get("mean") if seg else None
        t_total, t_epoch, n_ep = _train_time(resolve_path(cfg.trains[method], base_dir)) if method in cfg.trains else (None, None, None)
        if ref_epoch is None and t_epoch:
            ref_epoch = t_epoch
        for b, blk in sorted(per.items(), key=lambda kv: float(kv[0])):
            r = {"method": method, "attack": cfg.attack, "budget": float(b), "clean": clean}
            if seg:
                r.update({"robust": blk["dice"]["mean"], "robust_sd": blk["dice"]["sd"], "robust_median": blk["dice"]["median"],
                          "robust_pooled": blk["pooled_dice_mean"], "clean_case_dice": clean_case,
                          "robust_case_dice": blk.get("case_dice", {}).get("mean")})
            else:
                r.update({"robust": blk["accuracy"], "robust_bacc": blk["balanced_accuracy"], "robust_auc": blk["auc"]})
            r.update({"train_time_s": t_total, "epochs": n_ep, "time_per_epoch_s": t_epoch,
                      "time_per_epoch_vs_first": (t_epoch / ref_epoch) if (t_epoch and ref_epoch) else None})
            rows.append(r)
    table = pd.DataFrame(rows)
    claim_output_dir(out_dir, "compare", cfg.model_dump(mode="json"))
    write_text_atomic(out_dir / "comparison.csv", table.to_csv(index=False))
    write_text_atomic(out_dir / "comparison.md", _markdown(table, cfg))
    _plot(table, out_dir / "comparison.png", cfg)
    release_output_dir(out_dir)
    return CompareResult(out_dir, table)


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
    from medrobust.evaluation.plots import _plt, _save

    plt = _plt()
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
    _save(fig, path)
