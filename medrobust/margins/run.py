"""``medrobust margins``: per-case margins and per-voxel maps for a trained model and a dataset.

Writes ``margins.csv`` (one row per sample: margin in the configured units and input units,
censoring, clean success and Dice / accuracy, clean logit-margin statistics), ``summary.json``
(minimum, mean, median, percentiles of the per-case margins: the minimum-versus-average margin
view of Wu & Yu), ``margin_histogram.png``, and for segmentation per-voxel maps: ``voxel_maps/``
(``.npz`` arrays, NIfTI with ``save_nifti``) and heat maps over the image for ``examples`` cases.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

from medrobust.attacks import build_attack
from medrobust.config import MarginsConfig
from medrobust.evaluation.results import RunResult
from medrobust.evaluation.sweep import prepare_eval, reseed_attack
from medrobust.margins.image import image_margins
from medrobust.margins.voxel import voxel_flip_budgets
from medrobust.threat import budget_to_input
from medrobust.utils import progress, to_jsonable, write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)


@dataclass
class MarginsResult(RunResult):
    table: pd.DataFrame
    summary: dict[str, Any]
    FILES: ClassVar[dict[str, str]] = {"results": "margins.csv", "summary": "summary.json"}

    def text_summary(self) -> str:
        s = self.summary["margin"]
        u = self.summary["units"]
        return (f"per-case margins ({self.summary['norm']}, {u} units, attack {self.summary['attack']}): "
                f"min {s['min']:.4g}  mean {s['mean']:.4g}  median {s['median']:.4g}  "
                f"p5 {s['p5']:.4g}  p95 {s['p95']:.4g}; {self.summary['censored_fraction']:.1%} censored at eps_max "
                f"{self.summary['eps_max']:g}; {self.summary['clean_failures']} clean failures (margin 0)")


def _stats(a: np.ndarray) -> dict[str, float]:
    return {"n": int(len(a)), "min": float(a.min()), "mean": float(a.mean()), "median": float(np.median(a)),
            "sd": float(a.std(ddof=1)) if len(a) > 1 else 0.0,
            **{f"p{q}": float(np.percentile(a, q)) for q in (5, 25, 75, 95)}, "max": float(a.max())}


def run_margins(cfg: MarginsConfig, resume: bool = False) -> MarginsResult:
    """Per-case margins (resumable per work item; sharded under ``torchrun``, rank 0 writes the outputs).

    Args:
        cfg: the margins config.
        resume: keep the finished work items of an interrupted run of the same config in ``output_dir``.

    Returns:
        The run folder, the table and the summary (on ranks other than 0 an empty table).

    Raises:
        ConfigError: bad settings, or ``resume`` on a folder started with another config.
    """
    from medrobust.evaluation.workitems import WorkItemStore, barrier, config_hash, finish

    t0 = time.time()
    setup = prepare_eval(cfg)
    spec = cfg.attack if isinstance(cfg.attack, dict) else {"name": cfg.attack}
    attack = build_attack({**spec, "seed": spec.get("seed", cfg.seed)}, setup.task, setup.threat)
    store = WorkItemStore(setup.run_dir, setup.item_ids(), config_hash(cfg.model_dump()), resume, setup.shard)
    todo = store.todo()
    for item in progress(todo, total=len(todo), desc="margins"):
        store.append(item, {"rows": _item_rows(setup, cfg, attack, item)})
    if not setup.shard.main:
        store.close()
        barrier(setup.shard)
        finish(setup.shard)
        return MarginsResult(setup.run_dir, pd.DataFrame(), {})
    table = pd.DataFrame([r for _, rec in store.gather() for r in rec["rows"]])
    summary = _summary(setup, cfg, attack, table, time.time() - t0)
    write_text_atomic(setup.run_dir / "margins.csv", table.to_csv(index=False))
    write_json_atomic(setup.run_dir / "summary.json", to_jsonable(summary))
    try:
        _plot_hist(table, setup.run_dir / "margin_histogram.png", cfg)
    except Exception as exc:  # noqa: BLE001
        log.warning("could not draw the margin histogram: %s", exc)
    finish(setup.shard)
    from medrobust.outputs import release_output_dir

    release_output_dir(setup.run_dir)
    return MarginsResult(setup.run_dir, table, summary)


def _item_rows(setup: Any, cfg: MarginsConfig, attack: Any, item: int) -> list[dict[str, Any]]:
    """The rows of one work item (seeded from its sample ids); voxel maps written for segmentation."""
    net, task, device = setup.net, setup.task, setup.device
    batch = setup.batch(item)
    reseed_attack(attack, "|".join(batch["id"]))
    x, y = batch["image"].to(device), batch["label"].to(device)
    unit = budget_to_input(1.0, cfg.threat.units, cfg.threat.norm, batch, x).double()
    eps_max = (cfg.eps_max * unit).to(x.dtype)
    margin, censored, ok = image_margins(net, task, attack, x, y, eps_max, cfg.bisection_steps)
    with torch.no_grad():
        logits = net(x)
        score = task.score(logits, y)
        lm = task.unit_margin(logits, y).reshape(len(x), -1).double()
    flips = None
    if cfg.task == "segmentation" and cfg.voxel_maps:
        lmap, flips = voxel_flip_budgets(net, task, setup.threat, x, y, eps_max, cfg.voxel_steps)
    rows = []
    for i in range(len(x)):
        r = {"sample": batch["id"][i], "case": batch["case"][i], "slice": int(batch["slice"][i]),
             "margin": float(margin[i] / unit[i]), "margin_input": float(margin[i]), "censored": bool(censored[i]),
             "clean_success": bool(ok[i]), "clean_score": float(score[i]),
             "logit_margin_mean": float(lm[i].mean()), "logit_margin_min": float(lm[i].min())}
        if flips is not None:
            fl = flips[i].reshape(-1)
            fg = task.label_elements(y[i:i + 1]).reshape(-1) > 0
            r["voxels_flipped_fraction"] = float((~torch.isnan(fl)).double().mean())
            fin = fl[~torch.isnan(fl) & fg]
            r["flip_budget_median_fg"] = float(fin.median() / unit[i]) if len(fin) else float("nan")
        rows.append(r)
    if flips is not None:
        _save_maps(setup.run_dir, setup.dataset, batch, x, y, lmap, flips, unit, cfg, 0 if item < cfg.examples else cfg.examples)
    return rows


def _summary(setup: Any, cfg: MarginsConfig, attack: Any, table: pd.DataFrame, elapsed: float) -> dict[str, Any]:
    """``summary.json``: statistics of the per-case margins and the settings."""
    m = table["margin"].to_numpy()
    return {"task": cfg.task, "norm": cfg.threat.norm, "units": cfg.threat.units, "eps_max": cfg.eps_max,
            "attack": attack.label, "attack_settings": attack.describe(), "bisection_steps": cfg.bisection_steps,
            "margin": _stats(m), "censored_fraction": float(table["censored"].mean()),
            "clean_failures": int((~table["clean_success"]).sum()),
            "margin_of_clean_successes": _stats(m[table["clean_success"].to_numpy()]) if table["clean_success"].any() else None,
            "logit_margin": {"mean_of_means": float(table["logit_margin_mean"].mean()), "min_of_mins": float(table["logit_margin_min"].min())},
            "checkpoint": cfg.checkpoint, "split": cfg.split, "time_s": elapsed,
            "model_source": setup.checkpoint.get("source") or {"source": "registry", "checkpoint": cfg.checkpoint}}


def _plot_hist(table: pd.DataFrame, path: Path, cfg: MarginsConfig) -> None:
    from medrobust.plotting import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.hist(table["margin"], bins=30, color="tab:blue", alpha=0.8)
    ax.axvline(table["margin"].mean(), color="k", ls="--", label=f"mean {table['margin'].mean():.3g}")
    ax.axvline(table["margin"].min(), color="r", ls=":", label=f"min {table['margin'].min():.3g}")
    ax.set_xlabel(f"smallest breaking budget ({cfg.threat.norm}, {cfg.threat.units} units)")
    ax.set_ylabel("cases")
    ax.legend(fontsize=8)
    ax.set_title("per-case margins")
    save_figure(fig, path)


def _save_maps(run_dir: Path, ds, batch, x, y, lmap, flips, unit, cfg: MarginsConfig, written: int) -> int:
    out = run_dir / "voxel_maps"
    out.mkdir(exist_ok=True)
    for i in range(len(x)):
        sid = batch["id"][i].replace(":", "_s")
        fl = (flips[i] / unit[i]).cpu().numpy()
        np.savez_compressed(out / f"{sid}.npz", logit_margin=lmap[i].cpu().numpy(), flip_budget=fl)
        if cfg.save_nifti:
            from medrobust.data.readers import write_nifti

            aff = np.diag(list(batch["spacing"][i].tolist()) + [1.0] * (4 - len(batch["spacing"][i])))
            write_nifti(lmap[i].cpu().numpy().astype(np.float32), aff, out / f"{sid}_logit_margin.nii.gz")
            write_nifti(np.nan_to_num(fl, nan=-1.0).astype(np.float32), aff, out / f"{sid}_flip_budget.nii.gz")
        if written < cfg.examples:
            _plot_maps(x[i, 0].cpu().numpy(), y[i].cpu().numpy(), lmap[i].cpu().numpy(), fl, out / f"{sid}.png", cfg)
            written += 1
    return written


def _plot_maps(img, lab, lmap, flip, path, cfg) -> None:
    from medrobust.plotting import pyplot, save_figure
    from medrobust.plotting import mid_slice

    plt = pyplot()
    lab = lab[0] if lab.ndim == img.ndim + 1 else lab
    img2, lab2 = mid_slice(img, lab)
    lm2, _ = mid_slice(lmap, lab)
    fl2, _ = mid_slice(flip, lab)
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))
    axes[0].imshow(img2.T, cmap="gray")
    axes[0].contour(lab2.T, levels=np.arange(0.5, max(1.5, lab2.max() + 0.5)), colors="y", linewidths=0.7)
    axes[0].set_title("image and ground truth")
    axes[1].imshow(img2.T, cmap="gray")
    im = axes[1].imshow(np.clip(lm2, -10, 10).T, cmap="RdYlGn", alpha=0.6, vmin=-10, vmax=10)
    fig.colorbar(im, ax=axes[1], fraction=0.046)
    axes[1].set_title("clean logit margin per voxel")
    axes[2].imshow(img2.T, cmap="gray")
    masked = np.ma.masked_invalid(fl2)
    im2 = axes[2].imshow(masked.T, cmap="magma", alpha=0.75, vmin=0, vmax=cfg.eps_max)
    fig.colorbar(im2, ax=axes[2], fraction=0.046)
    axes[2].set_title(f"flip budget ({cfg.threat.units}; blank: no flip)")
    for a in axes:
        a.set_xticks([])
        a.set_yticks([])
    save_figure(fig, path)
