"""Average-margin regulariser (Wu & Yu): raise the average logit margin, not only the minimum.

``L = base loss + mu * mean R_tau(alpha) [+ beta_orth * sum_l ||W_l W_l^T - I||^2]`` with the
logit margin ``alpha = z_y - max_{j != y} z_j`` per sample (classification) or per voxel
(segmentation, averaged per image and by default class-balanced, so background does not swamp
small structures) and the documented ramp ``R_tau(alpha) = clamp(tau - alpha, 0, tau)``: constant
(no gradient) for misclassified points, slope -1 on ``0 < alpha < tau``, zero beyond ``tau``.
``shift: final_code`` reproduces the released code's ``clamp(-alpha, 0, tau)`` instead.

It is a regulariser for clean training (``base: standard``, the paper's use) and can be added on
top of any method (``base: {name: pgd_at, ...}``) on the clean or the adversarial logits
(``on``; ``auto`` uses the clean logits when the base method has them). The orthogonality
penalty is off by default (costly and at odds with normalisation layers in large U-Nets).
Cost: the base method's passes (+1 forward when clean logits must be computed).
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

import torch
from pydantic import Field

from medrobust.training.base import Method, MethodParams, StepContext, StepOutput, build_method, register_method
from medrobust.training.common import orthogonality_penalty
from medrobust.training.state import SampleState


class AvgMarginParams(MethodParams):
    mu: float = Field(0.1, ge=0)
    tau: float = Field(5.0, gt=0)
    shift: Literal["documented", "final_code"] = "documented"
    class_balanced: Optional[bool] = None
    on: Literal["auto", "clean", "adversarial"] = "auto"
    base: Union[str, dict[str, Any]] = "standard"
    orth: float = Field(0.0, ge=0)
    orth_gram: Literal["out", "smaller"] = Field("out", description="out: official W W^T - I_out; smaller: Gram of the smaller side")


def ramp(alpha: torch.Tensor, tau: float, shift: str = "documented") -> torch.Tensor:
    """``clamp(tau - alpha, 0, tau)`` (documented) or ``clamp(-alpha, 0, tau)`` (final code)."""
    return torch.clamp(tau - alpha, 0.0, tau) if shift == "documented" else torch.clamp(-alpha, 0.0, tau)


@register_method
class AvgMargin(Method):
    name = "avg_margin"
    Params = AvgMarginParams
    description = "Wu & Yu average-margin ramp regulariser (per sample / per voxel), on any base method"

    def prepare(self) -> None:
        p = self.params
        self.base = build_method(p.base, self.task, self.threat, self.train_cfg)
        self.cb = p.class_balanced if p.class_balanced is not None else self.task.kind == "segmentation"

    def passes(self) -> tuple[float, float]:
        return self.base.passes()

    def setup(self, state: SampleState, model) -> None:
        self.base.setup(state, model)

    def start_epoch(self, ctx: StepContext) -> None:
        self.base.start_epoch(ctx)

    def end_epoch(self, ctx: StepContext) -> dict[str, float]:
        return self.base.end_epoch(ctx)

    def state_dict(self) -> dict[str, Any]:
        return self.base.state_dict()

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.base.load_state_dict(d)

    def regulariser(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        alpha = self.task.unit_margin(logits, y).reshape(logits.shape[0], -1)
        return self.task.reduce(ramp(alpha, self.params.tau, self.params.shift), y, self.cb)

    def compute(self, ctx: StepContext, batch: dict[str, Any]) -> StepOutput:
        out = self.base.compute(ctx, batch)
        key = {"clean": "logits_clean", "adversarial": "logits_adv"}.get(self.params.on)
        if key is None:
            key = "logits_clean" if "logits_clean" in out.tensors else "logits_adv"
        logits = out.tensors.get(key)
        if logits is None:
            logits = ctx.model(batch["image"]) if key == "logits_clean" else None
        if logits is None:
            from medrobust.errors import ConfigError

            raise ConfigError(f"avg_margin on adversarial logits needs an adversarial base method, not '{self.base.name}'; set on: clean.")
        reg = self.regulariser(logits, batch["label"]).mean()
        loss = out.loss + self.params.mu * reg
        out.logs["margin_reg"] = float(reg.detach())
        with torch.no_grad():
            out.logs["logit_margin_mean"] = float(self.task.unit_margin(logits.detach(), batch["label"]).mean())
        if self.params.orth > 0:
            orth = orthogonality_penalty(ctx.raw_model, self.params.orth_gram)
            loss = loss + self.params.orth * orth
            out.logs["orth"] = float(orth.detach())
        return StepOutput(loss, out.logs, out.tensors)

    def after_step(self, ctx: StepContext) -> None:
        self.base.after_step(ctx)
