"""Pieces shared by the adversarial-training methods: budgets in units, training attacks,
per-element KL, and adversarial weight perturbation (AWP) without touching the weights.

AWP here uses ``torch.func.functional_call``: the adversarial forward runs at ``theta + v`` while
the gradient flows to ``theta`` (the derivative of ``theta + v`` with respect to ``theta`` is the
identity), which is exactly "take the gradient at the perturbed weights and apply it to the
unperturbed ones" of Wu et al. (2020), with no in-place perturb / restore. The proxy step of the
official code (one plain SGD step on a copy) moves each layer along its loss gradient, and the
per-layer rescaling to ``gamma * ||w_l||`` cancels the proxy learning rate, so the direction is
computed from the gradient directly.
"""

from __future__ import annotations

from typing import Any, Callable, Literal, Optional

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torch.func import functional_call

from medrobust.attacks.loop import Observer, projected_gradient
from medrobust.attacks.pgd import PGD, PGDParams
from medrobust.tasks import Task
from medrobust.threat import ThreatModel, budget_to_input
from medrobust.training.base import MethodParams


class AdvParams(MethodParams):
    """Settings shared by the adversarial methods."""

    eps: float = Field(1.0, ge=0, description="training budget (in `units`)")
    units: Literal["input", "rms", "native"] = "input"
    steps: int = Field(10, ge=1)
    step_size: float = Field(0.25, gt=0, description="PGD step as a fraction of eps")
    random_start: bool = True
    attack_loss: str = "auto"
    attack_mode: Literal["eval", "train"] = "train"


def eps_input(params: Any, eps: float, batch: dict, x: torch.Tensor, norm: str) -> torch.Tensor:
    """A method budget in its units as per-sample input-space budgets ``(B,)``."""
    return budget_to_input(eps, params.units, norm, batch, x)


def training_attack(task: Task, threat: ThreatModel, steps: int, step_size: float, random_start: bool, loss: str,
                    mode: str, loss_fn: Optional[Callable] = None, random_radius: str = "ball") -> PGD:
    """A PGD that returns its last iterate and draws from the global RNG (resumable)."""
    p = PGDParams(steps=steps, step_size=step_size, random_start=random_start, loss=loss, return_best=False,
                  seed=None, model_mode=mode, random_radius=random_radius)
    return PGD(p, task, threat, loss_fn=loss_fn)


def kl_elements(logits_p: torch.Tensor, logits_q: torch.Tensor, task: Task, target: torch.Tensor) -> torch.Tensor:
    """Per-element ``KL(softmax(p) || softmax(q))`` as ``(B, N)``."""
    zp, _ = task.elements(logits_p, target)
    zq, _ = task.elements(logits_q, target)
    lp = F.log_softmax(zp, 1)
    lq = F.log_softmax(zq, 1)
    return (lp.exp() * (lp - lq)).sum(1)


def perturbable(model: nn.Module) -> dict[str, torch.Tensor]:
    """Weights AWP perturbs: every parameter with ndim > 1 (conv / linear / transposed conv kernels)."""
    return {n: p for n, p in model.named_parameters() if p.ndim > 1 and p.requires_grad}


def awp_direction(model: nn.Module, loss: torch.Tensor, gamma: float) -> dict[str, torch.Tensor]:
    """``v_l = gamma * ||w_l|| * g_l / ||g_l||`` from the gradient ``g`` of ``loss`` (ascent)."""
    params = perturbable(model)
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    out = {}
    for (n, p), g in zip(params.items(), grads):
        if g is None:
            continue
        out[n] = (gamma * p.detach().norm() * g / (g.norm() + 1e-20)).detach()
    return out


def forward_perturbed(model: nn.Module, v: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``f_{theta + v}(x)`` with gradients flowing to ``theta`` (buffers such as BN statistics shared)."""
    if not v:
        return model(x)
    params = dict(model.named_parameters())
    merged = {n: (p + v[n]) if n in v else p for n, p in params.items()}
    return functional_call(model, merged, (x,), strict=False)


def ascend(model: nn.Module, threat: ThreatModel, x: torch.Tensor, eps: torch.Tensor, steps: int, step_size: float,
           objective: Callable[[torch.Tensor], torch.Tensor], x_start: Optional[torch.Tensor] = None,
           alpha: Optional[torch.Tensor] = None, observe: Optional[Observer] = None, jitter: float = 0.0,
           mode: Optional[str] = None) -> torch.Tensor:
    """The training methods' use of :func:`~medrobust.attacks.loop.projected_gradient`: ascent on
    ``objective(logits) -> (B,)`` from ``x_start`` (projected; default ``x``), last iterate returned.

    Step ``alpha`` per sample (default ``step_size * eps``). The model runs in ``mode``
    (``None``: as the caller set it); parameter gradients are not accumulated. ``observe(t, x_t, logits_t, objective_t)`` sees
    iterates ``t = 0 .. steps - 1`` before they are stepped and may return the mask of the samples
    that step (FAT's early stop); ``jitter``: Gaussian noise added to every step (FAT's ``omega``).
    """
    return projected_gradient(model, threat, x, eps, eps * step_size if alpha is None else alpha, steps,
                              lambda logits, t: objective(logits), x if x_start is None else x_start, observe=observe,
                              jitter=jitter, mode=mode)


def orthogonality_penalty(model: nn.Module, gram: str = "out") -> torch.Tensor:
    """``sum_l ||W_l W_l^T - I_out||_F^2`` over conv / linear weights reshaped to (out, in * k...).

    Args:
        model: the network.
        gram: ``out`` (Wu & Yu's ``orthogonal_constraint``: always ``W W^T - I_out``, which cannot
            reach 0 when out > in * k) or ``smaller`` (the Gram matrix of the smaller side,
            ``W^T W - I_in`` when out > in * k: orthonormal columns, reachable).

    Returns:
        The scalar penalty (0 when the model has no such weight).

    (Wu & Yu's code re-adds the previous layer's term for every bias; not here.)
    """
    total = None
    for p in perturbable(model).values():
        w = p.reshape(p.shape[0], -1)
        if gram == "smaller" and w.shape[0] > w.shape[1]:
            w = w.t()
        gram = w @ w.t()
        term = ((gram - torch.eye(gram.shape[0], device=w.device, dtype=w.dtype)) ** 2).sum()
        total = term if total is None else total + term
    return total if total is not None else torch.zeros(())


def average_and_clip_grads(params: list[nn.Parameter], train_cfg: Any) -> None:
    """Average ``params``' gradients over ``torchrun`` ranks and clip them like the engine does.

    For parameters a method steps itself (a guide model, an input perturbation's model update),
    which the engine's all-reduce and clipping do not see.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for q in params:
            dist.all_reduce(q.grad)
            q.grad /= dist.get_world_size()
    clip = getattr(train_cfg, "grad_clip", None)
    if clip:
        torch.nn.utils.clip_grad_norm_(params, clip)
