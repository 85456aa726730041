"""Per-voxel margin maps for segmentation.

- the **logit margin** ``z_y - max_{j != y} z_j`` of every voxel on the clean input;
- the **flip budget**: the norm of the perturbation at which each voxel's prediction first
  differs from its clean prediction along a PGD path of ``steps`` steps of ``eps_max / steps``
  each (so the perturbation grows steadily from 0 to ``eps_max``); NaN where it never flips.
"""

from __future__ import annotations

import torch
from torch import nn

from medrobust.attacks.base import model_mode
from medrobust.attacks.loop import projected_gradient
from medrobust.tasks import Task
from medrobust.threat import ThreatModel, lp_norm


def voxel_flip_budgets(model: nn.Module, task: Task, threat: ThreatModel, x: torch.Tensor, y: torch.Tensor,
                       eps_max: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logit_margin, flip_budget)``, both ``(B, *spatial)``; budgets in input units."""
    with model_mode(model, "eval"), torch.no_grad():
        logits0 = model(x)
    margin = task.unit_margin(logits0, y).detach()
    pred0 = logits0.argmax(1)
    flip = torch.full(pred0.shape, float("nan"), dtype=torch.float64, device=x.device)
    view = (-1, *([1] * (pred0.ndim - 1)))

    def track(t: int, xa: torch.Tensor, logits: torch.Tensor, loss: torch.Tensor) -> None:
        nonlocal flip
        if t == 0:  # the clean input
            return
        n = lp_norm(xa - x, threat.norm).double().reshape(view)
        new = (logits.argmax(1) != pred0) & torch.isnan(flip)
        flip = torch.where(new, n.expand_as(flip), flip)

    projected_gradient(model, threat, x, eps_max, eps_max / steps, steps, lambda logits, t: task.loss(logits, y), observe=track,
                       evaluate_last=True, mode="eval")
    return margin, flip
