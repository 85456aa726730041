"""PGD adversarial training (Madry et al. 2018): ``min_theta E max_{||d|| <= eps} L(f(x + d), y)``.

Inner maximisation: PGD with ``steps`` steps of ``step_size * eps`` (Linf sign / L2 normalised),
random start, on the task loss (segmentation: soft Dice + CE per sample, as the IMA authors'
nnU-Net PGD baseline; classification: CE). Outer loss: the task loss on the adversarial input,
optionally mixed with the clean loss (``clean_weight``; 0 is Madry's adversarial-only loss).
Attack mode defaults to train (as the IAAT and ISEAT repositories' AT baselines run it).
Cost per step: (steps + 1) forward and (steps + 1) backward passes.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from medrobust.training.adversarial import AdversarialMethod, Forward
from medrobust.training.base import StepContext, StepOutput, register_method
from medrobust.training.common import AdvParams, eps_input, training_attack


class PGDATParams(AdvParams):
    clean_weight: float = Field(0.0, ge=0, le=1)


@register_method
class PGDAT(AdversarialMethod):
    name = "pgd_at"
    Params = PGDATParams
    description = "PGD adversarial training (Madry); optional clean-loss mix"

    def prepare(self) -> None:
        p = self.params
        self.attack = training_attack(self.task, self.threat, p.steps, p.step_size, p.random_start, p.attack_loss, p.attack_mode)

    def objective_passes(self) -> tuple[float, float]:
        n = 2.0 if self.params.clean_weight > 0 else 1.0
        return (n, n)

    def passes(self) -> tuple[float, float]:
        extra = 1.0 if self.params.clean_weight > 0 else 0.0
        return (self.params.steps + 1 + extra, self.params.steps + 1 + extra)

    def generate(self, ctx: StepContext, batch: dict[str, Any]) -> dict[str, Any]:
        x, y = batch["image"], batch["label"]
        eps = eps_input(self.params, self.params.eps, batch, x, self.threat.norm)
        return {"x_adv": self.attack(ctx.raw_model, x, y, eps).x_adv}

    def objective(self, ctx: StepContext, batch: dict[str, Any], gen: dict[str, Any], forward: Forward) -> StepOutput:
        y = batch["label"]
        logits_adv = forward(gen["x_adv"])
        loss_adv = self.task.loss(logits_adv, y).mean()
        logs = {"loss_adv": float(loss_adv.detach())}
        loss = loss_adv
        if self.params.clean_weight > 0:
            loss_clean = self.task.loss(forward(batch["image"]), y).mean()
            loss = (1 - self.params.clean_weight) * loss_adv + self.params.clean_weight * loss_clean
            logs["loss_clean"] = float(loss_clean.detach())
        return StepOutput(loss, logs, tensors={"logits_adv": logits_adv})
