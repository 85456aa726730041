"""ISEAT: Instance-adaptive Smoothness Enhanced AT (Li & Spratling), from the official code.

Per step: a clean pass at the weights ``theta``; PGD (Linf sign steps, no random start by
default, train mode, as the official code); adversarial weight perturbation ``v`` (AWP, gamma
7e-3, every tensor with ndim > 1); the adversarial loss at ``theta + v``; and, once ``lambda`` is
on, the rank-weighted smoothness term

    lambda * (1 / B) * sum_i w_i * ||f_{theta+v}(x'_i) - f_theta(x_i)||^2,
    w_i = rank(l_adv,i - l_clean,i) / B   (most vulnerable -> 1, least -> 1/B, no gradient),

which smooths input and weight loss landscapes jointly and more for more vulnerable samples.
The clean logits are computed at the unperturbed weights and both branches backpropagate into
``theta`` (``torch.func.functional_call`` replaces the official code's temporary model copy).

Segmentation (``granularity``): ``image`` ranks the per-image mean vulnerability and averages the
per-voxel squared logit distance per image; ``voxel`` ranks every voxel of the batch (optionally
within each ground-truth class, ``class_balanced``) and averages ``w(p) s(p)`` over voxels. The
vulnerability always uses per-voxel CE; the adversarial loss is the task loss. The official
schedule switches lambda on at the first learning-rate decay; here ``lam_start`` (a fraction of
the epochs, default 0.5) does that for any schedule.
Cost with lambda on and AWP: K + 3 forward and K + 3 backward (the official code reuses the clean
gradient as the first PGD step; here the clean pass is taken at the unperturbed weights after AWP).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from medrobust.training.base import StepContext, StepOutput, register_method
from medrobust.training.common import AdvParams, ascend, awp_direction, eps_input, forward_perturbed
from medrobust.training.base import Method


class ISEATParams(AdvParams):
    lam: float = Field(0.1, ge=0)
    lam_start: float = Field(0.5, ge=0, le=1, description="fraction of the epochs before lambda switches on")
    awp_gamma: float = Field(7e-3, ge=0)
    random_start: bool = False
    granularity: Literal["image", "voxel"] = "image"
    class_balanced: bool = False
    attack_mode: Literal["eval", "train"] = "train"


def rank_weights(v: torch.Tensor) -> torch.Tensor:
    """``rank(v) / n`` along the last dim, ascending: the largest value gets 1, the smallest 1/n."""
    n = v.shape[-1]
    ranks = torch.empty_like(v)
    order = v.argsort(dim=-1)
    ar = torch.arange(1, n + 1, device=v.device, dtype=v.dtype).expand_as(v)
    ranks.scatter_(-1, order, ar)
    return ranks / n


@register_method
class ISEAT(Method):
    name = "iseat"
    Params = ISEATParams
    description = "instance-adaptive smoothness (rank-weighted logit distance under AWP)"

    def passes(self) -> tuple[float, float]:
        k = self.params.steps
        awp = 1 if self.params.awp_gamma > 0 else 0
        smooth = 1 if self.params.lam > 0 else 0
        return (k + 1 + awp + smooth, k + 1 + awp + smooth)

    def lam_now(self, ctx: StepContext) -> float:
        return self.params.lam if ctx.epoch >= int(round(self.params.lam_start * ctx.epochs)) else 0.0

    def compute(self, ctx: StepContext, batch: dict[str, Any]) -> StepOutput:
        p = self.params
        x, y = batch["image"], batch["label"]
        m = ctx.raw_model
        eps = eps_input(p, p.eps, batch, x, self.threat.norm)
        x0 = x
        if p.random_start:
            x0 = self.threat.project(x + self.threat.random_delta(x, eps), x, eps, self.threat.limits(x))
        x_adv = ascend(m, self.threat, x, eps, p.steps, p.step_size, lambda lg: self.task.loss(lg, y), x0, mode=p.attack_mode)
        v = {}
        if p.awp_gamma > 0:
            v = awp_direction(m, self.task.loss(m(x_adv), y).mean(), p.awp_gamma)
        logits_adv = forward_perturbed(m, v, x_adv)
        loss_adv_each = self.task.loss(logits_adv, y)
        loss = loss_adv_each.mean()
        logs = {"loss_adv": float(loss.detach())}
        tensors = {"logits_adv": logits_adv}
        lam = self.lam_now(ctx)
        if lam > 0:
            logits_clean = m(x0)
            ce_adv = self.task.elementwise_ce(logits_adv, y).detach()
            ce_clean = self.task.elementwise_ce(logits_clean, y).detach()
            za, _ = self.task.elements(logits_adv, y)
            zc, _ = self.task.elements(logits_clean, y)
            s = ((za - zc) ** 2).sum(1)  # (B, N) squared logit distance per element
            vul = ce_adv - ce_clean
            reg = self._regulariser(s, vul, y)
            loss = loss + lam * reg
            logs.update({"smooth": float(reg.detach()), "lam": lam})
            tensors["logits_clean"] = logits_clean
        return StepOutput(loss, logs, tensors)

    def _regulariser(self, s: torch.Tensor, vul: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        b = s.shape[0]
        if self.params.granularity == "image" or self.task.kind == "classification":
            v_img = self.task.reduce(vul, y, self.params.class_balanced)
            w = rank_weights(v_img)
            s_img = self.task.reduce(s, y, self.params.class_balanced)
            return (w * s_img).sum() / b
        flat_s, flat_v = s.reshape(-1), vul.reshape(-1)
        if not self.params.class_balanced:
            return (rank_weights(flat_v) * flat_s).mean()
        yy = self.task.label_elements(y).reshape(-1)
        terms = []
        for c in torch.unique(yy):
            sel = yy == c
            terms.append((rank_weights(flat_v[sel]) * flat_s[sel]).mean())
        return torch.stack(terms).mean()
