"""Per-voxel margin maps for segmentation.

- the **logit margin** ``z_y - max_{j != y} z_j`` of every voxel on the clean input;
- the **flip budget**: the norm of the perturbation at which each voxel's prediction first
  differs from its clean prediction along a PGD path of ``steps`` steps of ``eps_max / steps``
  each (so the perturbation grows steadily from 0 to ``eps_max``); NaN where it never flips.
"""

from __future__ import annotations

import torch
from torch import nn

from medrobust.attacks.base import frozen_params, model_mode
from medrobust.tasks import Task
from medrobust.threat import ThreatModel, lp_norm


def voxel_flip_budgets(model: nn.Module, task: Task, threat: ThreatModel, x: torch.Tensor, y: torch.Tensor,
                       eps_max: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logit_margin, flip_budget)``, both ``(B, *spatial)``; budgets in input units."""
    lim = threat.limits(x)
    with model_mode(model, "eval"), frozen_params(model):
        with torch.no_grad():
            logits0 = model(x)
        margin = task.unit_margin(logits0, y).detach()
        pred0 = logits0.argmax(1)
        flip = torch.full(pred0.shape, float("nan"), dtype=torch.float64, device=x.device)
        alpha = eps_max / steps
        xa = x.clone()
        for _ in range(steps):
            xa = xa.detach().requires_grad_(True)
            loss = task.loss(model(xa), y).sum()
            (g,) = torch.autograd.grad(loss, xa)
            with torch.no_grad():
                xa = threat.project(xa + threat.step(g, alpha), x, eps_max, lim)
                pred = model(xa).argmax(1)
                n = lp_norm(xa - x, threat.norm).double().reshape(-1, *([1] * (pred.ndim - 1)))
                new = (pred != pred0) & torch.isnan(flip)
                flip = torch.where(new, n.expand_as(flip), flip)
    return margin, flip
