"""Summaries, plots and the HTML report of a robustness sweep."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medrobust.evaluation.metrics import classification_metrics, normalised_auc, pooled_dice
from medrobust.plotting import mid_slice, pyplot, save_figure

log = logging.getLogger(__name__)


def _stats(v: pd.Series) -> dict[str, float]:
    a = pd.to_numeric(v, errors="coerce").astype(float).to_numpy()
    a = a[~np.isnan(a)]
    if len(a) == 0:
        return {"n": 0, "mean": float("nan"), "sd": float("nan"), "median": float("nan"), "q1": float("nan"), "q3": float("nan")}
    return {"n": int(len(a)), "mean": float(a.mean()), "sd": float(a.std(ddof=1)) if len(a) > 1 else 0.0,
            "median": float(np.median(a)), "q1": float(np.percentile(a, 25)), "q3": float(np.percentile(a, 75))}


def _seg_block(d: pd.DataFrame, k_classes: list[int], class_cols: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"dice": _stats(d["dice"]), "success_rate": float(d["success"].mean()) if len(d) else float("nan")}
    counts = np.stack([d[[f"tp_{k}", f"fp_{k}", f"fn_{k}"]].to_numpy(dtype=float) for k in k_classes], 1)  # (N, K-1, 3)
    pd_ = pooled_dice(counts)
    out["pooled_dice"] = {c.removeprefix("dice_"): float(v) for c, v in zip(class_cols, pd_)}
    out["pooled_dice_mean"] = float(np.nanmean(pd_)) if np.isfinite(pd_).any() else float("nan")
    out["class_dice"] = {c.removeprefix("dice_"): _stats(d[c])["mean"] for c in class_cols}
    for met in ("hd95", "nsd", "iou"):
        if met in d:
            out[met] = _stats(d[met])
    for extra in ("dice_mean", "dice_worst", "dice_sd"):
        if extra in d:
            out[extra] = _stats(d[extra])["mean"]
    if (d["slice"] >= 0).any():
        # case-level Dice of 2D models: pool the slices of each case
        per_case = []
        for _, g in d.groupby("case"):
            c = np.stack([g[[f"tp_{k}", f"fp_{k}", f"fn_{k}"]].to_numpy(dtype=float) for k in k_classes], 1)
            v = pooled_dice(c)
            per_case.append(float(np.nanmean(v)) if np.isfinite(v).any() else 1.0)
        out["case_dice"] = _stats(pd.Series(per_case))
    return out


def _cls_block(d: pd.DataFrame, n_classes: int) -> dict[str, Any]:

    probs = d[[f"prob_{k}" for k in range(n_classes)]].to_numpy(dtype=float)
    labels = d["label"].to_numpy(dtype=int)
    m = classification_metrics(probs, labels, n_classes)
    out = {"accuracy": m["accuracy"], "balanced_accuracy": m["balanced_accuracy"], "auc": m["auc"],
           "correct": _stats(d["correct"].astype(float)), "margin": _stats(d["margin"])}
    if "correct_mean" in d:
        out["accuracy_mean_draw"] = float(d["correct_mean"].mean())
    return out


def summarize(table: pd.DataFrame, cfg, info, budgets: list[float], labels: list[str], flags: list[str]) -> dict[str, Any]:
    seg = info.task == "segmentation"
    metric = "dice" if seg else "correct"
    k_classes = list(range(1, info.num_classes))
    class_cols = [f"dice_{info.label_map.get(k, f'class{k}')}" for k in k_classes]
    out: dict[str, Any] = {"task": info.task, "metric": metric, "flags": flags, "attacks": {}, "worst_case": {}, "auc": {}}

    def block(d: pd.DataFrame) -> dict[str, Any]:
        return _seg_block(d, k_classes, class_cols) if seg else _cls_block(d, info.num_classes)

    out["clean"] = block(table[table.attack == "clean"])
    headline = (lambda b: b["dice"]["mean"]) if seg else (lambda b: b["accuracy"])
    from medrobust.evaluation.artefact_report import artefact_labels, artefact_summary, attack_levels

    arts = artefact_labels(table)
    for a in labels:
        out["attacks"][a] = {}
        for b in attack_levels(table, a, budgets):
            d = table[(table.attack == a) & (table.budget == b)]
            if len(d):
                out["attacks"][a][str(b)] = block(d)
        vals = [headline(out["attacks"][a][str(b)]) for b in attack_levels(table, a, budgets) if str(b) in out["attacks"][a]]
        bs = [b for b in attack_levels(table, a, budgets) if str(b) in out["attacks"][a]]
        if 0.0 not in bs:
            bs, vals = [0.0] + bs, [headline(out["clean"])] + vals
        out["auc"][a] = normalised_auc(bs, vals)
    adv = table[(table.attack != "clean") & ~table.attack.isin(arts)]  # a severity level is not a budget
    if arts:
        out["artefacts"] = artefact_summary(table, metric)
    for b in budgets:
        d = adv[adv.budget == b]
        if not len(d):
            continue
        if seg:
            idx = d.groupby("sample")["dice"].idxmin()
        else:
            idx = d.assign(_c=d["correct"].astype(float)).groupby("sample")["_c"].idxmin()
        out["worst_case"][str(b)] = block(d.loc[idx])
    if seg:
        out["headline"] = headline_numbers(out)
    return out


def case_stats(block: dict[str, Any]) -> dict[str, float]:
    """Per-case Dice of a summary block: pooled over a case's slices (2D models), else the sample's Dice.

    Args:
        block: one attack-and-budget block of ``summary.json``.

    Returns:
        Its ``case_dice`` statistics when present, else its ``dice`` statistics.
    """
    return block.get("case_dice") or block["dice"]


def headline_numbers(summary: dict[str, Any]) -> dict[str, Any]:
    """The numbers a reader compares with the literature, first: per-case Dice, pooled Dice, then per-slice.

    Args:
        summary: a segmentation summary from :func:`summarize`.

    Returns:
        ``{"unit", "clean": {...}, "worst_case": {budget: {...}}}``, each entry with ``case_dice_mean``,
        ``case_dice_sd``, ``n_cases``, ``pooled_dice`` and, for 2D models of volumes, ``slice_dice_mean``
        and ``n_slices`` (slices with the empty-class conventions of the Dice).
    """
    sliced = "case_dice" in summary["clean"]

    def entry(b: dict[str, Any]) -> dict[str, Any]:
        c = case_stats(b)
        e = {"case_dice_mean": c["mean"], "case_dice_sd": c["sd"], "n_cases": c["n"], "pooled_dice": b["pooled_dice_mean"]}
        if sliced:
            e.update({"slice_dice_mean": b["dice"]["mean"], "n_slices": b["dice"]["n"]})
        return e

    return {"unit": "slice" if sliced else "case", "clean": entry(summary["clean"]),
            "worst_case": {k: entry(v) for k, v in summary["worst_case"].items()}}


def summary_table(summary: dict[str, Any]) -> str:
    seg = summary["task"] == "segmentation"
    lines = []
    if seg:
        c = summary["clean"]
        sliced = "case_dice" in c
        cd = case_stats(c)
        line = f"clean: case Dice {cd['mean']:.4f} +- {cd['sd']:.4f} (n={cd['n']} cases); pooled Dice {c['pooled_dice_mean']:.4f}"
        if sliced:
            line += f"; per-slice Dice {c['dice']['mean']:.4f} (n={c['dice']['n']} slices, empty-class conventions)"
        lines.append(line)
        lines.append(f"{'attack':28s} {'budget':>8s} {'case Dice':>10s} {'sd':>7s} {'median':>7s} {'IQR':>15s} {'pooled':>7s}"
                     + (f" {'per-slice':>9s}" if sliced else ""))
        for a, per in list(summary["attacks"].items()) + [("worst case", summary["worst_case"])]:
            for b, s in per.items():
                d = case_stats(s)
                lines.append(f"{a:28s} {float(b):8.4g} {d['mean']:10.4f} {d['sd']:7.4f} {d['median']:7.4f} "
                             f"[{d['q1']:.3f}, {d['q3']:.3f}] {s['pooled_dice_mean']:7.4f}"
                             + (f" {s['dice']['mean']:9.4f}" if sliced else ""))
    else:
        c = summary["clean"]
        lines.append(f"clean: accuracy {c['accuracy']:.4f}  balanced {c['balanced_accuracy']:.4f}  AUC {c['auc']:.4f} (n={c['correct']['n']})")
        lines.append(f"{'attack':28s} {'budget':>8s} {'accuracy':>9s} {'bal.acc':>8s} {'AUC':>7s}")
        for a, per in list(summary["attacks"].items()) + [("worst case", summary["worst_case"])]:
            for b, s in per.items():
                lines.append(f"{a:28s} {float(b):8.4g} {s['accuracy']:9.4f} {s['balanced_accuracy']:8.4f} {s['auc']:7.4f}")
    if summary.get("auc"):
        lines.append("normalised area under metric-budget curve: " + ", ".join(f"{a} {v:.4f}" for a, v in summary["auc"].items()))
    for a, per in (summary.get("gradient_evaluations") or {}).items():
        spent = [f"{b}: {v['mean_per_case']:.0f}" for b, v in per.items() if isinstance(v, dict)]
        if spent and per.get("nominal_per_case"):
            lines.append(f"gradient evaluations per case, {a}: nominal {per['nominal_per_case']:.0f}, spent {', '.join(spent)}")
    for f in summary.get("flags", []):
        lines.append(f"FLAG {f}")
    return "\n".join(lines)


# ============================================================================ plots
def plot_metric_vs_budget(table: pd.DataFrame, summary: dict[str, Any], path: Path, units: str, norm: str) -> None:
    plt = pyplot()
    seg = summary["task"] == "segmentation"
    metric = "dice" if seg else "correct"
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    from medrobust.evaluation.artefact_report import artefact_labels

    for a in [a for a in summary["attacks"] if a not in artefact_labels(table)]:
        d = table[table.attack == a]
        g = d.groupby("budget")[metric].apply(lambda s: s.astype(float))
        bs = sorted(d.budget.unique())
        means = [d[d.budget == b][metric].astype(float).mean() for b in bs]
        ax.plot(bs, means, marker="o", label=a)
        if seg:
            q1 = [d[d.budget == b][metric].quantile(0.25) for b in bs]
            q3 = [d[d.budget == b][metric].quantile(0.75) for b in bs]
            ax.fill_between(bs, q1, q3, alpha=0.15)
        del g
    wc = summary["worst_case"]
    if len(summary["attacks"]) > 1 and wc:
        bs = sorted(float(b) for b in wc)
        ax.plot(bs, [wc[str(b)]["dice"]["mean"] if seg else wc[str(b)]["accuracy"] for b in bs], "k--", label="worst case")
    ax.set_xlabel(f"budget ({norm}, {units} units)")
    ax.set_ylabel("mean foreground Dice per sample (slice or volume)" if seg else "accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("robustness curve" + (" (band: IQR)" if seg else ""))
    save_figure(fig, path)


def plot_per_class(table: pd.DataFrame, summary: dict[str, Any], path: Path, units: str) -> None:
    plt = pyplot()
    cols = [c for c in table.columns if c.startswith("dice_") and c not in ("dice_mean", "dice_worst", "dice_sd")]
    if not cols:
        return
    fig, axes = plt.subplots(1, len(cols), figsize=(4 * len(cols), 3.4), squeeze=False)
    from medrobust.evaluation.artefact_report import artefact_labels

    for ax, c in zip(axes[0], cols):
        for a in [a for a in summary["attacks"] if a not in artefact_labels(table)]:
            d = table[table.attack == a]
            bs = sorted(d.budget.unique())
            ax.plot(bs, [d[d.budget == b][c].mean() for b in bs], marker="o", label=a)
        ax.set_title(c.removeprefix("dice_"))
        ax.set_xlabel(f"budget ({units})")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("mean Dice")
    axes[0][-1].legend(fontsize=7)
    save_figure(fig, path)


def plot_distributions(table: pd.DataFrame, summary: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    seg = summary["task"] == "segmentation"
    metric = "dice" if seg else "margin"
    attacks = list(summary["attacks"])
    if not attacks:
        return
    fig, axes = plt.subplots(1, len(attacks), figsize=(max(4, 3.6 * len(attacks)), 3.6), squeeze=False, sharey=True)
    for ax, a in zip(axes[0], attacks):
        d = table[table.attack == a]
        bs = sorted(d.budget.unique())
        data = [d[d.budget == b][metric].dropna().astype(float).to_numpy() for b in bs]
        ax.boxplot(data, positions=list(range(1, len(bs) + 1)), showfliers=True)
        ax.set_xticks(list(range(1, len(bs) + 1)), [f"{b:g}" for b in bs])
        ax.set_title(a, fontsize=9)
        ax.set_xlabel("budget")
    axes[0][0].set_ylabel("Dice per case" if seg else "logit margin per case")
    save_figure(fig, path)


def plot_examples(items: list[dict[str, Any]], path: Path, num_classes: int, seg: bool, attack: str, artefact: bool = False) -> None:
    if not items:
        return
    plt = pyplot()
    n = len(items)
    cols = 5 if seg else 3
    fig, axes = plt.subplots(n, cols, figsize=(2.6 * cols, 2.6 * n), squeeze=False)
    for r, it in enumerate(items):
        img = it["image"][0].numpy()
        adv = it["adv"][0].numpy()
        lab = it["label"].numpy()
        lab = lab[0] if lab.ndim == img.ndim + 1 else lab
        if seg:
            pc, pa = it["pred_clean"].numpy(), it["pred_adv"].numpy()
            img2, lab2 = mid_slice(img, lab)
            adv2, _ = mid_slice(adv, lab)
            pc2, _ = mid_slice(pc, lab)
            pa2, _ = mid_slice(pa, lab)
            panels = [(img2, "gray", "image"), (lab2, "tab10", "ground truth"), (pc2, "tab10", "clean prediction"),
                      (pa2, "tab10", f"adversarial (Dice {it['metric_adv']:.2f})"), (adv2 - img2, "RdBu_r", f"perturbation (budget {it['budget']:g})")]
            if artefact:  # show the corrupted image itself, in the clean image's grey levels
                panels[3] = (pa2, "tab10", f"prediction (Dice {it['metric_adv']:.2f}, drop {it.get('drop', float('nan')):.2f})")
                panels[4] = (adv2, ("gray", float(img2.min()), float(img2.max())), f"{attack}, severity {it['budget']:g}")
        else:
            img2, _ = mid_slice(img, None)
            adv2, _ = mid_slice(adv, None)
            panels = [(img2, "gray", f"image (label {int(lab)})"), (adv2, "gray", f"adversarial (pred {int(it['pred_adv'])})"),
                      (adv2 - img2, "RdBu_r", f"perturbation (budget {it['budget']:g})")]
        for c, (arr, cmap, title) in enumerate(panels):
            ax = axes[r][c]
            if isinstance(cmap, tuple):
                ax.imshow(arr.T, cmap=cmap[0], vmin=cmap[1], vmax=cmap[2])
            elif cmap == "tab10":
                ax.imshow(arr.T, cmap=cmap, vmin=0, vmax=9, interpolation="nearest")
            elif cmap == "RdBu_r":
                v = float(np.abs(arr).max()) or 1.0
                im = ax.imshow(arr.T, cmap=cmap, vmin=-v, vmax=v)
                fig.colorbar(im, ax=ax, fraction=0.046)
            else:
                ax.imshow(arr.T, cmap=cmap)
            ax.set_title(title if r == 0 or c >= 3 else "", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(it["id"], fontsize=7)
    fig.suptitle(f"largest Dice drops under {attack} (highest severity)" if artefact else f"examples under {attack}")
    save_figure(fig, path)


def write_report(run_dir: Path, table: pd.DataFrame, summary: dict[str, Any], examples: dict[str, list], info, cfg) -> dict[str, str]:
    files: dict[str, str] = {}
    seg = summary["task"] == "segmentation"
    try:
        plot_metric_vs_budget(table, summary, run_dir / "metric_vs_budget.png", cfg.threat.units, cfg.threat.norm)
        files["curve"] = "metric_vs_budget.png"
        if seg:
            plot_per_class(table, summary, run_dir / "per_class_vs_budget.png", cfg.threat.units)
            files["per_class"] = "per_class_vs_budget.png"
        plot_distributions(table, summary, run_dir / "distributions.png")
        from medrobust.evaluation.artefact_report import artefact_labels, plot_severity_curves

        if plot_severity_curves(table, run_dir / "metric_vs_severity.png", "dice" if seg else "correct"):
            files["severity"] = "metric_vs_severity.png"
        files["distributions"] = "distributions.png"
        if examples:
            cands = [a for a in examples if a not in artefact_labels(table)] or list(examples)
            hm = max(float(b) for b in summary["attacks"][cands[0]].keys()) if summary["attacks"].get(cands[0]) else 0.0
            strongest = min(cands, key=lambda a: summary["attacks"][a].get(str(hm), {}).get("dice", {}).get("mean", 1.0)
                            if seg else summary["attacks"][a].get(str(hm), {}).get("accuracy", 1.0))
            for a, items in examples.items():
                name = f"examples_{a.replace('/', '_')}.png"
                plot_examples(items, run_dir / name, info.num_classes, seg, a, artefact=a in artefact_labels(table))
                files[f"examples:{a}"] = name
                if a in artefact_labels(table):
                    files[f"artefact_examples:{a}"] = name
            files["examples_strongest"] = f"examples_{strongest.replace('/', '_')}.png"
    except Exception as exc:  # noqa: BLE001 - the numbers are written already; a plot failure must not lose them
        log.warning("could not draw every plot: %s", exc)
    from medrobust.evaluation.html_report import write_html_report

    write_html_report(run_dir, table, summary, files, info.num_classes)
    files["report"] = "report.html"
    if (run_dir / "per_case.csv").is_file():
        files["per_case"] = "per_case.csv"
    return files
