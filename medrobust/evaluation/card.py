"""``robustness-card`` pipeline step: adversarial attacks, white noise and acquisition artefacts in one report.

```yaml
- id: card
  command: robustness-card
  config:
    evals: {standard: ${eval.run_dir}}            # evaluation(s) holding attacks, white noise and artefacts
                                                  # (a list per method joins several run folders)
    margins: {standard: ${margins.run_dir}}       # optional: per-case adversarial margins (margins command)
    title: MSD Hippocampus 2D robustness card
```

Writes to ``output_dir``:

- ``card.csv``: method x perturbation (each attack at each budget, each artefact at each severity):
  mean metric, mean of draws where there are draws, and the drop from clean;
- ``heatmap.png`` / ``heatmap.csv``: method x perturbation, one number per cell: adversarial
  attacks and white noise at the largest budget, artefacts averaged over severities 1-5;
- ``severity.png``: per artefact, the metric versus severity, one line per method;
- ``margin_correlation.csv``: per method and artefact, Spearman's rank correlation between a
  case's adversarial margin and its metric drop under the artefact (clean minus the worst draw,
  averaged over severities 1-5, or at ``drop_severity``), with a percentile bootstrap interval
  over cases (the slices of a 2D model's case resampled together); samples the model fails when
  clean (margin 0 by definition) are left out;
- ``examples/``: the worst cases per artefact (largest drops from clean at the top severity) copied from each evaluation; ``card.md`` and ``report.html``.

A negative correlation means larger adversarial margins go with smaller artefact damage.
"""

from __future__ import annotations

import html
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Optional, Union

import numpy as np
import pandas as pd
from pydantic import Field

from medrobust.config import Strict, resolve_path
from medrobust.errors import ConfigError
from medrobust.evaluation.artefact_report import artefact_labels
from medrobust.evaluation.results import RunResult
from medrobust.utils import write_text_atomic


class CardConfig(Strict):
    evals: dict[str, Union[str, list[str]]] = Field(..., description="method -> evaluation run folder(s); several are joined (e.g. attacks and artefacts run apart)")
    margins: dict[str, str] = Field(default_factory=dict, description="method -> margins run folder (margins.csv)")
    drop_severity: Optional[int] = Field(None, ge=1, le=5, description="severity of the drop in the correlation; None: mean over 1-5")
    n_boot: int = Field(2000, ge=100)
    seed: int = 0
    output_dir: str = "runs/card"
    title: str = "robustness card"


@dataclass
class CardResult(RunResult):
    table: pd.DataFrame
    correlation: pd.DataFrame
    FILES: ClassVar[dict[str, str]] = {"results": "card.csv", "summary": "card.md", "report": "report.html",
                                       "correlation": "margin_correlation.csv"}


def _folder(path: str, base_dir: Path, what: str, file: str) -> Path:
    p = Path(resolve_path(path, base_dir))
    p = p.parent if p.is_file() else p
    if not (p / file).is_file():
        raise ConfigError(f"{what} '{p}' has no {file}; run that step first or fix the path.")
    return p


def spearman_bootstrap(a: np.ndarray, b: np.ndarray, n_boot: int = 2000, seed: int = 0,
                       groups: Optional[np.ndarray] = None) -> dict[str, float]:
    """Spearman's rho of paired samples with a percentile bootstrap 95% interval.

    Args:
        a, b: paired values, one per sample (NaNs dropped pairwise).
        n_boot: bootstrap resamples.
        seed: seed of the resampling.
        groups: optional group of each pair (the case of a 2D slice): the bootstrap then resamples
            whole groups (a cluster bootstrap), since slices of one case are not independent.

    Returns:
        ``{"n", "n_groups", "rho", "lo", "hi"}`` (NaN when fewer than 4 pairs or a constant input;
        the interval is NaN with fewer than 5 groups).
    """
    from scipy.stats import rankdata

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    n = len(a)
    g = np.asarray(groups)[ok] if groups is not None else np.arange(n)
    uniq, gi = np.unique(g, return_inverse=True)
    nan = {"n": n, "n_groups": len(uniq), "rho": float("nan"), "lo": float("nan"), "hi": float("nan")}
    if n < 4 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return nan

    def rho(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        rx = np.apply_along_axis(rankdata, -1, x)
        ry = np.apply_along_axis(rankdata, -1, y)
        rx = rx - rx.mean(-1, keepdims=True)
        ry = ry - ry.mean(-1, keepdims=True)
        den = np.sqrt((rx ** 2).sum(-1) * (ry ** 2).sum(-1))
        with np.errstate(invalid="ignore", divide="ignore"):
            return (rx * ry).sum(-1) / den

    r0 = float(rho(a[None], b[None])[0])
    if len(uniq) < 5:  # a bootstrap over fewer than 5 cases has no meaningful spread
        return {**nan, "rho": r0}
    rng = np.random.default_rng(seed)
    if len(uniq) == n:
        idx = rng.integers(0, n, size=(n_boot, n))
        boots = rho(a[idx], b[idx])
    else:
        members = [np.flatnonzero(gi == k) for k in range(len(uniq))]
        boots = np.empty(n_boot)
        for r in range(n_boot):
            pick = np.concatenate([members[k] for k in rng.integers(0, len(uniq), len(uniq))])
            boots[r] = rho(a[pick][None], b[pick][None])[0]
    boots = boots[np.isfinite(boots)]
    lo, hi = (np.percentile(boots, [2.5, 97.5]) if len(boots) else (float("nan"), float("nan")))
    return {"n": n, "n_groups": len(uniq), "rho": r0, "lo": float(lo), "hi": float(hi)}


def _metric(summary: dict[str, Any]) -> str:
    return "dice" if summary["task"] == "segmentation" else "correct"


def _card_rows(method: str, t: pd.DataFrame, metric: str) -> list[dict[str, Any]]:
    arts = set(artefact_labels(t))
    clean = t[t.attack == "clean"][metric].astype(float).mean()
    rows = [{"method": method, "perturbation": "clean", "kind": "clean", "level": 0.0, "metric": clean, "drop": 0.0}]
    for a, g in t[t.attack != "clean"].groupby("attack", sort=False):
        kind = "artefact" if a in arts else ("noise" if f"{metric}_mean" in g and g[f"{metric}_mean"].notna().any() else "adversarial")
        for lv, h in g.groupby("budget"):
            if lv == 0:
                continue
            r = {"method": method, "perturbation": a, "kind": kind, "level": float(lv), "metric": h[metric].astype(float).mean()}
            r["drop"] = clean - r["metric"]
            if f"{metric}_mean" in h and h[f"{metric}_mean"].notna().any():
                r["metric_mean_of_draws"] = h[f"{metric}_mean"].astype(float).mean()
            rows.append(r)
    return rows


def _heat(card: pd.DataFrame) -> pd.DataFrame:
    cells = []
    for (m, p), g in card.groupby(["method", "perturbation"], sort=False):
        k = g["kind"].iloc[0]
        v = g["metric"].mean() if k == "artefact" else g.loc[g["level"].idxmax(), "metric"]
        cells.append({"method": m, "perturbation": p, "kind": k, "value": v})
    h = pd.DataFrame(cells)
    order = list(dict.fromkeys(h.sort_values("kind", key=lambda s: s.map({"clean": 0, "adversarial": 1, "noise": 2, "artefact": 3}))["perturbation"]))
    return h.pivot(index="method", columns="perturbation", values="value").reindex(columns=order).reindex(list(dict.fromkeys(card["method"])))


def _correlations(method: str, t: pd.DataFrame, margins: pd.DataFrame, metric: str, cfg: CardConfig) -> list[dict[str, Any]]:
    m = margins.copy()
    if "clean_success" in m:
        m = m[m["clean_success"].astype(bool)]
    clean = t[t.attack == "clean"].set_index("sample")[metric].astype(float)
    out = []
    for a in artefact_labels(t):
        g = t[(t.attack == a) & (t.severity > 0)]
        if cfg.drop_severity is not None:
            g = g[g.severity == cfg.drop_severity]
        if g.empty:
            continue
        drop = clean.reindex(g["sample"]).to_numpy() - g[metric].astype(float).to_numpy()
        per = pd.Series(drop, index=g["sample"].to_numpy()).groupby(level=0).mean()
        j = m.set_index("sample")["margin"].astype(float).to_frame().join(per.rename("drop"), how="inner")
        case = t.drop_duplicates("sample").set_index("sample")["case"] if "case" in t else None
        grp = case.reindex(j.index).astype(str).to_numpy() if case is not None else None
        r = spearman_bootstrap(j["margin"].to_numpy(), j["drop"].to_numpy(), cfg.n_boot, cfg.seed, grp)
        out.append({"method": method, "artefact": a, **r, "mean_drop": float(j["drop"].mean()) if len(j) else float("nan"),
                    "severity": cfg.drop_severity if cfg.drop_severity is not None else "mean 1-5"})
    return out


def _join_tables(tables: list[pd.DataFrame], method: str) -> pd.DataFrame:
    """One table from several evaluations of the same model: the clean rows of the first, every attack once."""
    seen: set[str] = set()
    parts = []
    for i, t in enumerate(tables):
        keep = t[t.attack != "clean"] if i else t
        dup = (set(keep.attack) - {"clean"}) & seen
        if dup:
            raise ConfigError(f"evaluations of '{method}' both hold attack(s) {sorted(dup)}; list each attack in one evaluation only.")
        seen |= set(keep.attack) - {"clean"}
        parts.append(keep)
    return pd.concat(parts, ignore_index=True, sort=False)


def run_card(cfg: CardConfig, base_dir: Path) -> CardResult:
    """Build the robustness card from evaluation (and margins) run folders; see the module docstring."""
    out = Path(resolve_path(cfg.output_dir, base_dir))
    out.mkdir(parents=True, exist_ok=True)
    unknown = sorted(set(cfg.margins) - set(cfg.evals))
    if unknown:
        raise ConfigError(f"margins are given for {unknown} but evals has no such method ({', '.join(cfg.evals)}); use the same method names.")
    rows: list[dict[str, Any]] = []
    cors: list[dict[str, Any]] = []
    examples: dict[str, list[str]] = {}
    metric = "dice"
    for method, paths in cfg.evals.items():
        folders = [_folder(p, base_dir, f"evaluation of '{method}'", "results.csv") for p in ([paths] if isinstance(paths, str) else paths)]
        if not folders:
            raise ConfigError(f"evals.{method} lists no evaluation folder; give one or more run folders.")
        summary = json.loads((folders[0] / "summary.json").read_text()) if (folders[0] / "summary.json").is_file() else {"task": "segmentation"}
        metric = _metric(summary)
        t = _join_tables([pd.read_csv(d / "results.csv") for d in folders], method)
        rows += _card_rows(method, t, metric)
        if method in cfg.margins:
            md = _folder(cfg.margins[method], base_dir, f"margins of '{method}'", "margins.csv")
            cors += _correlations(method, t, pd.read_csv(md / "margins.csv"), metric, cfg)
        for d in folders:
            for a in artefact_labels(t):
                src = d / f"examples_{a.replace('/', '_')}.png"
                if src.is_file():
                    dst = out / "examples" / f"{method}_{src.name}"
                    dst.parent.mkdir(exist_ok=True)
                    shutil.copyfile(src, dst)
                    examples.setdefault(a, []).append(str(dst.relative_to(out)))
    card = pd.DataFrame(rows)
    cor = pd.DataFrame(cors, columns=["method", "artefact", "n", "n_groups", "rho", "lo", "hi", "mean_drop", "severity"])
    heat = _heat(card)
    write_text_atomic(out / "card.csv", card.to_csv(index=False))
    write_text_atomic(out / "heatmap.csv", heat.to_csv())
    write_text_atomic(out / "margin_correlation.csv", cor.to_csv(index=False))
    files = _plots(card, heat, out, metric, cfg.title)
    write_text_atomic(out / "card.md", _markdown(card, heat, cor, cfg, metric))
    _html(out, cfg, heat, cor, files, examples, metric)
    return CardResult(out, card, cor)


def _plots(card: pd.DataFrame, heat: pd.DataFrame, out: Path, metric: str, title: str) -> dict[str, str]:
    from medrobust.plotting import pyplot, save_figure

    plt = pyplot()
    files = {}
    fig, ax = plt.subplots(figsize=(max(6.0, 0.75 * heat.shape[1] + 2), 0.55 * heat.shape[0] + 2.2))
    im = ax.imshow(heat.to_numpy(dtype=float), cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(heat.shape[1]), heat.columns, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(heat.shape[0]), heat.index, fontsize=8)
    for i in range(heat.shape[0]):
        for j in range(heat.shape[1]):
            v = heat.iat[i, j]
            if np.isfinite(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7)
    fig.colorbar(im, ax=ax, fraction=0.03, label=f"mean {metric}")
    ax.set_title(f"{title}\n(attacks / noise: largest budget; artefacts: mean over severities 1-5)", fontsize=9)
    save_figure(fig, out / "heatmap.png")
    files["heatmap"] = "heatmap.png"
    arts = list(dict.fromkeys(card.loc[card.kind == "artefact", "perturbation"]))
    if arts:
        cols = min(5, len(arts))
        nrow = int(np.ceil(len(arts) / cols))
        fig, axes = plt.subplots(nrow, cols, figsize=(2.9 * cols, 2.5 * nrow), squeeze=False, sharey=True)
        for ax, a in zip(axes.ravel(), arts):
            for m, g in card.groupby("method", sort=False):
                c = g[g.perturbation == "clean"]["metric"].iloc[0]
                h = g[g.perturbation == a].sort_values("level")
                ax.plot([0] + list(h["level"]), [c] + list(h["metric"]), "o-", ms=3, label=m)
            ax.set_title(a, fontsize=9)
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
        for ax in axes.ravel()[len(arts):]:
            ax.axis("off")
        axes[0][0].set_ylabel(f"mean {metric} (worst draw)")
        axes[0][0].legend(fontsize=7)
        fig.suptitle(f"{title}: {metric} versus artefact severity")
        fig.subplots_adjust(hspace=0.45)
        save_figure(fig, out / "severity.png")
        files["severity"] = "severity.png"
    return files


def _markdown(card: pd.DataFrame, heat: pd.DataFrame, cor: pd.DataFrame, cfg: CardConfig, metric: str) -> str:
    lines = [f"# {cfg.title}", "", f"Mean {metric} per case; attacks and white noise at the largest budget, artefacts averaged over severities 1-5.", ""]
    lines.append("| method | " + " | ".join(heat.columns) + " |")
    lines.append("|---|" + "---|" * heat.shape[1])
    for m, r in heat.iterrows():
        lines.append(f"| {m} | " + " | ".join(f"{v:.3f}" if np.isfinite(v) else "" for v in r) + " |")
    arts = card[card.kind == "artefact"]
    if not arts.empty:
        lines += ["", f"## {metric} by severity (worst draw)", "", "| method | artefact | " + " | ".join(f"s{s}" for s in range(1, 6)) + " |",
                  "|---|---|" + "---|" * 5]
        for (m, a), g in arts.groupby(["method", "perturbation"], sort=False):
            v = {int(r.level): r.metric for r in g.itertuples()}
            lines.append(f"| {m} | {a} | " + " | ".join(f"{v[s]:.3f}" if s in v else "" for s in range(1, 6)) + " |")
    if not cor.empty:
        lines += ["", "## Does the adversarial margin predict artefact robustness?", "",
                  f"Spearman's rho between a case's adversarial margin and its {metric} drop (clean minus artefact, "
                  f"{'severity ' + str(cfg.drop_severity) if cfg.drop_severity else 'mean over severities 1-5'}); "
                  f"95% percentile bootstrap over cases ({cfg.n_boot} resamples; the slices of a case are resampled together); "
                  "samples failed when clean left out. "
                  "Negative: larger margins, smaller drops.", "",
                  "| method | artefact | samples (cases) | rho | 95% interval | mean drop |", "|---|---|---|---|---|---|"]
        for r in cor.itertuples():
            ci = f"[{r.lo:+.3f}, {r.hi:+.3f}]" if np.isfinite(r.lo) else "n/a (fewer than 5 cases)"
            lines.append(f"| {r.method} | {r.artefact} | {r.n} ({r.n_groups}) | {r.rho:+.3f} | {ci} | {r.mean_drop:.3f} |")
    return "\n".join(lines) + "\n"


def _html(out: Path, cfg: CardConfig, heat: pd.DataFrame, cor: pd.DataFrame, files: dict[str, str],
          examples: dict[str, list[str]], metric: str) -> None:
    parts = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(cfg.title)}</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}img{max-width:100%}</style>",
             f"<h1>{html.escape(cfg.title)}</h1>",
             f"<p>Evaluations: {', '.join(html.escape(f'{k}: {v}') for k, v in cfg.evals.items())}. "
             f"Tables: <a href='card.csv'>card.csv</a>, <a href='heatmap.csv'>heatmap.csv</a>, "
             f"<a href='margin_correlation.csv'>margin_correlation.csv</a>, <a href='card.md'>card.md</a>.</p>"]
    if "heatmap" in files:
        parts.append(f"<h2>Method x perturbation</h2><img src='{files['heatmap']}'>")
    if "severity" in files:
        parts.append(f"<h2>{metric} versus artefact severity</h2><img src='{files['severity']}'>")
    if not cor.empty:
        parts.append("<h2>Does the adversarial margin predict artefact robustness?</h2>"
                     "<p>Spearman's rho between per-case adversarial margin and the drop under each artefact "
                     "(95% bootstrap interval). Negative: larger margins go with smaller drops.</p>")
        parts.append(cor.to_html(index=False, float_format=lambda v: f"{v:.3f}"))
    if examples:
        parts.append("<h2>Worst cases per artefact (highest severity)</h2>")
        for a, imgs in examples.items():
            parts.append(f"<h3>{html.escape(a)}</h3>" + "".join(f"<img src='{html.escape(p)}'>" for p in imgs))
    write_text_atomic(out / "report.html", "\n".join(parts))
