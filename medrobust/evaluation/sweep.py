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
from typing import Any, ClassVar, Optional

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Subset

from medrobust.attacks import build_attack, expand_presets
from medrobust.attacks.artefacts import is_artefact
from medrobust.attacks.sanity import gradient_flags, model_flags
from medrobust.checkpoint import load_model_from_checkpoint
from medrobust.config import DataConfig, EvalConfig, SegLossConfig, SuccessConfig, deep_merge, parse_config
from medrobust.data.dataset import DataInfo, DataModule, collate
from medrobust.data.samplers import ShapeBucketBatchSampler
from medrobust.errors import ConfigError
from medrobust.evaluation.results import RunResult
from medrobust.evaluation.rows import RowBuilder
from medrobust.evaluation.workitems import Shard, WorkItemStore, barrier, config_hash, finish, init_shard, step_progress
from medrobust.inference import build_predictor
from medrobust.tasks import build_task
from medrobust.threat import ThreatModel, budget_to_input, input_to_units, resolve_bounds
from medrobust.utils import attach_run_log, derive_seed, resolve_device, to_jsonable, write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)


@dataclass
class EvalResult(RunResult):
    table: pd.DataFrame
    summary: dict[str, Any]
    files: dict[str, str] = field(default_factory=dict)
    FILES: ClassVar[dict[str, str]] = {"results": "results.csv", "summary": "summary.json", "report": "report.html"}

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


def reseed_attack(attack: Any, key: str) -> None:
    """Seed an attack (and its ensemble members) from the work item's sample ids and the attack.

    The attack's own seed is kept on the first call, so the seed of a work item depends on its
    samples, not on the items before it (resumed and sharded runs draw the same numbers).

    Args:
        attack: a built attack (``params.seed``, ``label``, optional ``members``).
        key: the work item's key (its sample ids joined by ``|``).
    """
    base = getattr(attack, "_base_seed", "unset")
    if base == "unset":
        base = attack.params.seed
        attack._base_seed = base
    if base is not None:
        attack.params.seed = derive_seed(base, attack.label, key)
    for m in getattr(attack, "members", []) or []:
        reseed_attack(m, key)


def build_sweep_attacks(cfg: EvalConfig, task: Any, threat: ThreatModel) -> list:
    """The configured attacks (presets expanded), each with a distinct label.

    Raises:
        ConfigError: two attacks with the same label.
    """
    attacks = [build_attack(spec, task, threat) for spec in expand_presets(cfg.attacks)]
    labels = [a.label for a in attacks]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"two attacks share the label {[l for l in labels if labels.count(l) > 1][0]!r}; give each a distinct 'label'.")
    return attacks


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
    attacks = build_sweep_attacks(cfg, setup.task, setup.threat)
    budgets = sorted(set(float(b) for b in cfg.threat.budgets))
    log.info("evaluating %d samples (%s split) with %s at %s budgets %s (%s units); bounds %s; inference %s",
             len(setup.indices), cfg.split, ", ".join(a.label for a in attacks), cfg.threat.norm, budgets, cfg.threat.units,
             setup.threat.bounds, getattr(setup.net, "describe", lambda: {})())
    store = WorkItemStore(setup.run_dir, setup.item_ids(), config_hash(cfg.model_dump()), resume, setup.shard)
    todo = store.todo()
    sweep = ItemSweep(setup, cfg, attacks, budgets)
    bar = step_progress(len(todo) * sweep.steps_per_item(), "evaluating")
    for item in todo:
        rec, examples = sweep.run(item, bar)
        if examples:  # attacks: the first items' examples; artefacts: every item's worst candidates
            store.save_examples(item, examples)
        store.append(item, rec)
    bar.close()
    if not setup.shard.main:
        store.close()
        barrier(setup.shard)  # matches rank 0's gather
        finish(setup.shard)
        return EvalResult(setup.run_dir, pd.DataFrame(), {})
    merged = merge_items(store, attacks, cfg.examples)
    table = pd.DataFrame(merged.rows)
    summary = _summary(setup, cfg, table, attacks, budgets, merged, time.time() - t_start)
    return _write_outputs(setup, cfg, table, summary, merged, t_start)


def _summary(setup: EvalSetup, cfg: EvalConfig, table: pd.DataFrame, attacks: list, budgets: list[float], merged: "MergedItems",
             elapsed: float) -> dict[str, Any]:
    """``summary.json``: the statistics of the table, timings, gradient evaluations and the settings."""
    from medrobust.evaluation.report import summarize

    summary = summarize(table, cfg, setup.info, budgets, [a.label for a in attacks], merged.flags)
    summary["time_s"] = {"total": elapsed, **{f"attack:{k}": v for k, v in merged.attack_time.items()}}
    summary["gradient_evaluations"] = _grad_summary(table, attacks, budgets)
    ck, net = setup.checkpoint, setup.net
    summary["settings"] = {"checkpoint": cfg.checkpoint, "split": cfg.split, "n_samples": len(setup.indices), "norm": cfg.threat.norm,
                           "units": cfg.threat.units, "budgets": budgets, "bounds": setup.threat.bounds, "metrics": sorted(set(cfg.metrics)),
                           "attacks": [a.describe() for a in attacks], "attack_cost_per_sample": {a.label: a.cost() for a in attacks},
                           "success": setup.task.describe().get("success"), "model": ck["model_spec"],
                           "model_source": ck.get("source") or {"source": "registry", "checkpoint": cfg.checkpoint},
                           "inference": {**cfg.inference.model_dump(), **({"predictor": net.describe()} if hasattr(net, "describe") else {})},
                           "grid": grid_statement(setup, setup.info.preprocess or {}) if cfg.task == "segmentation" else "classifier inputs",
                           "n_cases": int(table["case"].nunique()) if len(table) else 0, "seed": cfg.seed}
    return summary


def _write_outputs(setup: EvalSetup, cfg: EvalConfig, table: pd.DataFrame, summary: dict[str, Any], merged: "MergedItems",
                   t_start: float) -> EvalResult:
    """``results.csv``, ``summary.json``, the report; then the run folder is released."""
    from medrobust.evaluation.report import write_report
    from medrobust.outputs import release_output_dir

    run_dir = setup.run_dir
    write_text_atomic(run_dir / "results.csv", table.to_csv(index=False))
    write_json_atomic(run_dir / "summary.json", to_jsonable(summary))
    files = write_report(run_dir, table, summary, merged.examples, setup.info, cfg)
    for f in merged.flags:
        log.warning("flag: %s", f)
    log.info("evaluation finished in %.0fs; results in %s", time.time() - t_start, run_dir.resolve())
    finish(setup.shard)
    release_output_dir(run_dir)
    return EvalResult(run_dir, table, summary, files)


@dataclass
class MergedItems:
    """The finished work items of a run merged in item order."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    attack_time: dict[str, float] = field(default_factory=dict)
    examples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def merge_items(store: WorkItemStore, attacks: list, n_examples: int) -> MergedItems:
    """Rows, flags (once each), attack times and report examples of every work item, in item order.

    Args:
        store: the run's work-item store (rank 0, after every rank finished).
        attacks: the sweep's attacks (artefacts keep their largest drops over all items).
        n_examples: how many examples per attack the report shows.

    Returns:
        The merged records.
    """
    out = MergedItems(attack_time={a.label: 0.0 for a in attacks})
    art_labels = {a.label for a in attacks if is_artefact(a)}
    for item, rec in store.gather():
        out.rows += rec["rows"]
        for f in rec.get("flags", []):
            if f not in out.flags:
                out.flags.append(f)
        for k, v in rec.get("attack_time", {}).items():
            out.attack_time[k] = out.attack_time.get(k, 0.0) + float(v)
        for a, items in (store.load_examples(item) or {}).items():
            have = out.examples.setdefault(a, [])
            if a in art_labels:  # the largest drops from clean at the top severity, over all items
                out.examples[a] = sorted(have + items, key=lambda e: -e["drop"])[:n_examples]
            else:
                have.extend(items[: max(0, n_examples - len(have))])
    return out


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


@dataclass
class _Item:
    """One work item in progress: its batch, clean outputs and what it has produced so far."""

    number: int
    batch: dict[str, Any]
    x: torch.Tensor
    y: torch.Tensor
    logits_clean: torch.Tensor
    clean_rows: list[dict[str, Any]]
    flags: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)
    attack_time: dict[str, float] = field(default_factory=dict)
    examples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


class ItemSweep:
    """The clean pass and every attack at every level of its budget axis on one work item.

    Each attack is seeded from the item's sample ids (not from its position), so resumed and
    sharded runs give the same rows.

    Args:
        setup: the evaluation setup (model, task, threat, dataset, work items).
        cfg: the evaluation config.
        attacks: the built attacks.
        budgets: the sorted budgets (artefacts use their severity levels instead).
    """

    def __init__(self, setup: EvalSetup, cfg: EvalConfig, attacks: list, budgets: list[float]) -> None:
        self.setup, self.cfg, self.attacks, self.budgets = setup, cfg, attacks, budgets
        self.builder = RowBuilder(setup.task, cfg, {k: v for k, v in setup.info.label_map.items()}, setup.dataset)

    def steps_per_item(self) -> int:
        """Progress steps of one item: the clean pass and each attack at each budget above 0."""
        return 1 + sum(len([b for b in _levels(a, self.budgets) if b > 0]) for a in self.attacks)

    def run(self, item: int, bar: Any) -> tuple[dict[str, Any], dict[str, list]]:
        """The record (rows, flags, attack times) and report examples of work item ``item``."""
        it = self._clean(item)
        bar.update(1)
        key = "|".join(it.batch["id"])
        for attack in self.attacks:
            reseed_attack(attack, key)
            levels = _levels(attack, self.budgets)
            for budget in levels:
                if self._level(it, attack, budget, levels):
                    bar.update(1)
        return {"rows": it.rows, "flags": it.flags, "attack_time": it.attack_time}, it.examples

    def _clean(self, item: int) -> _Item:
        setup = self.setup
        net, task = setup.net, setup.task
        batch = setup.batch(item)
        x = batch["image"].to(setup.device)
        y = batch["label"].to(setup.device)
        flags: list[str] = []
        if item == 0:
            flags += model_flags(net, x[: min(4, len(x))])
            flags += gradient_flags(net, task, x[: min(4, len(x))], y[: min(4, len(y))])
            with torch.no_grad():
                task.check_target(net(x[:1]), y[:1])
        check_clean_within_bounds(setup.threat, x, batch)
        with torch.no_grad():
            logits_clean = net(x)
        clean_rows = self.builder.rows(batch, logits_clean, y, "clean", 0.0, {"input": torch.zeros(len(x))})
        return _Item(item, batch, x, y, logits_clean, clean_rows, flags, rows=list(clean_rows))

    def _level(self, it: _Item, attack: Any, budget: float, levels: list[float]) -> bool:
        """Rows of one attack at one level (budget 0: the clean rows); True when the attack ran."""
        cfg, x = self.cfg, it.x
        art = is_artefact(attack)  # artefacts: the budget axis is the severity level 0-5
        eps = torch.full((len(x),), float(budget), device=x.device) if art else \
            budget_to_input(budget, cfg.threat.units, cfg.threat.norm, it.batch, x)
        units = {"input": torch.full((len(x),), float("nan"))} if art else input_to_units(eps, it.batch, x)
        if budget == 0:
            it.rows += [dict(r, attack=attack.label, budget=0.0, **{f"eps_{k}": 0.0 for k in units},
                             **({"severity": 0} if art else {})) for r in it.clean_rows]
            return False
        res, logits = self._attack(it, attack, eps, art)
        new = self.builder.rows(it.batch, logits, it.y, attack.label, budget, units, res.extra)
        if art:
            for r in new:
                r["severity"] = int(budget)
        it.rows += new
        for f in res.flags:
            if f not in it.flags:
                it.flags.append(f)
        self._examples(it, attack, budget, levels, res.x_adv, logits, new, art)
        if cfg.save_nifti and budget == levels[-1]:
            _save_nifti(self.setup.run_dir, self.setup.dataset, it.batch, res.x_adv, logits, attack.label, self.setup.info.label_values)
        return True

    def _attack(self, it: _Item, attack: Any, eps: torch.Tensor, art: bool) -> tuple[Any, torch.Tensor]:
        """Run the attack (timed, gradient evaluations counted), check the threat model, predict."""
        net, x, y = self.setup.net, it.x, it.y
        t0 = time.time()
        counter = _GradCounter(net)
        try:
            res = attack(net, x, y, eps, batch=it.batch) if art else attack(net, x, y, eps)
        finally:
            counter.remove()
        it.attack_time[attack.label] = it.attack_time.get(attack.label, 0.0) + time.time() - t0
        if "grad_evals" not in res.extra:
            res.extra["grad_evals"] = torch.full((len(x),), counter.count / max(1, len(x)), dtype=torch.float64)
        inside = torch.ones(len(x), dtype=torch.bool) if art else self.setup.threat.within(res.x_adv, x, eps.to(x.dtype), atol=1e-4)
        if not bool(inside.all()):
            raise RuntimeError(f"attack {attack.label} returned {int((~inside).sum())} perturbations outside the threat model (a bug)")
        with torch.no_grad():
            logits = net(res.x_adv)
        return res, logits

    def _examples(self, it: _Item, attack: Any, budget: float, levels: list[float], x_adv: torch.Tensor, logits: torch.Tensor,
                  new: list[dict[str, Any]], art: bool) -> None:
        """Report examples: an artefact's largest drops from clean at its top level; an attack's first items at the top budget."""
        n = self.cfg.examples
        if art and budget == levels[-1] and n:
            items = _example_items(it.batch, it.x, x_adv, it.logits_clean, logits, it.y, new, len(it.x))
            for e, c in zip(items, it.clean_rows):
                e["drop"] = float(c.get("dice", c.get("correct"))) - float(e["metric_adv"])
            it.examples[attack.label] = sorted(items, key=lambda e: -e["drop"])[:n]
        elif not art and budget == self.budgets[-1] and it.number < n:
            it.examples[attack.label] = _example_items(it.batch, it.x, x_adv, it.logits_clean, logits, it.y, new, n)


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
