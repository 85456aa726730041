"""AdvLC: adversarial logit consistency (Li & Spratling, Pattern Recognition 2022), from the
official code (``TreeLLi/Combating-RO-AdvLC`` ``src/utils/train.py::update``,
``src/utils/adversary.py``, ``src/config/train.py``, ``src/config/config.py``, README).

Per step, in train mode: a clean forward (with gradient) at ``x`` (``+ U(-eps, eps)`` if
``random_start``; off by default) gives the clean loss and its input gradient, which is reused as
the first PGD step (sign steps of ``step_size * eps``, ``steps`` in total); then

    L(f(x'), y) + lam * (1 / (B N)) * sum of the top ``top`` fraction of |z(x') - z(x)|,

the L1 norm of the largest 10% of the batch's logit differences (``reg_top`` 0.1, ``reg_lam`` 0.3,
the README's PGD-10 command; the argparse default is 1), through both graphs. Defaults: Linf
8/255, step 2/255 (``config.py``), 10 steps (README; the argparse default is 1), no random
start, 200 epochs with decays at 100 and 150. ``warmup: true`` ramps lam linearly over the epochs
(``--reg_warmup``, off by default).

Segmentation: the entries are the per-voxel, per-class logit differences of the whole batch, the
top fraction is taken over all of them and the sum divided by ``B N`` (N voxels per image), so
the classification form (N = 1) is unchanged and the value does not grow with the image size.
Cost per step: K + 1 forward, K + 2 backward (the clean graph is traversed by the input gradient
and by the update).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from medrobust.training.base import Method, StepContext, StepOutput, register_method
from medrobust.training.common import AdvParams, ascend, eps_input


class AdvLCParams(AdvParams):
    eps: float = Field(8 / 255, ge=0, description="training budget (in `units`)")
    random_start: bool = False
    lam: float = Field(0.3, ge=0, description="reg_lam")
    top: float = Field(0.1, gt=0, le=1, description="reg_top: fraction of the largest logit differences regularised")
    warmup: bool = False
    attack_mode: Literal["eval", "train"] = "train"


def top_logit_difference(logits_adv: torch.Tensor, logits_clean: torch.Tensor, top: float) -> torch.Tensor:
    """``sum(top fraction of |z' - z| over the batch) / (B N)``.

    Args:
        logits_adv, logits_clean: ``(B, C)`` or ``(B, C, *spatial)`` logits.
        top: fraction of the ``B C N`` entries kept (the largest differences).

    Returns:
        A scalar; N is the number of elements (voxels) per sample, 1 for classifiers.
    """
    diff = (logits_adv - logits_clean).abs().reshape(-1)
    b = logits_adv.shape[0]
    n = logits_adv[0, 0].numel()
    if top >= 1:
        return diff.sum() / (b * n)
    k = max(1, int(diff.numel() * top))
    return torch.topk(diff, k, largest=True).values.sum() / (b * n)


@register_method
class AdvLC(Method):
    name = "advlc"
    Params = AdvLCParams
    description = "adversarial logit consistency: PGD-AT + L1 of the top-10% logit differences"

    auto_attack_loss = "pgd"

    def passes(self) -> tuple[float, float]:
        return (self.params.steps + 1, self.params.steps + 2)

    def compute(self, ctx: StepContext, batch: dict[str, Any]) -> StepOutput:
        p = self.params
        x, y = batch["image"], batch["label"]
        eps = eps_input(p, p.eps, batch, x, self.threat.norm)
        lim = self.threat.limits(x)
        x0 = self.threat.project(x + self.threat.random_delta(x, eps), x, eps, lim) if p.random_start else x
        x0 = x0.detach().requires_grad_(True)
        logits_clean = ctx.model(x0)
        loss_clean = self.task.loss(logits_clean, y)
        (ig,) = torch.autograd.grad(loss_clean.sum(), x0, retain_graph=True)
        with torch.no_grad():
            x1 = self.threat.project(x0 + self.threat.step(ig, eps * p.step_size), x, eps, lim)
        x_adv = ascend(ctx.raw_model, self.threat, x, eps, p.steps - 1, p.step_size,
                       lambda lg: self.attack_loss(self.task, lg, y, 0, p.steps), x1, mode=p.attack_mode)
        logits_adv = ctx.model(x_adv)
        loss_adv = self.task.loss(logits_adv, y).mean()
        reg = top_logit_difference(logits_adv, logits_clean, p.top)
        lam = p.lam * (ctx.epoch + 1) / ctx.epochs if p.warmup else p.lam
        return StepOutput(loss_adv + lam * reg, {"loss_adv": float(loss_adv.detach()), "loss_clean": float(loss_clean.mean().detach()),
                                                 "logit_consistency": float(reg.detach())},
                          {"logits_clean": logits_clean, "logits_adv": logits_adv})
