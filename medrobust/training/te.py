"""TE: temporal-ensemble regularisation of PGD-AT (Dong et al., "Exploring Memorization in
Adversarial Training", ICLR 2022), from the IMA repository's nnU-Net ``PGD_TE``
(``segmentation/nnunet/TE/loss.py``; schedule in ``training/network_training/network_trainer.py``).

Per training sample (state by sample id) an exponential moving average of the model's clean
predicted probabilities (eval-mode forward, no gradient), ``ema = m ema + (1 - m) p`` with
``m = momentum`` (0.9), updated only from ``start_epoch`` on and normalised to a soft label
``q = ema / sum_classes ema``. From then on ``weight * MSE(softmax(f(.)), q)`` is added to the
attack objective and to the training loss of PGD-AT (task loss at ``x'``), with
``weight = max_weight * r(epoch)`` (300), ``r = 0`` before ``start_epoch``,
``exp(-5 (1 - (epoch - start) / (end - start))^2)`` up to ``ramp_end_epoch`` and 1 after
(official segmentation: 25 and 35). Attack: eval mode, ``steps`` (10) of ``step_size`` = eps / 4,
start ``x + 0.001 N(0, 1)`` (L2; uniform in the box for Linf).

Segmentation adaptation: the EMA is one probability map per training sample (``C x spatial``),
the softmax is per voxel over the classes, and the MSE is averaged over each image's classes and
voxels. Not copied: the official softmax over the flattened (class x pixel) vector of a sample, the
[0, 1] clamp of z-scored inputs. The stored maps follow the sample id, so spatial augmentation
(flips, random crops) shifts a sample's map against its EMA, as in the official code.
Memory: one float32 map per training sample. Cost per step: (K + 2) forward, (K + 1) backward.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from medrobust.attacks.base import model_mode
from medrobust.errors import ConfigError
from medrobust.training.base import Method, StepContext, StepOutput, register_method
from medrobust.training.common import AdvParams, ascend, eps_input
from medrobust.training.state import SampleState


class TEParams(AdvParams):
    momentum: float = Field(0.9, ge=0, lt=1)
    start_epoch: int = Field(25, ge=0, description="first epoch (0-based) of the EMA updates and the TE term")
    ramp_end_epoch: int = Field(35, ge=0, description="epoch at which the weight reaches max_weight")
    max_weight: float = Field(300.0, ge=0)
    step_size: float = Field(0.25, gt=0, description="PGD step as a fraction of eps (official eps / 4)")
    attack_mode: Literal["eval", "train"] = "eval"


def te_rampup(epoch: int, start: int, end: int) -> float:
    """The official ``sigmoid_rampup``: 0 before ``start``, ``exp(-5 (1 - t)^2)`` on the ramp, 1 after ``end``."""
    if epoch < start:
        return 0.0
    if epoch > end or end <= start:
        return 1.0
    phase = 1.0 - (epoch - start) / (end - start)
    return math.exp(-5.0 * phase * phase)


@register_method
class TE(Method):
    name = "te"
    Params = TEParams
    description = "temporal ensembling: PGD-AT + MSE to an EMA of each sample's past predictions"

    auto_attack_loss = "pgd"

    def passes(self) -> tuple[float, float]:
        return (self.params.steps + 2, self.params.steps + 1)

    def active(self, epoch: int) -> bool:
        return epoch >= self.params.start_epoch

    def weight(self, epoch: int) -> float:
        return self.params.max_weight * te_rampup(epoch, self.params.start_epoch, self.params.ramp_end_epoch)

    def _ema(self, state: SampleState, probs: torch.Tensor) -> torch.Tensor:
        if "te_ema" not in state.tensors:
            state.register("te_ema", torch.zeros(len(state), *probs.shape[1:]), dtype=torch.float32)
        t = state.tensors["te_ema"]
        if tuple(t.shape[1:]) != tuple(probs.shape[1:]):
            raise ConfigError(f"TE keeps one prediction map per sample and got shape {tuple(probs.shape[1:])} after "
                              f"{tuple(t.shape[1:])}; give every training sample the same size (preprocess.size or patch_size).")
        return t

    def te_term(self, logits: torch.Tensor, soft: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample ``mean over classes and voxels (softmax_c(logits) - soft)^2`` ``(B,)``."""
        d = (F.softmax(logits, 1) - soft) ** 2
        return d.reshape(d.shape[0], -1).mean(1)

    def compute(self, ctx: StepContext, batch: dict[str, Any]) -> StepOutput:
        p = self.params
        x, y, ids = batch["image"], batch["label"], batch["id"]
        eps = eps_input(p, p.eps, batch, x, self.threat.norm)
        m = ctx.raw_model
        on = self.active(ctx.epoch)
        w = self.weight(ctx.epoch) if on else 0.0
        soft = None
        with model_mode(m, p.attack_mode):
            if on:
                with torch.no_grad():
                    probs = F.softmax(m(x), 1).float().cpu()
                ema = self._ema(ctx.state, probs)
                rows = ctx.state.rows(ids)
                ema[rows] = p.momentum * ema[rows] + (1 - p.momentum) * probs
                soft = (ema[rows] / ema[rows].sum(1, keepdim=True).clamp_min(1e-12)).to(x.device, x.dtype)

            def objective(lg: torch.Tensor) -> torch.Tensor:
                out = self.attack_loss(self.task, lg, y, 0, p.steps)
                return out + w * self.te_term(lg, soft, y) if soft is not None else out

            noise = self.threat.random_delta(x, eps) if self.threat.norm == "Linf" else 0.001 * torch.randn_like(x)
            start = x + noise if p.random_start else x
            x_adv = ascend(m, self.threat, x, eps, p.steps, p.step_size, objective, start)
        logits_adv = ctx.model(x_adv)
        loss_adv = self.task.loss(logits_adv, y).mean()
        loss = loss_adv
        logs = {"loss_adv": float(loss_adv.detach()), "te_weight": w}
        if soft is not None:
            reg = self.te_term(logits_adv, soft, y).mean()
            loss = loss + w * reg
            logs["te_mse"] = float(reg.detach())
        return StepOutput(loss, logs, {"logits_adv": logits_adv})
