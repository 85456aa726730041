"""IAAT: Instance Adaptive Adversarial Training (Balaji, Goldstein & Hoffman 2019), official rule.

Per-sample radius ``E_i`` (state, starts at 0, kept by sample id). Each visit:

- warm-up (``epoch < warmup_epochs``): ``eps_i = eps0 * c_i`` (``c_i``: clean sample correct);
- afterwards two PGD checks at ``e = E_i`` and ``e + gamma``; ``eps_new = e + gamma`` if the sample
  survives at ``e + gamma``, else ``e`` if it survives at ``e``, else ``e - gamma`` (inferred, never
  attacked); ``eps_new = max(eps_new * c_i, 0)``; ``eps_i = beta * eps_new + (1 - beta) * e``;
- then PGD at ``eps_i`` (step ``max(eps_i / (K/2), alpha_min)``, uniform random start) and the task
  loss on the result.

Segmentation: one radius per image (slice), "survives" = Dice >= threshold (mean or max over
foreground classes, the training config's ``success``). Options beyond the official code:
``eps_max`` (the official code has no cap), ``attack_mode`` (official: train) and ``success_mode``
(the mode of the three survival checks; default eval, official train: with BatchNorm, train-mode
checks make a sample's verdict depend on the rest of its batch, see
:mod:`medrobust.training.batchnorm`). Radii are
kept in the method's ``units``. Cost after warm-up: 3 K + 4 forward, 3 K + 1 backward (warm-up: K + 2, K + 1).
"""

from __future__ import annotations

from typing import Any, Literal, Optional

import torch
from pydantic import Field

from medrobust.attacks.base import model_mode
from medrobust.threat import budget_to_input
from medrobust.training.base import Method, MethodParams, StepContext, StepOutput, register_method
from medrobust.training.common import ascend
from medrobust.training.state import SampleState


class IAATParams(MethodParams):
    eps0: float = Field(8 / 255, ge=0, description="warm-up radius")
    gamma: float = Field(1.9 / 255, ge=0, description="radius increment of the checks")
    beta: float = Field(0.1, gt=0, le=1, description="exponential-averaging factor")
    steps: int = Field(10, ge=1)
    alpha_min: float = Field(2 / 255, ge=0, description="minimum PGD step")
    warmup_epochs: int = Field(10, ge=0)
    eps_max: Optional[float] = Field(None, description="optional cap on the radius (not in the official code)")
    units: Literal["input", "rms", "native"] = "input"
    attack_loss: str = "auto"
    attack_mode: Literal["eval", "train"] = "train"
    success_mode: Literal["eval", "train"] = Field("eval", description="mode of the survival checks (clean, E, E + gamma); "
                                                  "official: train (= attack_mode), coupled through BatchNorm")


def iaat_update(e: torch.Tensor, ok_cur: torch.Tensor, ok_hi: torch.Tensor, clean_ok: torch.Tensor, gamma: float,
                beta: float, eps_max: Optional[float] = None) -> torch.Tensor:
    """The official IAAT radius rule (after warm-up), elementwise on per-sample tensors."""
    new = torch.where(ok_hi, e + gamma, torch.where(ok_cur, e, e - gamma))
    new = torch.clamp(new * clean_ok.to(e.dtype), min=0.0)
    out = beta * new + (1 - beta) * e
    return out.clamp(max=eps_max) if eps_max is not None else out


@register_method
class IAAT(Method):
    name = "iaat"
    Params = IAATParams
    description = "instance-adaptive radius per sample (official rule, Dice-threshold success for segmentation)"

    auto_attack_loss = "pgd"

    def prepare(self) -> None:
        self.success_mode = self.params.success_mode

    def passes(self) -> tuple[float, float]:
        k = self.params.steps
        return (3 * k + 4, 3 * k + 1)

    def setup(self, state: SampleState, model) -> None:
        state.register("iaat_eps", 0.0)

    def _pgd(self, model, x, y, eps_in: torch.Tensor, alpha_min: torch.Tensor) -> torch.Tensor:
        """PGD-K at per-sample radii, step max(eps / (K/2), alpha_min), uniform random start."""
        alpha = torch.maximum(eps_in / (self.params.steps / 2), alpha_min)
        start = x + self.threat.random_delta(x, eps_in)
        return ascend(model, self.threat, x, eps_in, self.params.steps, 1.0, lambda lg: self.attack_loss(self.task, lg, y, 0, 1), start, alpha=alpha)

    def compute(self, ctx: StepContext, batch: dict[str, Any]) -> StepOutput:
        p = self.params
        x, y, ids = batch["image"], batch["label"], batch["id"]
        unit = budget_to_input(1.0, p.units, self.threat.norm, batch, x)  # input units per method unit
        amin = (p.alpha_min * unit).to(x.dtype)
        m = ctx.raw_model
        with torch.no_grad(), model_mode(m, p.success_mode):
            clean_ok = self.task.success(m(x), y)
        with model_mode(m, p.attack_mode):
            if ctx.epoch < p.warmup_epochs:
                eps = p.eps0 * clean_ok.double().to(x.device)
            else:
                e = ctx.state.get("iaat_eps", ids).to(x.device)
                x_cur = self._pgd(m, x, y, (e * unit).to(x.dtype), amin)
                x_hi = self._pgd(m, x, y, ((e + p.gamma) * unit).to(x.dtype), amin)
            if ctx.epoch >= p.warmup_epochs:
                with torch.no_grad(), model_mode(m, p.success_mode):
                    ok_cur = self.task.success(m(x_cur), y)
                    ok_hi = self.task.success(m(x_hi), y)
                eps = iaat_update(e, ok_cur, ok_hi, clean_ok, p.gamma, p.beta, p.eps_max)
            ctx.state.set("iaat_eps", ids, eps)
            x_adv = self._pgd(m, x, y, (eps * unit).to(x.dtype), amin)
        logits = ctx.model(x_adv)
        loss = self.task.loss(logits, y).mean()
        return StepOutput(loss, {"loss_adv": float(loss.detach()), "state_eps_mean": float(eps.mean())}, {"logits_adv": logits})

    def end_epoch(self, ctx: StepContext) -> dict[str, float]:
        e = ctx.state.tensors["iaat_eps"]
        return {"state_eps_mean": float(e.mean()), "state_eps_max": float(e.max())}
