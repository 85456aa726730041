"""The training engine: one loop for every method, task and dimension.

:func:`train` builds the data, model, task, threat model and method from a :class:`TrainConfig`,
trains with a progress bar, validates every ``val_every`` epochs, logs metrics to ``metrics.jsonl``
and ``metrics.csv``, and writes ``last.pt`` every epoch and ``best.pt`` on improvement (atomically).
The work is done by :class:`~medrobust.training.trainer.Trainer` in named steps (setup, epoch,
validate, checkpoint, finish).

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

from typing import Optional

from medrobust.config import TrainConfig
from medrobust.training.ddp import Dist, allreduce_grads, barrier, init_distributed, sync_buffers
from medrobust.training.run_folder import RESUME_FREE_KEYS, TrainResult, prepare_run_dir, write_metrics
from medrobust.training.schedule import build_optimizer, build_scheduler, lr_factor
from medrobust.training.trainer import Trainer

__all__ = ["Dist", "RESUME_FREE_KEYS", "TrainResult", "Trainer", "allreduce_grads", "barrier", "build_optimizer",
           "build_scheduler", "init_distributed", "lr_factor", "prepare_run_dir", "sync_buffers", "train", "write_metrics"]


def train(cfg: TrainConfig, resume: bool = False, stop_after: Optional[int] = None) -> TrainResult:
    """Train a model from a config; returns the run folder and checkpoint paths.

    Args:
        cfg: the validated training config.
        resume: continue the run in ``cfg.output_dir`` from its ``last.pt`` (same config; only
            ``epochs`` may change).
        stop_after: stop (as if killed) after this many epochs of this invocation; for tests.

    Returns:
        The run folder, ``best.pt`` / ``last.pt`` paths, the history and the best selection metric.

    Raises:
        ConfigError: a config that does not fit the data or model.
        CheckpointError: a run folder or checkpoint that cannot be resumed / initialised from.
        FloatingPointError: a non-finite training loss.
    """
    return Trainer(cfg, resume=resume, stop_after=stop_after).run()
