"""TRADES (Zhang et al. 2019): ``L(f(x), y) + beta * KL(p(x) || p(x'))``, ``x'`` maximising the KL.

Inner maximisation: PGD on the KL between the clean prediction (fixed) and the perturbed one,
from ``x + 0.001 N(0, 1)``, in eval mode (as the official code). Segmentation: the KL is per
voxel, averaged over each image's voxels (optionally class-balanced) once; the IMA nnU-Net
baseline's double normalisation (element mean, then 1/B) is not copied. beta = 6.
Cost per step: 1 + steps + 2 forward, steps + 2 backward (the update goes through both graphs).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from medrobust.training.adversarial import AdversarialMethod, Forward
from medrobust.training.base import StepContext, StepOutput, register_method
from medrobust.training.common import AdvParams, kl_elements


class TRADESParams(AdvParams):
    beta: float = Field(6.0, ge=0)
    class_balanced: bool = False
    attack_mode: Literal["eval", "train"] = "eval"


@register_method
class TRADES(AdversarialMethod):
    name = "trades"
    Params = TRADESParams
    description = "TRADES: clean loss + beta * KL(clean || adversarial), KL-maximising PGD"

    def objective_passes(self) -> tuple[float, float]:
        return (2.0, 2.0)

    def passes(self) -> tuple[float, float]:
        return (self.params.steps + 3, self.params.steps + 2)

    def generate(self, ctx: StepContext, batch: dict[str, Any]) -> dict[str, Any]:
        y, cb = batch["label"], self.params.class_balanced
        return self.ascend_from_noise(ctx, batch, lambda lg, clean: self.task.reduce(kl_elements(clean, lg, self.task, y), y, cb))

    def objective(self, ctx: StepContext, batch: dict[str, Any], gen: dict[str, Any], forward: Forward) -> StepOutput:
        x, y = batch["image"], batch["label"]
        logits = forward(x)
        logits_adv = forward(gen["x_adv"])
        nat = self.task.loss(logits, y).mean()
        rob = self.task.reduce(kl_elements(logits, logits_adv, self.task, y), y, self.params.class_balanced).mean()
        return StepOutput(nat + self.params.beta * rob, {"loss_clean": float(nat.detach()), "kl": float(rob.detach())}, tensors={"logits_clean": logits, "logits_adv": logits_adv})
