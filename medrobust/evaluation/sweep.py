"""Robustness sweeps: attacks x budgets over a dataset, one row per case x attack x budget.

``evaluate(cfg)`` loads a checkpoint (safely), rebuilds the recorded preprocessing, runs every
attack at every budget on every sample, and writes to the run folder:

- ``results.csv``: the long table (sample, case, slice, attack, norm, budget in the configured
  units and in input / native / RMS units, the metrics, TP / FP / FN per class so pooled
  metrics can be recomputed, and per-attack extras such as white-noise mean / worst draws);
- ``summary.json``: per attack and budget mean +- sd, median, IQR, pooled Dice or accuracy /
  balanced accuracy / AUC, per-class means, the normalised area under the metric-budget curve,
  the per-sample worst case over attacks, sanity flags, seeds and settings;
- plots (metric versus budget per attack and per class, per-case distributions), example
  figures and ``report.html``; optionally adversarial images and predictions as NIfTI.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Subset

from medrobust.attacks import build_attack, expand_presets
from medrobust.attacks.artefacts import is_artefact
from medrobust.attacks.sanity import gradient_flags, model_flags
from medrobust.checkpoint import load_model_from_checkpoint
from medrobust.config import DataConfig, EvalConfig, SegLossConfig, SuccessConfig, deep_merge, parse_config
from medrobust.data.datasets import DataInfo, DataModule, ShapeBucketBatchSampler, collate
from medrobust.errors import ConfigError
from medrobust.evaluation.inference import wrap_for_inference
from medrobust.evaluation.metrics import segmentation_metrics
from medrobust.tasks import build_task, reduce_foreground
from medrobust.threat import ThreatModel, budget_to_input, input_to_units, resolve_bounds
from medrobust.utils import progress, resolve_device, setup_logging, to_jsonable, write_json_atomic, write_text_atomic

log = logging.getLogger("medrobust")


@dataclass
class EvalResult:
    run_dir: Path
    table: pd.DataFrame
    summary: dict[str, Any]
    files: dict[str, str] = field(default_factory=dict)

    @staticmethod
    def paths(run_dir: Path) -> dict[str, str]:
        """The outputs an evaluation in ``run_dir`` writes (the one place pipelines read them from)."""
        run_dir = Path(run_dir)
        return {"run_dir": str(run_dir), "results": str(run_dir / "results.csv"),
                "summary": str(run_dir / "summary.json"), "report": str(run_dir / "report.html")}

    def outputs(self) -> dict[str, str]:
        return self.paths(self.run_dir)

    def text_summary(self) -> str:
        from medrobust.evaluation.report import summary_table

        return summary_table(self.summary)


def load_eval_setup(checkpoint: str, task_kind: str, data_overrides: Optional[dict[str, Any]], success: Optional[SuccessConfig],
                    device: torch.device, command: Optional[str] = None, model_cfg: Any = None):
    """Model, checkpoint, data info, data config and task for an evaluation-like command."""
    model, ck = load_model_from_checkpoint(checkpoint, device, expect_task=task_kind, command=command, model_cfg=model_cfg,
                                           data=data_overrides)
    info = DataInfo.from_dict(ck["data_info"])
    base = dict(ck.get("config", {}).get("data", {}))
    merged = deep_merge(base, data_overrides or {})
    data_cfg = parse_config(DataConfig, merged, "data (checkpoint config + overrides)")
    if data_cfg.dims is not None and int(data_cfg.dims) != int(info.spatial_dims):
        raise ConfigError(f"data.dims is {data_cfg.dims} but checkpoint '{checkpoint}' is a {info.spatial_dims}D model; "
                          f"remove the dims override (the checkpoint's data.dims is used).")
    if data_cfg.preprocess.model_dump() != info.preprocess:
        log.warning("the preprocessing differs from the one recorded in the checkpoint; inputs will not match training")
    train_cfg = ck.get("config", {})
    loss_cfg = SegLossConfig.model_validate(train_cfg.get("loss", {})) if train_cfg.get("loss") else None
    succ = success or (SuccessConfig.model_validate(train_cfg["success"]) if train_cfg.get("success") else None)
    task = build_task(task_kind, info.num_classes, loss_cfg, succ)
    return model, ck, info, data_cfg, task


def check_inputs_match(ds, info: DataInfo, checkpoint: str) -> None:
    """Channels and dimensions of the evaluation cases against the checkpoint, before any work."""
    for c in ds.cases:
        ch, nd = int(c.image.shape[0]), c.image.ndim - 1
        if ch != info.in_channels:
            raise ConfigError(f"case '{c.case_id}' has {ch} image channel(s) but checkpoint '{checkpoint}' takes "
                              f"{info.in_channels}; evaluate on images with the channels the model was trained on "
                              f"(e.g. grey-scale, not RGB, for a one-channel model).")
        if nd not in (info.spatial_dims, 3 if info.spatial_dims == 2 else info.spatial_dims):
            raise ConfigError(f"case '{c.case_id}' is {nd}D but checkpoint '{checkpoint}' is a {info.spatial_dims}D model; "
                              f"evaluate on {info.spatial_dims}D images (or 3D volumes for a 2D model).")


@dataclass
class EvalSetup:
    """Everything an evaluation-like command (eval, margins) needs, built the same way for both."""

    run_dir: Path
    device: torch.device
    model: torch.nn.Module
    net: torch.nn.Module  # the model wrapped for inference (sliding windows)
    checkpoint: dict[str, Any]
    info: DataInfo
    task: Any
    threat: ThreatModel
    dataset: Any
    indices: list[int]
    loader: DataLoader


def prepare_eval(cfg: Any) -> EvalSetup:
    """Checkpoint (safely), recorded preprocessing, dataset split, shape-bucketed loader, threat model."""
    from medrobust.config import MarginsConfig
    from medrobust.outputs import claim_output_dir

    device = resolve_device(cfg.device)
    command = "margins" if isinstance(cfg, MarginsConfig) else ("eval-seg" if cfg.task == "segmentation" else "eval-classify")
    run_dir = claim_output_dir(cfg.output_dir, command, cfg.model_dump(mode="json"))
    setup_logging(run_dir)
    model, ck, info, data_cfg, task = load_eval_setup(cfg.checkpoint, cfg.task, cfg.data, cfg.success, device,
                                                      command=command, model_cfg=getattr(cfg, "model", None))
    dm = DataModule(data_cfg, cfg.task, label_map=info.label_map, label_values=info.label_values)
    ds = dm.dataset(cfg.split, train=False)
    check_inputs_match(ds, info, cfg.checkpoint)
    if dm.label_map != info.label_map:
        raise ConfigError(f"the evaluation data's label map {dm.label_map} differs from the checkpoint's {info.label_map}; evaluate on data with the same labels.")
    indices = list(range(len(ds)))
    if cfg.max_samples is not None:
        indices = indices[: cfg.max_samples]
    if not indices:
        raise ConfigError(f"the {cfg.split} split has no samples to evaluate; choose another split or data.")
    shapes = [tuple(ds.raw_sample(i)["image"].shape[1:]) for i in indices]
    if info.input_size:
        shapes = [tuple(max(s, t) for s, t in zip(sh, info.input_size)) for sh in shapes]
    loader = DataLoader(Subset(ds, indices), batch_sampler=ShapeBucketBatchSampler(shapes, cfg.batch_size), collate_fn=collate)
    net = wrap_for_inference(model, info.input_size, cfg.inference, cfg.task)
    threat = ThreatModel(cfg.threat.norm, resolve_bounds(cfg.threat.bounds, info.bounds))
    return EvalSetup(run_dir, device, model, net, ck, info, task, threat, ds, indices, loader)


def evaluate(cfg: EvalConfig) -> EvalResult:
    t_start = time.time()
    setup = prepare_eval(cfg)
    run_dir, device, net, ck, info, task, threat = setup.run_dir, setup.device, setup.net, setup.checkpoint, setup.info, setup.task, setup.threat
    ds, indices, loader = setup.dataset, setup.indices, setup.loader
    attacks = [build_attack(spec, task, threat) for spec in expand_presets(cfg.attacks)]
    labels = [a.label for a in attacks]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"two attacks share the label {[l for l in labels if labels.count(l) > 1][0]!r}; give each a distinct 'label'.")
    budgets = sorted(set(float(b) for b in cfg.threat.budgets))
    log.info("evaluating %d samples (%s split) with %s at %s budgets %s (%s units); bounds %s",
             len(indices), cfg.split, ", ".join(labels), cfg.threat.norm, budgets, cfg.threat.units, threat.bounds)
    class_names = {k: v for k, v in info.label_map.items()}
    metrics_which = set(cfg.metrics)
    rows: list[dict[str, Any]] = []
    flags: list[str] = []
    examples: dict[str, list[dict[str, Any]]] = {}
    attack_time: dict[str, float] = {a.label: 0.0 for a in attacks}
    n_total = len(loader) * (1 + sum(len([b for b in (a.severity_grid() if is_artefact(a) else budgets) if b > 0]) for a in attacks))
    bar = progress(range(n_total), total=n_total, desc="evaluating")
    it = iter(bar)
    first = True
    for batch in loader:
        x = batch["image"].to(device)
        y = batch["label"].to(device)
        if first:
            flags += model_flags(net, x[: min(4, len(x))])
            flags += gradient_flags(net, task, x[: min(4, len(x))], y[: min(4, len(y))])
            with torch.no_grad():
                task.check_target(net(x[:1]), y[:1])
            first = False
        with torch.no_grad():
            logits_clean = net(x)
        clean_rows = _rows(task, cfg, batch, logits_clean, y, "clean", 0.0, {"input": torch.zeros(len(x))}, class_names, metrics_which, {})
        rows += clean_rows
        next(it, None)
        for attack in attacks:
            art = is_artefact(attack)  # artefacts: the budget axis is the severity level 0-5
            levels = attack.severity_grid() if art else budgets
            for budget in levels:
                eps = torch.full((len(x),), float(budget), device=x.device) if art else \
                    budget_to_input(budget, cfg.threat.units, cfg.threat.norm, batch, x)
                units = {"input": torch.full((len(x),), float("nan"))} if art else input_to_units(eps, batch, x)
                if budget == 0:
                    zero = [dict(r, attack=attack.label, budget=0.0, **{f"eps_{k}": 0.0 for k in units},
                                 **({"severity": 0} if art else {})) for r in clean_rows]
                    rows += zero
                    continue
                t0 = time.time()
                res = attack(net, x, y, eps, batch=batch) if art else attack(net, x, y, eps)
                attack_time[attack.label] += time.time() - t0
                inside = torch.ones(len(x), dtype=torch.bool) if art else threat.within(res.x_adv, x, eps.to(x.dtype), atol=1e-4)
                if not bool(inside.all()):
                    raise RuntimeError(f"attack {attack.label} returned {int((~inside).sum())} perturbations outside the threat model (a bug)")
                with torch.no_grad():
                    logits = net(res.x_adv)
                new = _rows(task, cfg, batch, logits, y, attack.label, budget, units, class_names, metrics_which, res.extra)
                if art:
                    for r in new:
                        r["severity"] = int(budget)
                rows += new
                for f in res.flags:
                    if f not in flags:
                        flags.append(f)
                if art and budget == levels[-1] and cfg.examples:  # artefacts: the largest drops from clean at the top level
                    items = _example_items(batch, x, res.x_adv, logits_clean, logits, y, new, len(x))
                    for item, c in zip(items, clean_rows):
                        item["drop"] = float(c.get("dice", c.get("correct"))) - float(item["metric_adv"])
                    pool = examples.get(attack.label, []) + items
                    examples[attack.label] = sorted(pool, key=lambda e: -e["drop"])[: cfg.examples]
                elif not art and budget == budgets[-1] and len(examples.get(attack.label, [])) < cfg.examples:
                    examples.setdefault(attack.label, []).extend(
                        _example_items(batch, x, res.x_adv, logits_clean, logits, y, new, cfg.examples - len(examples.get(attack.label, []))))
                if cfg.save_nifti and budget == levels[-1]:
                    _save_nifti(run_dir, ds, batch, res.x_adv, logits, attack.label, info.label_values)
                next(it, None)
    bar.close()
    table = pd.DataFrame(rows)
    from medrobust.evaluation.report import summarize, write_report

    summary = summarize(table, cfg, info, budgets, labels, flags)
    summary["time_s"] = {"total": time.time() - t_start, **{f"attack:{k}": v for k, v in attack_time.items()}}
    summary["settings"] = {"checkpoint": cfg.checkpoint, "split": cfg.split, "n_samples": len(indices), "norm": cfg.threat.norm,
                           "units": cfg.threat.units, "budgets": budgets, "bounds": threat.bounds, "metrics": sorted(metrics_which),
                           "attacks": [a.describe() for a in attacks], "attack_cost_per_sample": {a.label: a.cost() for a in attacks},
                           "success": task.describe().get("success"), "model": ck["model_spec"],
                           "model_source": ck.get("source") or {"source": "registry", "checkpoint": cfg.checkpoint},
                           "inference": cfg.inference.model_dump(), "seed": cfg.seed}
    write_text_atomic(run_dir / "results.csv", table.to_csv(index=False))
    write_json_atomic(run_dir / "summary.json", to_jsonable(summary))
    files = write_report(run_dir, table, summary, examples, info, cfg)
    for f in flags:
        log.warning("flag: %s", f)
    log.info("evaluation finished in %.0fs; results in %s", time.time() - t_start, run_dir.resolve())
    from medrobust.outputs import release_output_dir

    release_output_dir(run_dir)
    return EvalResult(run_dir, table, summary, files)


def _rows(task, cfg: EvalConfig, batch, logits, y, attack: str, budget: float, units: dict[str, torch.Tensor],
          class_names: dict[int, str], which: set[str], extra: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
    b = logits.shape[0]
    base = []
    for i in range(b):
        r = {"sample": batch["id"][i], "case": batch["case"][i], "slice": int(batch["slice"][i]), "attack": attack,
             "norm": cfg.threat.norm, "units": cfg.threat.units, "budget": float(budget)}
        for k in ("input", "native", "rms"):
            r[f"eps_{k}"] = float(units[k][i]) if k in units else (0.0 if budget == 0 else float("nan"))
        base.append(r)
    if task.kind == "segmentation":
        pred = task.predict(logits)
        tgt = task._labels(logits, y)
        m = segmentation_metrics(pred, tgt, task.num_classes, batch["spacing"], which, cfg.nsd_tolerance_mm)
        dice_t = torch.as_tensor(m["dice"])
        mean = reduce_foreground(dice_t, "mean").numpy()
        succ = task.success_from_dice(dice_t).numpy()
        for i, r in enumerate(base):
            r["dice"] = float(mean[i])
            r["success"] = bool(succ[i])
            for k in range(1, task.num_classes):
                name = class_names.get(k, f"class{k}")
                r[f"dice_{name}"] = float(m["dice"][i, k])
                r[f"tp_{k}"], r[f"fp_{k}"], r[f"fn_{k}"] = (int(v) for v in m["counts"][i, k])
                for met in ("iou", "hd95", "nsd"):
                    if met in m:
                        r[f"{met}_{name}"] = float(m[met][i, k])
            for met in ("iou", "hd95", "nsd"):
                if met in m:
                    vals = m[met][i, 1:]
                    r[met] = float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")
    else:
        probs = torch.softmax(logits.float(), 1).cpu().numpy()
        pred = probs.argmax(1)
        yy = y.cpu().numpy()
        margin = task.unit_margin(logits, y).cpu().numpy()
        for i, r in enumerate(base):
            r.update({"label": int(yy[i]), "pred": int(pred[i]), "correct": bool(pred[i] == yy[i]), "margin": float(margin[i])})
            r["success"] = r["correct"]
            for k in range(probs.shape[1]):
                r[f"prob_{k}"] = float(probs[i, k])
    metric = "dice" if task.kind == "segmentation" else "correct"
    for key, v in extra.items():
        v = v.cpu().numpy()
        col = key if key.startswith("member:") else key.replace("score", metric)
        for i, r in enumerate(base):
            r[col] = float(v[i])
    return base


def _example_items(batch, x, x_adv, logits_clean, logits_adv, y, rows, n) -> list[dict[str, Any]]:
    out = []
    for i in range(min(n, x.shape[0])):
        out.append({"id": batch["id"][i], "image": x[i].detach().cpu(), "adv": x_adv[i].detach().cpu(),
                    "label": y[i].detach().cpu(), "pred_clean": logits_clean[i].argmax(0).cpu(),
                    "pred_adv": logits_adv[i].argmax(0).cpu(), "metric_adv": rows[i].get("dice", rows[i].get("correct")),
                    "budget": rows[i]["budget"]})
    return out


def _save_nifti(run_dir: Path, ds, batch, x_adv, logits, label: str, label_values: Optional[list[int]] = None) -> None:
    from medrobust.data.readers import write_nifti

    out = run_dir / "nifti" / label.replace("/", "_")
    for i in range(x_adv.shape[0]):
        ci = int(batch["case_index"][i])
        case = ds.cases[ci]
        sid = batch["id"][i].replace(":", "_s")
        img = x_adv[i].detach().cpu()
        pred = logits[i].argmax(0).cpu()
        if label_values:  # channels back to the original label ids
            pred = torch.as_tensor(label_values, dtype=torch.long)[pred]
        if int(batch["slice"][i]) < 0:
            crop = tuple(slice((p - o) // 2, (p - o) // 2 + o) for p, o in zip(img.shape[1:], case.spatial_shape))
            img = img[(slice(None),) + crop]
            pred = pred[crop]
            affine = case.affine
        else:
            affine = np.diag(list(batch["spacing"][i].tolist()) + [1.0] * (4 - len(batch["spacing"][i])))
        arr = img.numpy()
        arr = arr[0] if arr.shape[0] == 1 else np.moveaxis(arr, 0, -1)
        write_nifti(arr.astype(np.float32), affine, out / f"{sid}_adv_image.nii.gz")
        write_nifti(pred.numpy().astype(np.uint8 if int(pred.max()) < 256 else np.int32), affine, out / f"{sid}_adv_pred.nii.gz")
