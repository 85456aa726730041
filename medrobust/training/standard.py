"""Standard (clean) training: the task loss on clean inputs. 1 forward + 1 backward per step."""

from __future__ import annotations

from typing import Any

from medrobust.training.base import Method, MethodParams, StepContext, StepOutput, register_method


class StandardParams(MethodParams):
    pass


@register_method
class Standard(Method):
    name = "standard"
    Params = StandardParams
    description = "clean training on the task loss (segmentation: soft Dice + CE; classification: CE)"

    def compute(self, ctx: StepContext, batch: dict[str, Any]) -> StepOutput:
        x, y = batch["image"], batch["label"]
        logits = ctx.model(x)
        loss = self.task.loss(logits, y).mean()
        return StepOutput(loss, {"loss_clean": float(loss.detach())}, {"logits_clean": logits})
