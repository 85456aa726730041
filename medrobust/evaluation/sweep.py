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
from medrobust.evaluation.workitems import Shard, WorkItemStore, barrier, config_hash, finish, init_shard
from medrobust.evaluation.metrics import segmentation_metrics
from medrobust.inference import build_predictor, to_original_grid
from medrobust.tasks import build_task, reduce_foreground
from medrobust.threat import ThreatModel, budget_to_input, input_to_units, resolve_bounds
from medrobust.utils import attach_run_log, derive_seed, progress, resolve_device, to_jsonable, write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)


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
    net: torch.nn.Module  # the whole-case predictor around the model (padding, sliding windows)
    checkpoint: dict[str, Any]
    info: DataInfo
    task: Any
    threat: ThreatModel
    dataset: Any
    indices: list[int]
    loader: DataLoader
    batches: list[list[int]] = field(default_factory=list)  # work items: dataset indices, shape-bucketed
    shard: Shard = field(default_factory=Shard)

    def batch(self, item: int) -> dict[str, Any]:
        """The collated samples of work item ``item``."""
        return collate([self.dataset[i] for i in self.batches[item]])

    def item_ids(self) -> list[list[str]]:
        return [[self.dataset.sample_id(i) for i in b] for b in self.batches]


def prepare_eval(cfg: Any) -> EvalSetup:
    """Checkpoint (safely), recorded preprocessing, the whole split, shape-bucketed work items, threat model.

    Every slice of every case is evaluated (never only the foreground slices the training may
    have used), without padding: the whole-case predictor pads for the network and cuts the
    padding off, so attacks perturb and metrics score the case's own grid.
    """
    from medrobust.config import MarginsConfig
    from medrobust.outputs import claim_output_dir

    device = resolve_device(cfg.device)
    shard, device = init_shard(device)
    command = "margins" if isinstance(cfg, MarginsConfig) else ("eval-seg" if cfg.task == "segmentation" else "eval-classify")
    if shard.main:  # one writer claims the folder (marker + lock); the other ranks write only their shard files
        run_dir = claim_output_dir(cfg.output_dir, command, cfg.model_dump(mode="json"))
        attach_run_log(run_dir)
    else:
        run_dir = Path(cfg.output_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
    model, ck, info, data_cfg, task = load_eval_setup(cfg.checkpoint, cfg.task, cfg.data, cfg.success, device,
                                                      command=command, model_cfg=getattr(cfg, "model", None))
    dm = DataModule(data_cfg, cfg.task, label_map=info.label_map, label_values=info.label_values)
    seg = cfg.task == "segmentation"
    ds = dm.dataset(cfg.split, train=False, foreground_only=False, pad=not seg)
    check_inputs_match(ds, info, cfg.checkpoint)
    if dm.label_map != info.label_map:
        raise ConfigError(f"the evaluation data's label map {dm.label_map} differs from the checkpoint's {info.label_map}; evaluate on data with the same labels.")
    indices = list(range(len(ds)))
    if cfg.max_samples is not None:
        indices = indices[: cfg.max_samples]
    if not indices:
        raise ConfigError(f"the {cfg.split} split has no samples to evaluate; choose another split or data.")
    shapes = [tuple(ds.raw_sample(i)["image"].shape[1:]) for i in indices]
    if not seg and info.input_size:  # classifiers take inputs padded to the input size
        shapes = [tuple(max(s, t) for s, t in zip(sh, info.input_size)) for sh in shapes]
    sampler = ShapeBucketBatchSampler(shapes, cfg.batch_size)
    batches = [[indices[j] for j in b] for b in sampler.batches]
    loader = DataLoader(Subset(ds, indices), batch_sampler=ShapeBucketBatchSampler(shapes, cfg.batch_size), collate_fn=collate)
    net = build_predictor(model, info.input_size, getattr(cfg, "inference", None), cfg.task, ck.get("model_spec"))
    threat = ThreatModel(cfg.threat.norm, resolve_bounds(cfg.threat.bounds, info.bounds))
    return EvalSetup(run_dir, device, model, net, ck, info, task, threat, ds, indices, loader, batches, shard)


def grid_statement(setup: EvalSetup, data_pre: dict[str, Any]) -> str:
    """One sentence saying on which grid the metrics are computed (for the report)."""
    ds = setup.dataset
    parts = ["every slice of every case" if ds.dims == 2 and any(s >= 0 for _, s in ds.samples) else "whole cases"]
    parts.append("no padding scored")
    if data_pre.get("resize"):
        parts.append(f"predictions resampled from the resized {data_pre['resize']} grid back to each case's grid before the resize")
    if data_pre.get("spacing"):
        parts.append(f"on the resampled {data_pre['spacing']} mm grid")
    if data_pre.get("crop_foreground"):
        parts.append("inside the body / foreground crop of the preprocessing (attacks and metrics)")
    return "metrics on " + "; ".join(parts)


class _GradCounter:
    """Counts per-sample gradient evaluations (backward passes reaching the predictor's output)."""

    def __init__(self, net: torch.nn.Module) -> None:
        self.count = 0
        self._h = net.register_forward_hook(self._fwd)

    def _fwd(self, _m, _i, out) -> None:
        if isinstance(out, torch.Tensor) and out.requires_grad:
            n = int(out.shape[0])
            out.register_hook(lambda g, n=n: self._add(n))

    def _add(self, n: int) -> None:
        self.count += n

    def remove(self) -> None:
        self._h.remove()


def _reseed(attack: Any, key: str) -> None:
    """Seed an attack (and its ensemble members) from the work item's sample ids and the attack."""
    base = getattr(attack, "_base_seed", "unset")
    if base == "unset":
        base = attack.params.seed
        attack._base_seed = base
    if base is not None:
        attack.params.seed = derive_seed(base, attack.label, key)
    for m in getattr(attack, "members", []) or []:
        _reseed(m, key)


def evaluate(cfg: EvalConfig, resume: bool = False) -> EvalResult:
    """Run the sweep (resumable: finished work items are kept on disk; sharded under ``torchrun``).

    Args:
        cfg: the evaluation config.
        resume: keep the finished work items of an interrupted run of the same config in ``output_dir``.

    Returns:
        The run folder, the table and the summary (on ranks other than 0 an empty table).

    Raises:
        ConfigError: bad settings, or ``resume`` on a folder started with another config.
    """
    t_start = time.time()
    setup = prepare_eval(cfg)
    run_dir, device, net, ck, info, task, threat = setup.run_dir, setup.device, setup.net, setup.checkpoint, setup.info, setup.task, setup.threat
    ds, indices = setup.dataset, setup.indices
    attacks = [build_attack(spec, task, threat) for spec in expand_presets(cfg.attacks)]
    labels = [a.label for a in attacks]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"two attacks share the label {[l for l in labels if labels.count(l) > 1][0]!r}; give each a distinct 'label'.")
    budgets = sorted(set(float(b) for b in cfg.threat.budgets))
    log.info("evaluating %d samples (%s split) with %s at %s budgets %s (%s units); bounds %s; inference %s",
             len(indices), cfg.split, ", ".join(labels), cfg.threat.norm, budgets, cfg.threat.units, threat.bounds,
             getattr(net, "describe", lambda: {})())
    class_names = {k: v for k, v in info.label_map.items()}
    metrics_which = set(cfg.metrics)
    store = WorkItemStore(run_dir, setup.item_ids(), config_hash(cfg.model_dump()), resume, setup.shard)
    todo = store.todo()
    n_total = len(todo) * (1 + sum(len([b for b in _levels(a, budgets) if b > 0]) for a in attacks))
    bar = progress(range(n_total), total=n_total, desc="evaluating")
    it = iter(bar)
    for item in todo:
        batch = setup.batch(item)
        rec, examples = _evaluate_item(item, batch, setup, cfg, attacks, budgets, class_names, metrics_which, it)
        if examples:  # attacks: the first items' examples; artefacts: every item's worst candidates
            store.save_examples(item, examples)
        store.append(item, rec)
    bar.close()
    if not setup.shard.main:
        store.close()
        barrier(setup.shard)  # matches rank 0's gather
        finish(setup.shard)
        return EvalResult(run_dir, pd.DataFrame(), {})
    rows: list[dict[str, Any]] = []
    flags: list[str] = []
    examples: dict[str, list[dict[str, Any]]] = {}
    attack_time: dict[str, float] = {a.label: 0.0 for a in attacks}
    art_labels = {a.label for a in attacks if is_artefact(a)}
    for item, rec in store.gather():
        rows += rec["rows"]
        for f in rec.get("flags", []):
            if f not in flags:
                flags.append(f)
        for k, v in rec.get("attack_time", {}).items():
            attack_time[k] = attack_time.get(k, 0.0) + float(v)
        ex = store.load_examples(item) or {}
        for a, items in ex.items():
            have = examples.setdefault(a, [])
            if a in art_labels:  # the largest drops from clean at the top severity, over all items
                examples[a] = sorted(have + items, key=lambda e: -e["drop"])[: cfg.examples]
            else:
                have.extend(items[: max(0, cfg.examples - len(have))])
    table = pd.DataFrame(rows)
    from medrobust.evaluation.report import summarize, write_report

    summary = summarize(table, cfg, info, budgets, labels, flags)
    summary["time_s"] = {"total": time.time() - t_start, **{f"attack:{k}": v for k, v in attack_time.items()}}
    summary["gradient_evaluations"] = _grad_summary(table, attacks, budgets)
    data_pre = info.preprocess or {}
    summary["settings"] = {"checkpoint": cfg.checkpoint, "split": cfg.split, "n_samples": len(indices), "norm": cfg.threat.norm,
                           "units": cfg.threat.units, "budgets": budgets, "bounds": threat.bounds, "metrics": sorted(metrics_which),
                           "attacks": [a.describe() for a in attacks], "attack_cost_per_sample": {a.label: a.cost() for a in attacks},
                           "success": task.describe().get("success"), "model": ck["model_spec"],
                           "model_source": ck.get("source") or {"source": "registry", "checkpoint": cfg.checkpoint},
                           "inference": {**cfg.inference.model_dump(), **({"predictor": net.describe()} if hasattr(net, "describe") else {})},
                           "grid": grid_statement(setup, data_pre) if cfg.task == "segmentation" else "classifier inputs",
                           "n_cases": int(table["case"].nunique()) if len(table) else 0, "seed": cfg.seed}
    write_text_atomic(run_dir / "results.csv", table.to_csv(index=False))
    write_json_atomic(run_dir / "summary.json", to_jsonable(summary))
    files = write_report(run_dir, table, summary, examples, info, cfg)
    for f in flags:
        log.warning("flag: %s", f)
    log.info("evaluation finished in %.0fs; results in %s", time.time() - t_start, run_dir.resolve())
    finish(setup.shard)
    from medrobust.outputs import release_output_dir

    release_output_dir(run_dir)
    return EvalResult(run_dir, table, summary, files)


def _grad_summary(table: pd.DataFrame, attacks: list, budgets: list[float]) -> dict[str, Any]:
    """Gradient evaluations actually spent per case (mean, max) next to the nominal ones, per attack and budget."""
    out: dict[str, Any] = {}
    if "grad_evals" not in table:
        return out
    for a in attacks:
        per: dict[str, Any] = {"nominal_per_case": float(a.cost()[1])}
        for b in budgets:
            if b <= 0:
                continue
            d = pd.to_numeric(table[(table.attack == a.label) & (table.budget == b)]["grad_evals"], errors="coerce").dropna()
            if len(d):
                per[str(b)] = {"mean_per_case": float(d.mean()), "max_per_case": float(d.max()),
                               "fraction_of_nominal": float(d.mean() / a.cost()[1]) if a.cost()[1] else float("nan")}
        out[a.label] = per
    return out


def check_clean_within_bounds(threat: ThreatModel, x: torch.Tensor, batch: dict[str, Any], atol: float = 1e-4) -> None:
    """The clean inputs must lie inside the intensity bounds the attacks clip to.

    Raises:
        ConfigError: explicit ``threat.bounds`` that do not contain a clean image (the attacks
            would clip the clean image itself, so every "perturbation" would leave the threat model).
    """
    lim = threat.limits(x)
    if lim is None:
        return
    flat = x.reshape(x.shape[0], -1)
    bad = ((x < lim[0] - atol) | (x > lim[1] + atol)).reshape(x.shape[0], -1).any(1)
    if bool(bad.any()):
        i = int(torch.nonzero(bad)[0])
        raise ConfigError(f"sample '{batch['id'][i]}' has intensities in [{float(flat[i].min()):.4g}, {float(flat[i].max()):.4g}], outside "
                          f"threat.bounds {threat.bounds}; set bounds that contain the preprocessed images (or `auto` / `none`).")


def _levels(attack: Any, budgets: list[float]) -> list[float]:
    """The budget axis of an attack: the severity levels for an artefact, else the budgets."""
    return attack.severity_grid() if is_artefact(attack) else budgets


def _evaluate_item(item: int, batch: dict[str, Any], setup: EvalSetup, cfg: EvalConfig, attacks: list, budgets: list[float],
                   class_names: dict[int, str], metrics_which: set[str], it) -> tuple[dict[str, Any], dict[str, list]]:
    """Clean and attacked rows of one work item (seeded from its sample ids, not from its position)."""
    net, task, threat, device, ds = setup.net, setup.task, setup.threat, setup.device, setup.dataset
    x = batch["image"].to(device)
    y = batch["label"].to(device)
    flags: list[str] = []
    if item == 0:
        flags += model_flags(net, x[: min(4, len(x))])
        flags += gradient_flags(net, task, x[: min(4, len(x))], y[: min(4, len(y))])
        with torch.no_grad():
            task.check_target(net(x[:1]), y[:1])
    check_clean_within_bounds(threat, x, batch)
    with torch.no_grad():
        logits_clean = net(x)
    clean_rows = _rows(task, cfg, batch, logits_clean, y, "clean", 0.0, {"input": torch.zeros(len(x))}, class_names, metrics_which, {}, ds)
    rows = list(clean_rows)
    next(it, None)
    examples: dict[str, list[dict[str, Any]]] = {}
    attack_time: dict[str, float] = {}
    key = "|".join(batch["id"])
    for attack in attacks:
        _reseed(attack, key)
        art = is_artefact(attack)  # artefacts: the budget axis is the severity level 0-5
        levels = _levels(attack, budgets)
        for budget in levels:
            eps = torch.full((len(x),), float(budget), device=x.device) if art else \
                budget_to_input(budget, cfg.threat.units, cfg.threat.norm, batch, x)
            units = {"input": torch.full((len(x),), float("nan"))} if art else input_to_units(eps, batch, x)
            if budget == 0:
                rows += [dict(r, attack=attack.label, budget=0.0, **{f"eps_{k}": 0.0 for k in units},
                              **({"severity": 0} if art else {})) for r in clean_rows]
                continue
            t0 = time.time()
            counter = _GradCounter(net)
            try:
                res = attack(net, x, y, eps, batch=batch) if art else attack(net, x, y, eps)
            finally:
                counter.remove()
            attack_time[attack.label] = attack_time.get(attack.label, 0.0) + time.time() - t0
            if "grad_evals" not in res.extra:
                res.extra["grad_evals"] = torch.full((len(x),), counter.count / max(1, len(x)), dtype=torch.float64)
            inside = torch.ones(len(x), dtype=torch.bool) if art else threat.within(res.x_adv, x, eps.to(x.dtype), atol=1e-4)
            if not bool(inside.all()):
                raise RuntimeError(f"attack {attack.label} returned {int((~inside).sum())} perturbations outside the threat model (a bug)")
            with torch.no_grad():
                logits = net(res.x_adv)
            new = _rows(task, cfg, batch, logits, y, attack.label, budget, units, class_names, metrics_which, res.extra, ds)
            if art:
                for r in new:
                    r["severity"] = int(budget)
            rows += new
            for f in res.flags:
                if f not in flags:
                    flags.append(f)
            if art and budget == levels[-1] and cfg.examples:  # artefacts: the largest drops from clean at the top level
                items = _example_items(batch, x, res.x_adv, logits_clean, logits, y, new, len(x))
                for it_, c in zip(items, clean_rows):
                    it_["drop"] = float(c.get("dice", c.get("correct"))) - float(it_["metric_adv"])
                examples[attack.label] = sorted(items, key=lambda e: -e["drop"])[: cfg.examples]
            elif not art and budget == budgets[-1] and item < cfg.examples:
                examples[attack.label] = _example_items(batch, x, res.x_adv, logits_clean, logits, y, new, cfg.examples)
            if cfg.save_nifti and budget == levels[-1]:
                _save_nifti(setup.run_dir, ds, batch, res.x_adv, logits, attack.label, setup.info.label_values)
            next(it, None)
    return {"rows": rows, "flags": flags, "attack_time": attack_time}, examples


def _rows(task, cfg: EvalConfig, batch, logits, y, attack: str, budget: float, units: dict[str, torch.Tensor],
          class_names: dict[int, str], which: set[str], extra: dict[str, torch.Tensor], ds: Any = None) -> list[dict[str, Any]]:
    b = logits.shape[0]
    base = []
    for i in range(b):
        r = {"sample": batch["id"][i], "case": batch["case"][i], "slice": int(batch["slice"][i]), "attack": attack,
             "norm": cfg.threat.norm, "units": cfg.threat.units, "budget": float(budget)}
        for k in ("input", "native", "rms"):
            r[f"eps_{k}"] = float(units[k][i]) if k in units else (0.0 if budget == 0 else float("nan"))
        base.append(r)
    if task.kind == "segmentation":
        m = _seg_metrics_on_grid(task, logits, y, batch, ds, which, cfg.nsd_tolerance_mm)
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


def _seg_metrics_on_grid(task, logits, y, batch, ds, which: set[str], tol: float) -> dict[str, np.ndarray]:
    """Segmentation metrics per sample on the case's grid: with ``preprocess.resize`` the logits are
    resampled back to the grid before the resize and scored against the original label."""
    origs = []
    if ds is not None:
        for i in range(logits.shape[0]):
            ci, s = int(batch["case_index"][i]), int(batch["slice"][i])
            ol = ds.cases[ci].extra.get("orig_label") if hasattr(ds, "cases") else None
            origs.append(ol if ol is not None and s < 0 else None)
    if not any(o is not None for o in origs):
        pred = task.predict(logits)
        tgt = task._labels(logits, y)
        return segmentation_metrics(pred, tgt, task.num_classes, batch["spacing"], which, tol)
    parts = []
    for i, ol in enumerate(origs):
        lg = logits[i:i + 1]
        if ol is None:
            tgt, sp = task._labels(lg, y[i:i + 1]), batch["spacing"][i:i + 1]
        else:
            lg = to_original_grid(lg, ol.shape[1:])
            tgt = ol.to(lg.device)
            sp = torch.tensor([ds.cases[int(batch["case_index"][i])].extra["orig_spacing"]], dtype=torch.float64)
        parts.append(segmentation_metrics(task.predict(lg), tgt, task.num_classes, sp, which, tol))
    return {k: np.concatenate([np.asarray(p[k]) for p in parts], 0) for k in parts[0]}


def _example_items(batch, x, x_adv, logits_clean, logits_adv, y, rows, n) -> list[dict[str, Any]]:
    out = []
    for i in range(min(n, x.shape[0])):
        item = {"id": batch["id"][i], "image": x[i].detach().cpu(), "adv": x_adv[i].detach().cpu(),
                "label": y[i].detach().cpu(), "pred_clean": logits_clean[i].argmax(0).cpu(),
                "pred_adv": logits_adv[i].argmax(0).cpu(), "metric_adv": float(rows[i].get("dice", rows[i].get("correct"))),
                "budget": float(rows[i]["budget"])}
        if item["image"].ndim == 4 and item["label"].ndim == 4:  # 3D: keep the slice the report draws (small files)
            lab = item["label"][0]
            k = int((lab > 0).reshape(-1, lab.shape[-1]).sum(0).argmax()) if bool((lab > 0).any()) else lab.shape[-1] // 2
            item.update({key: item[key][..., k] for key in ("image", "adv", "label", "pred_clean", "pred_adv")})
        out.append({k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in item.items()})  # no views: small files
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
