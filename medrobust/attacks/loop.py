"""The one projected-gradient inner loop, shared by the attacks, the training methods and the margins.

Every place that steps an input along its loss gradient (PGD and FGSM, the adversarial-training
methods, IMA's margin search, the per-voxel flip budgets) runs :func:`projected_gradient`: start
(projected when given), then ``steps`` times: forward, objective, input gradient, a steepest-ascent
step of per-sample size (Linf sign, L2 normalised; :meth:`ThreatModel.step`), projection onto the
per-sample ball and clipping to the bounds (:meth:`ThreatModel.project`). Parameters are frozen
(:func:`~medrobust.attacks.base.frozen_params`) and, when ``mode`` is given, the model runs in that
mode; both are restored afterwards.

What differs between the callers goes through hooks: ``observe`` sees every iterate with its
logits and objective (worst-case keeping, IMA's first crossing, GAIRAT's kappa, FAT's early stop,
voxel flips) and may freeze samples; ``evaluate_last`` scores the last iterate too; ``jitter``
adds Gaussian noise to every step (FAT).
"""

from __future__ import annotations

import contextlib
from typing import Callable, Optional

import torch
from torch import nn

from medrobust.attacks.base import frozen_params, model_mode
from medrobust.threat import ThreatModel

Objective = Callable[[torch.Tensor, int], torch.Tensor]
Observer = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], Optional[torch.Tensor]]


def projected_gradient(model: nn.Module, threat: ThreatModel, x: torch.Tensor, eps: torch.Tensor, alpha: torch.Tensor,
                       steps: int, objective: Objective, start: Optional[torch.Tensor] = None,
                       observe: Optional[Observer] = None, evaluate_last: bool = False, jitter: float = 0.0,
                       limits: Optional[tuple[torch.Tensor, torch.Tensor]] = None, mode: Optional[str] = None) -> torch.Tensor:
    """Projected gradient ascent on ``objective``; returns the last iterate (detached).

    Args:
        model: the network; its parameters get no gradient.
        threat: norm and bounds (step, projection, clipping).
        x: clean inputs ``(B, C, *spatial)``, the centre of the balls.
        eps: ``(B,)`` ball radii (input units); a zero radius keeps the sample at ``x``.
        alpha: ``(B,)`` step sizes.
        steps: number of gradient steps K.
        objective: ``objective(logits, t) -> (B,)``, ascended (summed over the batch for the gradient).
        start: the first iterate before projection (``None``: ``x`` itself, not projected).
        observe: ``observe(t, x_t, logits_t, objective_t)`` (no gradient, all detached) for iterates
            ``t = 0 .. K - 1`` before each step (and ``t = K`` with ``evaluate_last``). It may return a
            bool ``(B,)`` mask of the samples that take the step; the others keep their iterate, and
            the loop ends once no sample is active.
        evaluate_last: also run the forward pass, the objective and ``observe`` at the last iterate.
        jitter: standard deviation of Gaussian noise added to every step (input units).
        limits: the bounds of ``x`` (default ``threat.limits(x)``).
        mode: ``eval`` / ``train`` for the block (``None``: leave the model's mode alone).

    Returns:
        The last iterate ``x_K`` (or where the samples stopped), inside the balls and the bounds.
    """
    lim = threat.limits(x) if limits is None else limits
    xa = x.clone() if start is None else threat.project(start, x, eps, lim)
    view = (-1, *([1] * (x.ndim - 1)))
    with (model_mode(model, mode) if mode is not None else contextlib.nullcontext()), frozen_params(model):
        for t in range(steps + 1):
            last = t == steps
            if last and not evaluate_last:
                break
            xa = xa.detach().requires_grad_(not last)
            with torch.set_grad_enabled(not last):
                logits = model(xa)
                loss = objective(logits, t)
            active = None
            if observe is not None:
                with torch.no_grad():
                    active = observe(t, xa.detach(), logits.detach(), loss.detach())
            if last or (active is not None and not bool(active.any())):
                break
            (g,) = torch.autograd.grad(loss.sum(), xa)
            with torch.no_grad():
                step = threat.step(g, alpha)
                if jitter > 0:
                    step = step + jitter * torch.randn_like(step)
                new = threat.project(xa + step, x, eps, lim)
                xa = new if active is None else torch.where(active.reshape(view), new, xa)
    return xa.detach()
