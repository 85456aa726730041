"""MART (Wang et al. 2020): boosted CE on adversarial inputs + misclassification-weighted KL.

``BCE(p(x'), y) + beta * KL(p(x) || p(x')) * (1 - p_y(x))`` with
``BCE = CE(x') - log(1 - max_{k != y} p_k(x'))``; per voxel for segmentation (averaged per
image, optionally class-balanced). Inner maximisation: CE-PGD from ``x + 0.001 N(0, 1)`` in
eval mode (official). beta = 6. Cost: (steps + 2) forward, (steps + 2) backward.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from medrobust.training.adversarial import AdversarialMethod, Forward
from medrobust.training.base import StepContext, StepOutput, register_method
from medrobust.training.common import AdvParams, kl_elements


class MARTParams(AdvParams):
    beta: float = Field(6.0, ge=0)
    class_balanced: bool = False
    attack_mode: Literal["eval", "train"] = "eval"


@register_method
class MART(AdversarialMethod):
    name = "mart"
    Params = MARTParams
    description = "MART: boosted CE + misclassification-weighted KL"

    def objective_passes(self) -> tuple[float, float]:
        return (2.0, 2.0)

    def passes(self) -> tuple[float, float]:
        return (self.params.steps + 2, self.params.steps + 2)

    def generate(self, ctx: StepContext, batch: dict[str, Any]) -> dict[str, Any]:
        y = batch["label"]
        return self.ascend_from_noise(ctx, batch, lambda lg, _: self.task.reduce(self.task.elementwise_ce(lg, y), y), need_clean=False)

    def objective(self, ctx: StepContext, batch: dict[str, Any], gen: dict[str, Any], forward: Forward) -> StepOutput:
        x, y = batch["image"], batch["label"]
        logits = forward(x)
        logits_adv = forward(gen["x_adv"])
        z, yy = self.task.elements(logits, y)
        za, _ = self.task.elements(logits_adv, y)
        pa = F.softmax(za, 1)
        p_other = pa.scatter(1, yy.unsqueeze(1), 0.0).amax(1)
        bce = F.cross_entropy(za, yy, reduction="none") - torch.log(1.0001 - p_other + 1e-12)
        p_true = F.softmax(z, 1).gather(1, yy.unsqueeze(1)).squeeze(1)
        kl = kl_elements(logits, logits_adv, self.task, y) * (1.0 - p_true)
        cb = self.params.class_balanced
        loss_bce = self.task.reduce(bce, y, cb).mean()
        loss_kl = self.task.reduce(kl, y, cb).mean()
        return StepOutput(loss_bce + self.params.beta * loss_kl, {"loss_bce": float(loss_bce.detach()), "kl": float(loss_kl.detach())}, tensors={"logits_clean": logits, "logits_adv": logits_adv})
