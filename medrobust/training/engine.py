"""The training engine: one loop for every method, task and dimension.

It builds the data, model, task, threat model and method from a :class:`TrainConfig`, trains
with a progress bar, validates every ``val_every`` epochs, logs metrics to ``metrics.jsonl`` and
``metrics.csv``, and writes ``last.pt`` every epoch and ``best.pt`` on improvement (atomically).

Resume is exact on the CPU: the sampler order and the augmentation draws are functions of
``(seed, epoch, sample)``, and the checkpoint holds the optimiser, the RNG states, the history
and the per-sample method state, so training N epochs in one go equals training k epochs,
killing the process and resuming.

Distributed: launched with ``torchrun``, the engine initialises the process group from the
environment, shards each epoch's sample order by rank, averages gradients over ranks after each
backward (as DDP does; no wrapper, so attacks and ``functional_call`` work on the plain model),
broadcasts buffers from rank 0, merges per-sample state across ranks and lets rank 0 write.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader

from medrobust.checkpoint import load_checkpoint, save_checkpoint
from medrobust.config import ScheduleConfig, TrainConfig
from medrobust.data.datasets import DataModule, ShardedShuffleSampler, collate
from medrobust.distributed import Shard
from medrobust.errors import CheckpointError, ConfigError
from medrobust.models import build_model, check_input_size, count_parameters, load_state_checked, resolve_spec
from medrobust.tasks import build_task
from medrobust.threat import ThreatModel, resolve_bounds
from medrobust.training.batchnorm import batch_coupling_flags
from medrobust.training.base import PassCounter, StepContext, build_method, method_summary
from medrobust.training.budget import ComputeMeter
from medrobust.training.robust_validation import RobustValidator, Selection, clean_metric
from medrobust.training.state import SampleState
from medrobust.amp import autocast_forward
from medrobust.inference import build_predictor
from medrobust.training.validation import validate_classification, validate_segmentation
from medrobust.utils import (
    attach_run_log,
    get_rng_state,
    progress,
    resolve_device,
    seed_everything,
    set_rng_state,
    to_jsonable,
    write_json_atomic,
    write_text_atomic,
)

log = logging.getLogger(__name__)


# ============================================================================ distributed
Dist = Shard  # this process's place among the torchrun processes (one class for training and evaluation)


def init_distributed(cfg: TrainConfig, device: torch.device) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    backend = cfg.distributed.backend
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return Dist(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def allreduce_grads(model: nn.Module, d: Dist, bucket_mb: float = 25.0) -> int:
    """Average parameter gradients over ranks in buckets (DDP's scheme, without its forward wrapper).

    Gradients are flattened into buckets of about ``bucket_mb`` MiB (grouped by dtype and device)
    and each bucket takes one ``all_reduce`` call, instead of one call per parameter.

    Returns:
        The number of ``all_reduce`` calls made.
    """
    if d.world_size <= 1:
        return 0
    import torch.distributed as dist
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    limit = int(bucket_mb * 2**20)
    buckets: list[list[torch.Tensor]] = []
    cur: list[torch.Tensor] = []
    size = 0
    for p in model.parameters():
        g = p.grad
        if g is None:
            continue
        if cur and (size + g.numel() * g.element_size() > limit or g.dtype != cur[0].dtype or g.device != cur[0].device):
            buckets.append(cur)
            cur, size = [], 0
        cur.append(g)
        size += g.numel() * g.element_size()
    if cur:
        buckets.append(cur)
    for b in buckets:
        flat = _flatten_dense_tensors(b)
        dist.all_reduce(flat)
        flat /= d.world_size
        for g, v in zip(b, _unflatten_dense_tensors(flat, b)):
            g.copy_(v)
    return len(buckets)


def sync_buffers(model: nn.Module, d: Dist) -> None:
    """Broadcast buffers (BN running statistics) from rank 0, as DDP does."""
    if d.world_size <= 1:
        return
    import torch.distributed as dist

    for b in model.buffers():
        dist.broadcast(b, 0)


def barrier(d: Dist) -> None:
    if d.world_size > 1:
        import torch.distributed as dist

        dist.barrier()


# ============================================================================ optimisation
def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    o = cfg.optimizer
    params = [p for p in model.parameters() if p.requires_grad]
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov and o.momentum > 0,
                               weight_decay=o.weight_decay)
    if o.name == "adamw":
        return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
    return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)


def lr_factor(s: ScheduleConfig, epoch: int, epochs: int) -> float:
    """Learning-rate multiplier for ``epoch`` (0-based): warm-up, then the schedule."""
    if s.warmup_epochs and epoch < s.warmup_epochs:
        return (epoch + 1) / (s.warmup_epochs + 1)
    t = epoch - s.warmup_epochs
    total = max(1, epochs - s.warmup_epochs)
    if s.name == "cosine":
        return 0.5 * (1 + math.cos(math.pi * t / total))
    if s.name == "poly":
        return (1 - t / total) ** s.power
    if s.name == "step":
        return s.gamma ** (t // max(1, s.step_size))
    if s.name == "multistep":
        return s.gamma ** sum(1 for m in s.milestones if epoch >= m)
    return 1.0


# ============================================================================ run folder
def _status(run_dir: Path) -> Optional[dict[str, Any]]:
    p = run_dir / "status.json"
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError:
        return {"state": "unknown"}


#: config keys that may differ on --resume without changing what was trained (epochs may grow)
RESUME_FREE_KEYS = ("output_dir", "device", "num_workers", "distributed", "epochs")


def prepare_run_dir(run_dir: Path, resume: bool, cfg: Optional[TrainConfig] = None) -> bool:
    """Check, lock and mark a training run folder; returns whether to resume.

    - ``--resume`` needs ``last.pt`` and the same config as that run (only ``epochs`` may change,
      and the change is recorded); a folder whose run never finished an epoch starts again.
    - A fresh run refuses a folder holding a run with a finished epoch, another command's
      output or other files, unless ``--overwrite`` (see :mod:`medrobust.outputs`).
    """
    from medrobust import outputs

    command = "train-seg" if cfg is None or cfg.task == "segmentation" else "train-classify"
    config = cfg.model_dump(mode="json") if cfg is not None else {}
    outputs.check_writable_dir(run_dir)
    outputs.acquire_lock(run_dir, command)
    try:
        return _check_run_dir(run_dir, resume, cfg, command, config)
    except BaseException:
        outputs.release_output_dir(run_dir)
        raise


def _check_run_dir(run_dir: Path, resume: bool, cfg: Optional[TrainConfig], command: str, config: dict[str, Any]) -> bool:
    from medrobust import outputs

    marker = outputs.read_marker(run_dir)
    status = _status(run_dir)
    has_last = (run_dir / "last.pt").is_file()
    is_train = (marker or {}).get("command", "").startswith("train") or (marker is None and (status is not None or has_last))
    entries = outputs.result_entries(run_dir)
    overwrite = outputs.overwrite_enabled()

    def conflict(reason: str) -> bool:
        if not overwrite:
            raise outputs._refusal(run_dir, reason)
        outputs.move_aside(run_dir)
        outputs.write_marker(run_dir, command, config, "started (old files moved aside by --overwrite)")
        return False

    if entries and not is_train:
        other = outputs.conflict_reason(run_dir, command, config, compatible=("train-seg", "train-classify"))
        return conflict(other or "already holds other files")
    if resume:
        if not has_last:
            if status is not None or marker is not None:
                log.warning("no epoch of the run in '%s' finished, so there is nothing to resume; starting from epoch 0", run_dir)
                outputs.write_marker(run_dir, command, config, "restarted (no finished epoch to resume)", marker)
                return False
            raise CheckpointError(f"cannot resume: '{run_dir / 'last.pt'}' does not exist; train without --resume first (or fix output_dir).")
        if cfg is not None:
            old_cfg = load_checkpoint(run_dir / "last.pt").get("config", {})
            try:  # fill keys added to the schema since that run with their defaults
                old_cfg = TrainConfig.model_validate(old_cfg).model_dump(mode="json")
            except Exception:  # noqa: BLE001 - a key removed since: compare the raw config
                pass
            changed = [k for k in outputs.config_diff(old_cfg, config, ignore=RESUME_FREE_KEYS)]
            if changed:
                return conflict(f"was trained with a different config, so it cannot be resumed with this one "
                                f"(changed: {outputs.describe_diff(old_cfg, config, changed)}; only epochs may change on --resume)")
            event = "resumed"
            if old_cfg.get("epochs") != config.get("epochs"):
                event = f"resumed with epochs changed from {old_cfg.get('epochs')} to {config.get('epochs')}"
                log.info("--resume: %s", event)
            outputs.write_marker(run_dir, command, config, event, marker)
        return True
    if has_last:
        state = (status or {}).get("state", "unfinished")
        if state == "finished":
            return conflict("already holds a finished run (pass --resume instead to continue it with more epochs)")
        return conflict(f"holds an unfinished run (state: {state}; pass --resume instead to continue it)")
    if status is not None:
        log.info("the earlier run in '%s' finished no epoch; starting it again", run_dir)
    outputs.write_marker(run_dir, command, config, "started", marker if is_train else None)
    return False


@dataclass
class TrainResult:
    run_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    history: list[dict[str, Any]]
    best_metric: float
    exported: Optional[Path] = None  # a fine-tuned nnU-Net folder / MONAI bundle (model sources)

    @staticmethod
    def paths(run_dir: Path) -> dict[str, str]:
        """The outputs a training run in ``run_dir`` writes (the one place pipelines read them from)."""
        run_dir = Path(run_dir)
        return {"run_dir": str(run_dir), "best_checkpoint": str(run_dir / "best.pt"),
                "last_checkpoint": str(run_dir / "last.pt"), "checkpoint": str(run_dir / "best.pt"),
                "best_clean_checkpoint": str(_best_clean(run_dir)), "metrics": str(run_dir / "metrics.csv")}

    def outputs(self) -> dict[str, str]:
        out = self.paths(self.run_dir)
        if self.exported is not None:
            out["exported"] = str(self.exported)
        return out


def _best_clean(run_dir: Path) -> Path:
    """``best_clean.pt`` when the run selected by another metric (robust validation), else ``best.pt``."""
    p = Path(run_dir) / "best_clean.pt"
    return p if p.exists() else Path(run_dir) / "best.pt"


# ============================================================================ engine
def train(cfg: TrainConfig, resume: bool = False, stop_after: Optional[int] = None) -> TrainResult:
    """Train a model from a config; returns the run folder and checkpoint paths.

    ``stop_after``: stop (as if killed) after this many epochs of this invocation; for tests.
    """
    device = resolve_device(cfg.device)
    dist_info = init_distributed(cfg, device)
    if dist_info.world_size > 1 and device.type == "cuda":
        device = torch.device("cuda", dist_info.local_rank)
        torch.cuda.set_device(device)
    run_dir = Path(cfg.output_dir)
    if dist_info.main:
        resume = prepare_run_dir(run_dir, resume, cfg)
        attach_run_log(run_dir)  # the run's log.txt; console handlers are the CLI's (setup_logging)
    barrier(dist_info)
    if not dist_info.main:
        resume = resume and (run_dir / "last.pt").is_file()  # rank 0 may have started afresh
    seed_everything(cfg.seed)

    # ---- an nnU-Net / MONAI-bundle model to fine-tune (medrobust.models.sources) ----------
    from medrobust.models.sources.training import prepare_source_training

    cfg, ext = prepare_source_training(cfg)

    # ---- data ------------------------------------------------------------------------
    data = DataModule(cfg.data, cfg.task)
    train_ds = data.dataset("train", train=True, seed=cfg.seed)
    val_cases = data.prepared("val")
    info = data.info(train_ds.cases)
    if len(train_ds) == 0:
        raise ConfigError("the training split yields no samples (e.g. no slice with foreground); check the data config.")
    log.info("data: %d training samples from %d cases, %d validation cases; %dD inputs with %d channel(s); labels %s",
             len(train_ds), len(train_ds.cases), len(val_cases), info.spatial_dims, info.in_channels, info.label_map)
    if not val_cases:
        log.info("no validation cases (split.val_fraction 0 or an empty val split): nothing is validated and best.pt is the last epoch")

    # ---- model, task, threat, method ---------------------------------------------------
    m = cfg.model
    if ext is not None:
        spec = ext.spec
        info.input_size = None  # the source model runs its own sliding windows (nnU-Net's / the bundle's inferer)
    else:
        spec = resolve_spec(m.name, m.spatial_dims or info.spatial_dims, m.in_channels or info.in_channels,
                            m.out_channels or info.num_classes, cfg.task, m.params)
    if spec["out_channels"] != info.num_classes:
        raise ConfigError(f"model.out_channels is {spec['out_channels']} but the label map has {info.num_classes} classes; remove model.out_channels or fix it.")
    if spec["in_channels"] != info.in_channels:
        raise ConfigError(f"model.in_channels is {spec['in_channels']} but the images have {info.in_channels} channel(s); remove model.in_channels or fix it.")
    if cfg.task == "segmentation" and ext is None:
        check_input_size(spec, info.input_size or list(train_ds[0]["image"].shape[1:]))
    seed_everything(cfg.seed)
    model = (ext.model if ext is not None else build_model(spec)).to(device)
    task = build_task(cfg.task, info.num_classes, cfg.loss, cfg.success)
    threat = ThreatModel(cfg.threat.norm, resolve_bounds(cfg.threat.bounds, info.bounds))
    method = build_method(cfg.method, task, threat, cfg)
    state = SampleState(train_ds.ids())
    method.setup(state, model)
    run_flags = batch_coupling_flags(method, model)
    for flag in run_flags:
        log.warning("%s", flag)
    optimizer = build_optimizer(cfg, model)
    log.info("model %s (%d parameters); method %s; threat %s, bounds %s", spec["name"], count_parameters(model),
             method.name, cfg.threat.norm, threat.bounds)

    if cfg.init_from and not resume and ext is None:
        ck0 = load_checkpoint(cfg.init_from)
        if ck0["model_spec"] != spec:
            raise CheckpointError(f"init_from checkpoint '{cfg.init_from}' is for model {ck0['model_spec']['name']} "
                                  f"with a different spec; use a checkpoint of the same model config.")
        load_state_checked(model, ck0["model_state"], cfg.init_from)
        log.info("initialised weights from %s", cfg.init_from)

    start_epoch, history, best = 0, [], -math.inf
    robust_val = RobustValidator.build(cfg, method, task, threat, info.spatial_dims, info.input_size) if val_cases else None
    select = cfg.select_metric or (robust_val.metric if robust_val else clean_metric(cfg.task))
    if resume:
        ck = load_checkpoint(run_dir / "last.pt")
        if ck["model_spec"] != spec:
            raise CheckpointError(f"'{run_dir / 'last.pt'}' was trained with a different model spec; resume with the config of that run.")
        load_state_checked(model, ck["model_state"], str(run_dir / "last.pt"))
        ts = ck["train_state"]
        optimizer.load_state_dict(ts["optimizer"])
        start_epoch, history, best = int(ts["epoch"]), list(ts["history"]), float(ts["best"])
        state.load_state_dict(ck["sample_state"])
        method.load_state_dict(ck.get("method", {}).get("state", {}))
        set_rng_state(ts["rng"])
        log.info("resumed from %s at epoch %d", run_dir / "last.pt", start_epoch)
        if start_epoch >= cfg.epochs:
            log.info("nothing to do: the run already has %d epochs (epochs: %d)", start_epoch, cfg.epochs)

    raw_model = model  # no DDP wrapper: gradients are averaged explicitly (works with functional_call, attacks)

    sampler = ShardedShuffleSampler(len(train_ds), cfg.seed, dist_info.rank, dist_info.world_size,
                                    num_samples=cfg.iterations_per_epoch * cfg.batch_size if cfg.iterations_per_epoch else None)
    loader = DataLoader(train_ds, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
                        collate_fn=collate, drop_last=False, persistent_workers=False)
    val_loader = None
    if cfg.task == "classification" and val_cases:
        val_ds = data.dataset("val", train=False)
        val_loader = DataLoader(val_ds, batch_size=cfg.val_batch_size, shuffle=False, collate_fn=collate)

    payload_static = {
        "model_spec": spec, "data_info": info.to_dict(), "task": task.describe(),
        "config": cfg.model_dump(mode="json"), "method_summary": to_jsonable(method_summary(method)),
        "versions": {"torch": str(torch.__version__), "medrobust": str(__import__("medrobust").__version__)},
    }
    if dist_info.main:
        write_text_atomic(run_dir / "config.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        write_json_atomic(run_dir / "status.json", {"state": "running", "epoch": start_epoch, "epochs": cfg.epochs})

    selection = Selection(select, clean_metric(cfg.task), history)
    meter = ComputeMeter(cfg.budget, history)
    if robust_val is not None:
        log.info("robust validation: %s at %g (%s, %s); checkpoints selected by %s", robust_val.attack.name, robust_val.eps,
                 robust_val.units, threat.norm, select)
    counter = PassCounter(raw_model)
    ctx = StepContext(model=model, raw_model=raw_model, task=task, threat=threat, state=state, epoch=start_epoch,
                      epochs=cfg.epochs, optimizer=optimizer, run_dir=run_dir, is_main=dist_info.main)
    epochs_run = 0
    try:
        for epoch in range(start_epoch, cfg.epochs):
            if meter.spent:
                log.info("compute budget spent (%s); stopping before epoch %d", meter.describe(), epoch + 1)
                break
            ctx.epoch = epoch
            for g in optimizer.param_groups:
                g["lr"] = cfg.optimizer.lr * lr_factor(cfg.schedule, epoch, cfg.epochs)
            sampler.set_epoch(epoch)
            train_ds.set_epoch(epoch)
            sync_buffers(raw_model, dist_info)
            model.train()
            method.start_epoch(ctx)
            touched = torch.zeros(len(state), dtype=torch.bool)
            sums: dict[str, float] = {}
            n_steps, t0, c0 = 0, time.time(), time.process_time()
            counter.reset()
            bar = progress(loader, total=len(loader), desc=f"epoch {epoch + 1}/{cfg.epochs} [{method.name}]",
                           disable=None if dist_info.main else True, line=False)  # the epoch's log line is the one line
            for batch in bar:
                batch = {k: (v.to(device) if isinstance(v, torch.Tensor) and k in ("image", "label") else v) for k, v in batch.items()}
                ctx.step = n_steps
                with autocast_forward(raw_model, cfg.amp):
                    out = method.compute(ctx, batch)
                if not torch.isfinite(out.loss):
                    raise FloatingPointError(f"the training loss became {float(out.loss)} at epoch {epoch + 1}; lower optimizer.lr or enable grad_clip.")
                optimizer.zero_grad(set_to_none=True)
                out.loss.backward()
                allreduce_grads(raw_model, dist_info)
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.grad_clip)
                optimizer.step()
                method.after_step(ctx)
                touched[state.rows(batch["id"])] = True
                n_steps += 1
                sums["loss"] = sums.get("loss", 0.0) + float(out.loss.detach())
                for k, v in out.logs.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                if hasattr(bar, "set_postfix"):
                    bar.set_postfix(loss=f"{sums['loss'] / n_steps:.4f}")
                if meter.spent_during_epoch(counter, time.time() - t0):
                    break
            train_time, train_cpu = time.time() - t0, time.process_time() - c0
            sync_buffers(raw_model, dist_info)
            row: dict[str, Any] = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"]}
            row.update({f"train_{k}" if not k.startswith("train_") else k: v / max(1, n_steps) for k, v in sums.items()})
            f_nom, b_nom = method.passes()
            row.update({"time_train_s": train_time, "cpu_train_s": train_cpu, "steps": n_steps,
                        "forward_per_step": counter.forward / max(1, n_steps), "backward_per_step": counter.backward / max(1, n_steps),
                        "nominal_forward_per_step": f_nom, "nominal_backward_per_step": b_nom})
            row.update(meter.close_epoch(counter.forward, counter.backward, train_time))
            stopping = meter.spent
            row.update(method.end_epoch(ctx))
            state.sync(touched)  # after end_epoch: epoch-end rules (IMA) update only this rank's samples
            if (epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs or stopping:
                t1 = time.time()
                counter.remove()
                if cfg.task == "segmentation":
                    row.update(validate_segmentation(raw_model, val_cases, task, info.spatial_dims, cfg.data.slice_axis,
                                                     info.input_size, cfg.val_batch_size, device,
                                                     predictor=build_predictor(raw_model, info.input_size, cfg.inference,
                                                                               cfg.task, spec)))
                elif val_loader is not None:
                    with autocast_forward(raw_model, cfg.inference.amp):
                        row.update(validate_classification(raw_model, val_loader, task, device))
                if robust_val is not None:
                    with autocast_forward(raw_model, cfg.inference.amp):  # validation follows inference.amp
                        row.update(robust_val.validate(raw_model, val_cases, val_loader, device, epoch + 1,
                                                       run_dir if dist_info.main else None))
                    row.update(meter.add_validation(row))
                counter = PassCounter(raw_model)
                row["time_val_s"] = time.time() - t1
            history.append(to_jsonable(row))
            current = row.get(select)
            if current is None and any(k.startswith("val_") for k in row):
                raise ConfigError(f"select_metric '{select}' is not a logged metric; choose one of {', '.join(k for k in row if k.startswith('val_'))}.")
            improved = current is not None and not math.isnan(float(current)) and float(current) > best
            clean_improved = selection.offer(row)[1]
            if improved:
                best = float(current)
            elif not val_cases and epoch + 1 == cfg.epochs:
                improved = True  # no validation split: the last epoch is the best we know
            if dist_info.main:
                ck = dict(payload_static)
                ck.update({"model_state": {k: v.detach().cpu() for k, v in raw_model.state_dict().items()},
                           "train_state": {"epoch": epoch + 1, "optimizer": optimizer.state_dict(), "rng": get_rng_state(),
                                           "history": history, "best": best, "select_metric": select},
                           "sample_state": state.state_dict(),
                           "method": {"name": method.name, "state": method.state_dict()}})
                save_checkpoint(ck, run_dir / "last.pt")
                if improved:
                    save_checkpoint(ck, run_dir / "best.pt")
                if clean_improved and select != selection.clean:
                    save_checkpoint(ck, run_dir / "best_clean.pt")
                _write_metrics(run_dir, history)
                method_logs = {k: v for k, v in row.items() if k.startswith("state_")}
                log.info("epoch %d/%d  loss %.4f  %s%s  (%.1fs)", epoch + 1, cfg.epochs, row.get("train_loss", float("nan")),
                         "  ".join(f"{k} {float(v):.4f}" for k, v in row.items() if k.startswith("val_") and k.count("_") == 1),
                         "  " + "  ".join(f"{k} {float(v):.3g}" for k, v in method_logs.items()) if method_logs else "",
                         train_time)
                write_json_atomic(run_dir / "status.json", {"state": "running", "epoch": epoch + 1, "epochs": cfg.epochs})
            epochs_run += 1
            if stopping:
                log.info("compute budget spent after epoch %d: %s", epoch + 1, meter.describe())
                break
            if stop_after is not None and epochs_run >= stop_after and epoch + 1 < cfg.epochs:
                log.info("stopping after %d epoch(s) as requested (resume with --resume)", epochs_run)
                _release(run_dir, dist_info)
                return TrainResult(run_dir, run_dir / "best.pt", run_dir / "last.pt", history, best)
    finally:
        counter.remove()
    if dist_info.main:
        if not (run_dir / "best.pt").exists() and (run_dir / "last.pt").exists():
            import shutil

            shutil.copyfile(run_dir / "last.pt", run_dir / "best.pt")
        _plot_history(run_dir, history, cfg.task)
        done = int(history[-1]["epoch"]) if history else cfg.epochs
        if meter.active and not meter.spent:
            log.warning("the compute budget was not spent (%s) when the epoch cap (epochs: %d) was reached; raise epochs "
                        "so that runs compared at matched compute really get it.", meter.describe(), cfg.epochs)
        if select != selection.clean and not (run_dir / "best_clean.pt").exists():
            import shutil

            shutil.copyfile(run_dir / "best.pt", run_dir / "best_clean.pt")
        write_json_atomic(run_dir / "summary.json", {"best_metric": best if math.isfinite(best) else None, "select_metric": select, "epochs": cfg.epochs,
                                                     "epochs_run": done, **selection.summary(),
                                                     "robust_validation": robust_val.describe() if robust_val else None,
                                                     "compute": meter.describe(),
                                                     "method": method_summary(method), "model": spec,
                                                     "last": history[-1] if history else {}, "flags": run_flags})
        if ext is not None:  # write the fine-tuned model back in its source's format
            from medrobust.models.sources import export_trained

            exported = export_trained(spec, load_checkpoint(run_dir / "best.pt")["model_state"], run_dir, method.name)
        write_json_atomic(run_dir / "status.json", {"state": "finished", "epoch": done, "epochs": cfg.epochs})
        if math.isfinite(best):
            log.info("finished: best %s %.4f; checkpoints in %s", select, best, run_dir.resolve())
        else:
            log.info("finished: no %s (no validation cases), best.pt is the last epoch; checkpoints in %s", select, run_dir.resolve())
    barrier(dist_info)
    _release(run_dir, dist_info)
    return TrainResult(run_dir, run_dir / "best.pt", run_dir / "last.pt", history, best, exported if ext is not None and dist_info.main else None)


def _release(run_dir: Path, d: Dist) -> None:
    if d.main:
        from medrobust.outputs import release_output_dir

        release_output_dir(run_dir)


def _write_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    keys: list[str] = []
    for row in history:
        for k in row:
            if k not in keys:
                keys.append(k)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    for row in history:
        w.writerow({k: row.get(k, "") for k in keys})
    write_text_atomic(run_dir / "metrics.csv", buf.getvalue())
    write_text_atomic(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))


def _plot_history(run_dir: Path, history: list[dict[str, Any]], task: str) -> None:
    if not history:
        return
    from medrobust.plotting import plot_training_curves

    try:
        plot_training_curves(history, run_dir / "training_curves.png", task)
    except Exception as exc:  # noqa: BLE001 - a plot must never fail a finished training run
        log.warning("could not draw training curves: %s", exc)
