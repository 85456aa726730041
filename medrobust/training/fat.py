"""FAT: Friendly Adversarial Training (Zhang et al., ICML 2020), from the official code
(``zjfheart/Friendly-Adversarial-Training`` ``FAT.py``, ``earlystop.py``).

Early-stopped PGD (eval mode, uniform random start, CE / task loss, at most ``steps`` = 10 steps
of 0.007 at eps 0.031, each step plus ``omega N(0, 1)`` jitter, omega 0.001): every sample gets a
budget of ``tau`` extra steps; at each iterate a sample that is wrong spends one if it has any
left, and stops (keeps that iterate) if it has none; correct samples keep stepping. Loss: the
task loss at the returned points. ``tau`` grows during training (``dynamic_tau``, official):
0, then 1 after ``tau_milestones[0]`` and 2 after ``tau_milestones[1]`` of the epochs (official
epochs 50 and 90 of 120).

Segmentation: "wrong" = the image's Dice is below the training config's ``success`` threshold,
so each image stops ``tau`` steps after its Dice first falls below it.
Cost per step: at most (K + 1) forward and (K + 1) backward (the loop ends once every sample has
stopped; stopped samples still ride along in the batch).
"""

from __future__ import annotations

from typing import Any, Literal, Optional

import torch
from pydantic import Field

from medrobust.training.base import Method, StepContext, StepOutput, register_method
from medrobust.training.common import AdvParams, ascend, eps_input


class FATParams(AdvParams):
    eps: float = Field(0.031, ge=0, description="training budget (in `units`)")
    step_size: float = Field(0.007 / 0.031, gt=0, description="PGD step as a fraction of eps (official 0.007 / 0.031)")
    tau: int = Field(0, ge=0, description="extra steps after the first failure (the start value if dynamic_tau)")
    dynamic_tau: bool = True
    tau_milestones: list[float] = Field(default_factory=lambda: [50 / 120, 90 / 120],
                                        description="fractions of the epochs after which tau grows by one")
    omega: float = Field(0.001, ge=0, description="std of the Gaussian jitter added to every step (input units)")
    attack_mode: Literal["eval", "train"] = "eval"


class EarlyStop:
    """The official early-stop rule as an observer of :func:`~medrobust.attacks.loop.projected_gradient`.

    Records, per sample, the number of steps taken (``steps_taken``) and whether it stopped.
    """

    def __init__(self, success, y: torch.Tensor, tau: int, n: int, device) -> None:
        self.success = success
        self.y = y
        self.control = torch.full((n,), tau, dtype=torch.long, device=device)
        self.stopped = torch.zeros(n, dtype=torch.bool, device=device)
        self.steps_taken = torch.zeros(n, dtype=torch.long, device=device)

    def __call__(self, t: int, xa: torch.Tensor, logits: torch.Tensor, loss: torch.Tensor) -> Optional[torch.Tensor]:
        wrong = ~self.success(logits, self.y) & ~self.stopped
        self.stopped |= wrong & (self.control == 0)
        spend = wrong & (self.control > 0)
        self.control = self.control - spend.long()
        active = ~self.stopped
        self.steps_taken += active.long()
        return active


@register_method
class FAT(Method):
    name = "fat"
    Params = FATParams
    description = "friendly AT: early-stopped PGD, tau steps past the first failure"

    auto_attack_loss = "pgd"

    def passes(self) -> tuple[float, float]:
        return (self.params.steps + 1, self.params.steps + 1)

    def tau_now(self, ctx: StepContext) -> int:
        p = self.params
        if not p.dynamic_tau:
            return p.tau
        return p.tau + sum(1 for f in p.tau_milestones if ctx.epoch >= int(round(f * ctx.epochs)))

    def generate(self, ctx: StepContext, batch: dict[str, Any]) -> tuple[torch.Tensor, EarlyStop]:
        """The early-stopped adversarial batch and its stop record."""
        p = self.params
        x, y = batch["image"], batch["label"]
        eps = eps_input(p, p.eps, batch, x, self.threat.norm)
        rule = EarlyStop(self.task.success, y, self.tau_now(ctx), len(x), x.device)
        start = x + self.threat.random_delta(x, eps) if p.random_start else x
        x_adv = ascend(ctx.raw_model, self.threat, x, eps, p.steps, p.step_size, lambda lg: self.attack_loss(self.task, lg, y, 0, p.steps),
                       start, observe=rule, jitter=p.omega, mode=p.attack_mode)
        return x_adv, rule

    def compute(self, ctx: StepContext, batch: dict[str, Any]) -> StepOutput:
        x_adv, rule = self.generate(ctx, batch)
        logits_adv = ctx.model(x_adv)
        loss = self.task.loss(logits_adv, batch["label"]).mean()
        return StepOutput(loss, {"loss_adv": float(loss.detach()), "steps_taken_mean": float(rule.steps_taken.float().mean()),
                                 "stopped_frac": float(rule.stopped.float().mean())},
                          {"logits_adv": logits_adv, "steps_taken": rule.steps_taken.detach()})
