"""Per-image (per-case) margins: the smallest budget at which an attack breaks the sample.

For every sample, bisection on ``eps`` in ``[0, eps_max]`` on the predicate "the attack at this
budget makes the sample fail" (classification: misclassified; segmentation: Dice below the
success threshold). All samples of a batch are bisected together with per-sample budgets.
A sample that already fails clean has margin 0; one that survives ``eps_max`` is censored
(reported as ``eps_max`` with ``censored = True``). Attack success is not always monotone in
the budget, so the result is an estimate of the boundary distance found by that attack.
"""

from __future__ import annotations

import torch
from torch import nn

from medrobust.attacks.base import Attack
from medrobust.tasks import Task


def image_margins(model: nn.Module, task: Task, attack: Attack, x: torch.Tensor, y: torch.Tensor, eps_max: torch.Tensor,
                  steps: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns ``(margin, censored, clean_success)``; ``margin`` in input units, shape ``(B,)``."""
    with torch.no_grad():
        clean_ok = task.success(model(x), y)
    lo = torch.zeros_like(eps_max)
    hi = eps_max.clone()

    def fails(eps: torch.Tensor) -> torch.Tensor:
        adv = attack(model, x, y, eps).x_adv
        with torch.no_grad():
            return ~task.success(model(adv), y)

    at_max = fails(eps_max) & clean_ok
    censored = clean_ok & ~at_max
    active = at_max
    for _ in range(steps):
        mid = (lo + hi) / 2
        f = fails(torch.where(active, mid, torch.zeros_like(mid)))
        hi = torch.where(active & f, mid, hi)
        lo = torch.where(active & ~f, mid, lo)
    margin = torch.where(clean_ok, hi, torch.zeros_like(hi))
    margin = torch.where(censored, eps_max, margin)
    return margin, censored, clean_ok
