"""The trainer: one loop for every method, task and dimension, in named steps.

:meth:`Trainer.run` calls, in order:

- :meth:`~Trainer.start`: device, torchrun ranks, the run folder (resume / overwrite rules), seeds;
- :meth:`~Trainer.setup`: data, model, task, threat, method, optimiser and schedule, robust
  validation, the state of a resumed run, loaders, the compute budget;
- per epoch :meth:`~Trainer.train_epoch` (with :meth:`~Trainer.train_step` per batch), then
  :meth:`~Trainer.validate` (clean + robust) every ``val_every`` epochs, then
  :meth:`~Trainer.checkpoint` (selection, ``last.pt`` / ``best.pt`` / ``best_clean.pt``, metrics);
- :meth:`~Trainer.finish`: ``summary.json``, plots, the exported model of a model source.

Resume is exact on the CPU: the sampler order and the augmentation draws are functions of
``(seed, epoch, sample)``, and the checkpoint holds the optimiser, the RNG states, the history
and the per-sample method state, so training N epochs in one go equals training k epochs,
killing the process and resuming. Distributed runs: see :mod:`medrobust.training.ddp`.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any, Optional

import torch
import yaml
from torch.utils.data import DataLoader

from medrobust.amp import autocast_forward
from medrobust.checkpoint import load_checkpoint, save_checkpoint
from medrobust.config import TrainConfig
from medrobust.data.datasets import DataModule, ShardedShuffleSampler, collate
from medrobust.errors import CheckpointError, ConfigError
from medrobust.inference import build_predictor
from medrobust.models import build_model, check_input_size, count_parameters, load_state_checked, resolve_spec
from medrobust.tasks import build_task
from medrobust.threat import ThreatModel, resolve_bounds
from medrobust.training.base import PassCounter, StepContext, build_method, method_summary
from medrobust.training.batchnorm import batch_coupling_flags
from medrobust.training.budget import ComputeMeter
from medrobust.training.ddp import allreduce_grads, barrier, init_distributed, sync_buffers
from medrobust.training.robust_validation import RobustValidator, Selection, clean_metric
from medrobust.training.run_folder import TrainResult, plot_history, prepare_run_dir, release, run_log, write_metrics
from medrobust.training.schedule import build_optimizer, build_scheduler, set_epoch_lr
from medrobust.training.state import SampleState
from medrobust.training.validation import validate_classification, validate_segmentation
from medrobust.utils import (
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


class Trainer:
    """Trains a model from a :class:`TrainConfig` (see the module docstring for the steps).

    Args:
        cfg: the validated training config.
        resume: continue the run in ``cfg.output_dir`` from its ``last.pt``.
        stop_after: stop (as if killed) after this many epochs of this invocation; for tests.
    """

    def __init__(self, cfg: TrainConfig, resume: bool = False, stop_after: Optional[int] = None) -> None:
        self.cfg, self.resume, self.stop_after = cfg, resume, stop_after
        self.history: list[dict[str, Any]] = []
        self.start_epoch, self.best, self.epochs_run = 0, -math.inf, 0
        self.exported: Optional[Path] = None

    # ------------------------------------------------------------------ the run
    def run(self) -> TrainResult:
        """Train; returns the run folder, checkpoint paths and history."""
        self.start()
        with run_log(self.run_dir, enabled=self.dist.main):  # the run's log.txt; console handlers are the CLI's
            barrier(self.dist)
            if not self.dist.main:
                self.resume = self.resume and (self.run_dir / "last.pt").is_file()  # rank 0 may have started afresh
            seed_everything(self.cfg.seed)  # not monai's set_determinism: it also sets global cudnn flags and takes seeds mod 2**32
            self.setup()
            try:
                for epoch in range(self.start_epoch, self.cfg.epochs):
                    if self.meter.spent:
                        log.info("compute budget spent (%s); stopping before epoch %d", self.meter.describe(), epoch + 1)
                        break
                    if self.run_epoch(epoch):
                        break
                    if self.stop_after is not None and self.epochs_run >= self.stop_after and epoch + 1 < self.cfg.epochs:
                        log.info("stopping after %d epoch(s) as requested (resume with --resume)", self.epochs_run)
                        release(self.run_dir, self.dist.main)
                        return TrainResult(self.run_dir, self.run_dir / "best.pt", self.run_dir / "last.pt", self.history, self.best)
            finally:
                self.counter.remove()
            return self.finish()

    def start(self) -> None:
        """Device and torchrun ranks; rank 0 checks, locks and marks the run folder."""
        self.device = resolve_device(self.cfg.device)
        self.dist = init_distributed(self.cfg, self.device)
        if self.dist.world_size > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(self.device)
        self.run_dir = Path(self.cfg.output_dir)
        if self.dist.main:
            self.resume = prepare_run_dir(self.run_dir, self.resume, self.cfg)

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        """Everything an epoch needs, in the order that fixes the random draws."""
        from medrobust.models.sources.training import prepare_source_training  # an nnU-Net / MONAI bundle to fine-tune

        self.cfg, self.ext = prepare_source_training(self.cfg)
        self.setup_data()
        self.setup_model()
        self.setup_method()
        self.setup_validation()
        if self.resume:
            self.load_resume_state()
        self.setup_loaders()
        self.setup_run_files()

    def setup_data(self) -> None:
        """The training dataset and the prepared validation cases."""
        cfg = self.cfg
        self.data = DataModule(cfg.data, cfg.task)
        self.train_ds = self.data.dataset("train", train=True, seed=cfg.seed)
        self.val_cases = self.data.prepared("val")
        self.info = info = self.data.info(self.train_ds.cases)
        if len(self.train_ds) == 0:
            raise ConfigError("the training split yields no samples (e.g. no slice with foreground); check the data config.")
        log.info("data: %d training samples from %d cases, %d validation cases; %dD inputs with %d channel(s); labels %s",
                 len(self.train_ds), len(self.train_ds.cases), len(self.val_cases), info.spatial_dims, info.in_channels, info.label_map)
        if not self.val_cases:
            log.info("no validation cases (split.val_fraction 0 or an empty val split): nothing is validated and best.pt is the last epoch")

    def setup_model(self) -> None:
        """The model spec (checked against the data), then the network (seeded)."""
        cfg, info, ext, m = self.cfg, self.info, self.ext, self.cfg.model
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
            check_input_size(spec, info.input_size or list(self.train_ds[0]["image"].shape[1:]))
        seed_everything(cfg.seed)
        self.spec = spec
        self.model = (ext.model if ext is not None else build_model(spec)).to(self.device)

    def setup_method(self) -> None:
        """Task, threat model, method and its per-sample state, optimiser and schedule; ``init_from`` weights."""
        cfg, model = self.cfg, self.model
        self.task = build_task(cfg.task, self.info.num_classes, cfg.loss, cfg.success)
        self.threat = ThreatModel(cfg.threat.norm, resolve_bounds(cfg.threat.bounds, self.info.bounds))
        self.method = build_method(cfg.method, self.task, self.threat, cfg)
        self.state = SampleState(self.train_ds.ids())
        self.method.setup(self.state, model)
        self.run_flags = batch_coupling_flags(self.method, model)
        for flag in self.run_flags:
            log.warning("%s", flag)
        self.optimizer = build_optimizer(cfg, model)
        self.scheduler = build_scheduler(cfg, self.optimizer)
        log.info("model %s (%d parameters); method %s; threat %s, bounds %s", self.spec["name"], count_parameters(model),
                 self.method.name, cfg.threat.norm, self.threat.bounds)
        if cfg.init_from and not self.resume and self.ext is None:
            ck0 = load_checkpoint(cfg.init_from)
            if ck0["model_spec"] != self.spec:
                raise CheckpointError(f"init_from checkpoint '{cfg.init_from}' is for model {ck0['model_spec']['name']} "
                                      f"with a different spec; use a checkpoint of the same model config.")
            load_state_checked(model, ck0["model_state"], cfg.init_from)
            log.info("initialised weights from %s", cfg.init_from)

    def setup_validation(self) -> None:
        """Robust validation (None when off or without validation cases) and the selection metric."""
        self.robust_val = RobustValidator.build(self.cfg, self.method, self.task, self.threat, self.info.spatial_dims,
                                                self.info.input_size) if self.val_cases else None
        self.select = self.cfg.select_metric or (self.robust_val.metric if self.robust_val else clean_metric(self.cfg.task))

    def load_resume_state(self) -> None:
        """Weights, optimiser, history, per-sample and method state and RNG states of ``last.pt``."""
        path = self.run_dir / "last.pt"
        ck = load_checkpoint(path)
        if ck["model_spec"] != self.spec:
            raise CheckpointError(f"'{path}' was trained with a different model spec; resume with the config of that run.")
        load_state_checked(self.model, ck["model_state"], str(path))
        ts = ck["train_state"]
        self.optimizer.load_state_dict(ts["optimizer"])
        self.start_epoch, self.history, self.best = int(ts["epoch"]), list(ts["history"]), float(ts["best"])
        self.state.load_state_dict(ck["sample_state"])
        self.method.load_state_dict(ck.get("method", {}).get("state", {}))
        set_rng_state(ts["rng"])
        log.info("resumed from %s at epoch %d", path, self.start_epoch)
        if self.start_epoch >= self.cfg.epochs:
            log.info("nothing to do: the run already has %d epochs (epochs: %d)", self.start_epoch, self.cfg.epochs)

    def setup_loaders(self) -> None:
        """The sharded training loader and, for classification, the validation loader."""
        cfg, d = self.cfg, self.dist
        self.sampler = ShardedShuffleSampler(len(self.train_ds), cfg.seed, d.rank, d.world_size,
                                             num_samples=cfg.iterations_per_epoch * cfg.batch_size if cfg.iterations_per_epoch else None)
        self.loader = DataLoader(self.train_ds, batch_size=cfg.batch_size, sampler=self.sampler, num_workers=cfg.num_workers,
                                 collate_fn=collate, drop_last=False, persistent_workers=False)
        self.val_loader = None
        if cfg.task == "classification" and self.val_cases:
            val_ds = self.data.dataset("val", train=False)
            self.val_loader = DataLoader(val_ds, batch_size=cfg.val_batch_size, shuffle=False, collate_fn=collate)

    def setup_run_files(self) -> None:
        """``config.yaml`` and ``status.json``; the selection, the compute meter, the pass counter and the step context."""
        cfg = self.cfg
        self.payload_static = {
            "model_spec": self.spec, "data_info": self.info.to_dict(), "task": self.task.describe(),
            "config": cfg.model_dump(mode="json"), "method_summary": to_jsonable(method_summary(self.method)),
            "versions": {"torch": str(torch.__version__), "medrobust": str(__import__("medrobust").__version__)},
        }
        if self.dist.main:
            write_text_atomic(self.run_dir / "config.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
            write_json_atomic(self.run_dir / "status.json", {"state": "running", "epoch": self.start_epoch, "epochs": cfg.epochs})
        self.selection = Selection(self.select, clean_metric(cfg.task), self.history)
        self.meter = ComputeMeter(cfg.budget, self.history)
        if self.robust_val is not None:
            rv = self.robust_val
            log.info("robust validation: %s at %g (%s, %s); checkpoints selected by %s", rv.attack.name, rv.eps,
                     rv.units, self.threat.norm, self.select)
        self.counter = PassCounter(self.model)
        self.ctx = StepContext(model=self.model, raw_model=self.model, task=self.task, threat=self.threat, state=self.state,
                               epoch=self.start_epoch, epochs=cfg.epochs, optimizer=self.optimizer, run_dir=self.run_dir,
                               is_main=self.dist.main)

    # ------------------------------------------------------------------ one epoch
    def run_epoch(self, epoch: int) -> bool:
        """Train, maybe validate, checkpoint one epoch; returns True when the compute budget is spent."""
        row = self.train_epoch(epoch)
        stopping = self.meter.spent
        row.update(self.method.end_epoch(self.ctx))
        self.state.sync(self.touched)  # after end_epoch: epoch-end rules (IMA) update only this rank's samples
        if (epoch + 1) % self.cfg.val_every == 0 or epoch + 1 == self.cfg.epochs or stopping:
            self.validate(epoch, row)
        self.history.append(to_jsonable(row))
        self.checkpoint(epoch, row)
        self.epochs_run += 1
        if stopping:
            log.info("compute budget spent after epoch %d: %s", epoch + 1, self.meter.describe())
        return stopping

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        """The epoch's optimisation steps; returns its log row (losses, passes, times, budget totals)."""
        cfg, model = self.cfg, self.model
        self.ctx.epoch = epoch
        set_epoch_lr(self.scheduler, epoch)
        self.sampler.set_epoch(epoch)
        self.train_ds.set_epoch(epoch)
        sync_buffers(model, self.dist)
        model.train()
        self.method.start_epoch(self.ctx)
        self.touched = torch.zeros(len(self.state), dtype=torch.bool)
        sums: dict[str, float] = {}
        n_steps, t0, c0 = 0, time.time(), time.process_time()
        self.counter.reset()
        bar = progress(self.loader, total=len(self.loader), desc=f"epoch {epoch + 1}/{cfg.epochs} [{self.method.name}]",
                       disable=None if self.dist.main else True, line=False)  # the epoch's log line is the one line
        for batch in bar:
            self.train_step(epoch, n_steps, batch, sums)
            n_steps += 1
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{sums['loss'] / n_steps:.4f}")
            if self.meter.spent_during_epoch(self.counter, time.time() - t0):
                break
        self.train_time, train_cpu = time.time() - t0, time.process_time() - c0
        sync_buffers(model, self.dist)
        return self.epoch_row(epoch, sums, n_steps, train_cpu)

    def train_step(self, epoch: int, step: int, batch: dict[str, Any], sums: dict[str, float]) -> None:
        """One optimisation step of the method; adds its losses to ``sums``."""
        cfg, model = self.cfg, self.model
        batch = {k: (v.to(self.device) if isinstance(v, torch.Tensor) and k in ("image", "label") else v) for k, v in batch.items()}
        self.ctx.step = step
        with autocast_forward(model, cfg.amp):
            out = self.method.compute(self.ctx, batch)
        if not torch.isfinite(out.loss):
            raise FloatingPointError(f"the training loss became {float(out.loss)} at epoch {epoch + 1}; lower optimizer.lr or enable grad_clip.")
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        allreduce_grads(model, self.dist)
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.method.after_step(self.ctx)
        self.touched[self.state.rows(batch["id"])] = True
        sums["loss"] = sums.get("loss", 0.0) + float(out.loss.detach())
        for k, v in out.logs.items():
            sums[k] = sums.get(k, 0.0) + float(v)

    def epoch_row(self, epoch: int, sums: dict[str, float], n_steps: int, train_cpu: float) -> dict[str, Any]:
        """The training columns of an epoch's log row; closes the epoch on the compute meter."""
        row: dict[str, Any] = {"epoch": epoch + 1, "lr": self.optimizer.param_groups[0]["lr"]}
        row.update({f"train_{k}" if not k.startswith("train_") else k: v / max(1, n_steps) for k, v in sums.items()})
        f_nom, b_nom = self.method.passes()
        c = self.counter
        row.update({"time_train_s": self.train_time, "cpu_train_s": train_cpu, "steps": n_steps,
                    "forward_per_step": c.forward / max(1, n_steps), "backward_per_step": c.backward / max(1, n_steps),
                    "nominal_forward_per_step": f_nom, "nominal_backward_per_step": b_nom})
        row.update(self.meter.close_epoch(c.forward, c.backward, self.train_time))
        return row

    # ------------------------------------------------------------------ validation
    def validate(self, epoch: int, row: dict[str, Any]) -> None:
        """Clean validation, then robust validation (its passes go to the compute meter); adds to ``row``."""
        cfg, model, info = self.cfg, self.model, self.info
        t1 = time.time()
        self.counter.remove()  # validation passes are not training passes
        if cfg.task == "segmentation":
            predictor = build_predictor(model, info.input_size, cfg.inference, cfg.task, self.spec)
            row.update(validate_segmentation(model, self.val_cases, self.task, info.spatial_dims, cfg.data.slice_axis,
                                             info.input_size, cfg.val_batch_size, self.device, predictor=predictor))
        elif self.val_loader is not None:
            with autocast_forward(model, cfg.inference.amp):
                row.update(validate_classification(model, self.val_loader, self.task, self.device))
        if self.robust_val is not None:
            with autocast_forward(model, cfg.inference.amp):  # validation follows inference.amp
                row.update(self.robust_val.validate(model, self.val_cases, self.val_loader, self.device, epoch + 1,
                                                    self.run_dir if self.dist.main else None))
            row.update(self.meter.add_validation(row))
        self.counter = PassCounter(model)
        row["time_val_s"] = time.time() - t1

    # ------------------------------------------------------------------ checkpoint and selection
    def checkpoint(self, epoch: int, row: dict[str, Any]) -> None:
        """Selection by the select metric (and the clean one), then rank 0 writes checkpoints, metrics and status."""
        current = row.get(self.select)
        if current is None and any(k.startswith("val_") for k in row):
            raise ConfigError(f"select_metric '{self.select}' is not a logged metric; choose one of {', '.join(k for k in row if k.startswith('val_'))}.")
        improved = current is not None and not math.isnan(float(current)) and float(current) > self.best
        clean_improved = self.selection.offer(row)[1]
        if improved:
            self.best = float(current)
        elif not self.val_cases and epoch + 1 == self.cfg.epochs:
            improved = True  # no validation split: the last epoch is the best we know
        if not self.dist.main:
            return
        ck = self.checkpoint_payload(epoch)
        save_checkpoint(ck, self.run_dir / "last.pt")
        if improved:
            save_checkpoint(ck, self.run_dir / "best.pt")
        if clean_improved and self.select != self.selection.clean:
            save_checkpoint(ck, self.run_dir / "best_clean.pt")
        write_metrics(self.run_dir, self.history)
        self.log_epoch(epoch, row)
        write_json_atomic(self.run_dir / "status.json", {"state": "running", "epoch": epoch + 1, "epochs": self.cfg.epochs})

    def checkpoint_payload(self, epoch: int) -> dict[str, Any]:
        """Everything ``last.pt`` holds after ``epoch`` (0-based)."""
        ck = dict(self.payload_static)
        ck.update({"model_state": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                   "train_state": {"epoch": epoch + 1, "optimizer": self.optimizer.state_dict(), "rng": get_rng_state(),
                                   "history": self.history, "best": self.best, "select_metric": self.select},
                   "sample_state": self.state.state_dict(),
                   "method": {"name": self.method.name, "state": self.method.state_dict()}})
        return ck

    def log_epoch(self, epoch: int, row: dict[str, Any]) -> None:
        """The epoch's one log line: loss, clean validation metrics, method state."""
        method_logs = {k: v for k, v in row.items() if k.startswith("state_")}
        log.info("epoch %d/%d  loss %.4f  %s%s  (%.1fs)", epoch + 1, self.cfg.epochs, row.get("train_loss", float("nan")),
                 "  ".join(f"{k} {float(v):.4f}" for k, v in row.items() if k.startswith("val_") and k.count("_") == 1),
                 "  " + "  ".join(f"{k} {float(v):.3g}" for k, v in method_logs.items()) if method_logs else "",
                 self.train_time)

    # ------------------------------------------------------------------ finish
    def finish(self) -> TrainResult:
        """Rank 0 completes the run folder (``best.pt``, ``best_clean.pt``, plots, summary, export, status)."""
        if self.dist.main:
            self.write_summary()
        barrier(self.dist)
        release(self.run_dir, self.dist.main)
        return TrainResult(self.run_dir, self.run_dir / "best.pt", self.run_dir / "last.pt", self.history, self.best,
                           self.exported if self.ext is not None and self.dist.main else None)

    def write_summary(self) -> None:
        """``summary.json``, the training curves and the final ``status.json`` (rank 0)."""
        cfg, run_dir, history, best, select = self.cfg, self.run_dir, self.history, self.best, self.select
        if not (run_dir / "best.pt").exists() and (run_dir / "last.pt").exists():
            shutil.copyfile(run_dir / "last.pt", run_dir / "best.pt")
        plot_history(run_dir, history, cfg.task)
        done = int(history[-1]["epoch"]) if history else cfg.epochs
        if self.meter.active and not self.meter.spent:
            log.warning("the compute budget was not spent (%s) when the epoch cap (epochs: %d) was reached; raise epochs "
                        "so that runs compared at matched compute really get it.", self.meter.describe(), cfg.epochs)
        if select != self.selection.clean and not (run_dir / "best_clean.pt").exists():
            shutil.copyfile(run_dir / "best.pt", run_dir / "best_clean.pt")
        write_json_atomic(run_dir / "summary.json", {
            "best_metric": best if math.isfinite(best) else None, "select_metric": select, "epochs": cfg.epochs,
            "epochs_run": done, **self.selection.summary(),
            "robust_validation": self.robust_val.describe() if self.robust_val else None, "compute": self.meter.describe(),
            "method": method_summary(self.method), "model": self.spec, "last": history[-1] if history else {}, "flags": self.run_flags})
        if self.ext is not None:  # write the fine-tuned model back in its source's format
            from medrobust.models.sources import export_trained

            self.exported = export_trained(self.spec, load_checkpoint(run_dir / "best.pt")["model_state"], run_dir, self.method.name)
        write_json_atomic(run_dir / "status.json", {"state": "finished", "epoch": done, "epochs": cfg.epochs})
        if math.isfinite(best):
            log.info("finished: best %s %.4f; checkpoints in %s", select, best, run_dir.resolve())
        else:
            log.info("finished: no %s (no validation cases), best.pt is the last epoch; checkpoints in %s", select, run_dir.resolve())
