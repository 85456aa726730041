"""GAIRAT: Geometry-aware Instance-reweighted AT (Zhang et al., ICLR 2021), from the official code
(``zjfheart/Geometry-aware-Instance-reweighted-Adversarial-Training`` ``GAIRAT.py``, ``GAIR.py``,
``attack_generator.py::GA_PGD``).

PGD (eval mode, uniform random start, CE / task loss, ``steps`` = 10 of 0.007 at eps 0.031) counts
``kappa``: the number of iterates (the random start and the first K - 1 steps) at which the
sample is still correct, 0 .. K. Weights ``w = (1 + tanh(lam + 5 (1 - 2 kappa / K))) / 2``,
renormalised to mean 1 over the batch; loss ``mean(w * L(x'))``. Before ``begin`` (a fraction of
the epochs; official epoch 60 of 120) the loss is plain PGD-AT (unweighted); then ``lam`` = -1
(``Lambda_schedule fixed``, the official default).

Segmentation: ``granularity: image`` counts, per image, the iterates whose Dice is still at
least the training config's ``success`` threshold and weights the per-image task loss;
``granularity: voxel`` counts, per voxel, the iterates at which the voxel is still correctly
labelled and weights the per-voxel cross-entropy (weights renormalised over the batch's voxels).
Cost per step: (K + 1) forward, (K + 1) backward (kappa reuses the attack's forward passes).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import Field

from medrobust.training.base import Method, StepContext, StepOutput, register_method
from medrobust.training.common import AdvParams, ascend, eps_input


class GAIRATParams(AdvParams):
    eps: float = Field(0.031, ge=0, description="training budget (in `units`)")
    step_size: float = Field(0.007 / 0.031, gt=0, description="PGD step as a fraction of eps (official 0.007 / 0.031)")
    lam: float = Field(-1.0, description="Lambda of the tanh weight (official fixed -1; +inf gives plain AT)")
    begin: float = Field(0.5, ge=0, le=1, description="fraction of the epochs before reweighting starts (official 60 / 120)")
    granularity: Literal["image", "voxel"] = "image"
    attack_mode: Literal["eval", "train"] = "eval"


def gair_weights(kappa: torch.Tensor, steps: int, lam: float) -> torch.Tensor:
    """Official tanh weights ``(1 + tanh(lam + 5 (1 - 2 kappa / K))) / 2``, renormalised to mean 1.

    Args:
        kappa: number of correct PGD iterates per sample (or per voxel), any shape.
        steps: K, the number of PGD steps.
        lam: Lambda; ``inf`` returns ones (plain AT).

    Returns:
        Weights of ``kappa``'s shape with mean 1 (fewer correct iterates -> larger weight).
    """
    if math.isinf(lam) and lam > 0:
        return torch.ones_like(kappa, dtype=torch.float32)
    w = (1 + torch.tanh(lam + 5 * (1 - 2 * kappa.float() / steps))) / 2
    return w * w.numel() / w.sum().clamp_min(1e-12)


@register_method
class GAIRAT(Method):
    name = "gairat"
    Params = GAIRATParams
    description = "geometry-aware reweighting: weight by how few PGD iterates stay correct (kappa)"

    auto_attack_loss = "pgd"

    def passes(self) -> tuple[float, float]:
        return (self.params.steps + 1, self.params.steps + 1)

    def reweighting(self, ctx: StepContext) -> bool:
        return ctx.epoch >= int(round(self.params.begin * ctx.epochs))

    def compute(self, ctx: StepContext, batch: dict[str, Any]) -> StepOutput:
        p = self.params
        x, y = batch["image"], batch["label"]
        eps = eps_input(p, p.eps, batch, x, self.threat.norm)
        voxel = p.granularity == "voxel" and self.task.kind == "segmentation"
        kappa = torch.zeros(self.task.label_elements(y).shape if voxel else (len(x),), dtype=torch.long, device=x.device)

        def count(t: int, xa: torch.Tensor, logits: torch.Tensor, loss: torch.Tensor) -> None:
            nonlocal kappa
            if voxel:
                z, yy = self.task.elements(logits, y)
                kappa = kappa + (z.argmax(1) == yy).long()
            else:
                kappa = kappa + self.task.success(logits, y).long()

        start = x + self.threat.random_delta(x, eps) if p.random_start else x
        x_adv = ascend(ctx.raw_model, self.threat, x, eps, p.steps, p.step_size, lambda lg: self.attack_loss(self.task, lg, y, 0, p.steps),
                       start, observe=count, mode=p.attack_mode)
        logits_adv = ctx.model(x_adv)
        on = self.reweighting(ctx)
        w = gair_weights(kappa, p.steps, p.lam) if on else torch.ones_like(kappa, dtype=torch.float32)
        if voxel:
            loss = (w * self.task.elementwise_ce(logits_adv, y)).mean()
        else:
            loss = (w * self.task.loss(logits_adv, y)).mean()
        return StepOutput(loss, {"loss_adv": float(loss.detach()), "kappa_mean": float(kappa.float().mean()),
                                 "reweighting": float(on)},
                          {"logits_adv": logits_adv, "kappa": kappa.detach(), "weights": w.detach()})
