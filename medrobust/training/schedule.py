"""Optimiser and learning-rate schedule of a training run.

The schedule is :class:`torch.optim.lr_scheduler.LambdaLR` over the closed-form multiplier
:func:`lr_factor` (warm-up, then cosine / poly / step / multistep), so the rate of every epoch is
exactly ``optimizer.lr * lr_factor(epoch)``. The chainable ``LinearLR`` + ``SequentialLR`` +
``CosineAnnealingLR`` / ``StepLR`` / ``PolynomialLR`` are not used: they update the rate
multiplicatively from the previous epoch's, which drifts from the formula by up to ~1e-15 relative
(measured over 50 epochs) and cannot re-plan the cosine when ``--resume`` raises ``epochs``.
"""

from __future__ import annotations

import math
import re
import warnings

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from medrobust.config import ScheduleConfig, TrainConfig


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """SGD, Adam or AdamW over the trainable parameters, from ``cfg.optimizer``.

    Args:
        cfg: the training config.
        model: the network.

    Returns:
        The optimiser (rate ``cfg.optimizer.lr``).
    """
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


def build_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer) -> LambdaLR:
    """The run's schedule: ``lr(epoch) = optimizer.lr * lr_factor(schedule, epoch, epochs)``.

    Build it right after the optimiser (whose rate is then ``optimizer.lr``) and call
    :func:`set_epoch_lr` at the start of every epoch.

    Args:
        cfg: the training config (``schedule`` and ``epochs``).
        optimizer: the freshly built optimiser.

    Returns:
        A ``LambdaLR`` at epoch 0.
    """
    return LambdaLR(optimizer, lambda epoch: lr_factor(cfg.schedule, epoch, cfg.epochs))


def set_epoch_lr(scheduler: LambdaLR, epoch: int) -> None:
    """Put the rate of ``epoch`` (0-based) into the optimiser (also after a resume reloaded its state).

    Args:
        scheduler: from :func:`build_scheduler`.
        epoch: the epoch about to run.
    """
    with warnings.catch_warnings():  # the rate is set before the epoch's steps, as intended
        warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()` before"))
        scheduler.last_epoch = epoch - 1
        scheduler.step()
