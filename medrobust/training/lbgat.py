"""LBGAT: Learnable Boundary Guided AT (Cui et al., ICCV 2021), from the official code
(``dvlab-research/LBGAT`` ``lbgat.py::lbgat_loss``, ``train_lbgat_cifar100.py``).

A clean "guide" model C is trained together with the robust model R:

1. inner maximisation as TRADES: PGD on ``KL(p_R(x) || p_R(x'))`` from ``x + 0.001 N(0, 1)``, eval
   mode (the KL attack is used for every beta, as the official code);
2. loss ``MSE(z_R(x'), z_C(x)) + L(z_C(x), y) + beta KL(p_R(x) || p_R(x'))``; nothing is detached,
   so the MSE pulls R's adversarial logits toward C's clean logits and C toward R, and C also
   learns from its own clean loss (the "learnable boundary"). beta = 0 in the released script
   (plain LBGAT; beta > 0 is LBGAT + TRADES); weights of MSE and clean loss fixed at 1.
3. C is stepped after R with its own optimiser of the training config's kind, at R's learning
   rate (official: one SGD optimiser over both models, same lr and weight decay).

C has R's architecture, freshly initialised (official: ResNet-18 guiding a WRN-34-10); its
weights and optimiser state are saved with the method state in every checkpoint.
Segmentation: the MSE is per voxel (mean over classes), averaged over each image's voxels, so its
weight does not depend on the image size (the official ``nn.MSELoss()`` mean over all logits would
divide by H x W as well); C's clean loss is the task loss (Dice + CE).
Not copied: the R(x) forward recomputed at every attack step (cached once: same maths), the
train-mode R(x) forward when beta = 0 (unused).
Cost per step (R only; C adds 1 forward + 1 backward of its own): K + 2 (+1 with beta) forward,
K + 1 (+1) backward.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import torch
from pydantic import Field

from medrobust.training.adversarial import AdversarialMethod, Forward
from medrobust.training.base import StepContext, StepOutput, register_method
from medrobust.training.common import AdvParams, average_and_clip_grads, kl_elements
from medrobust.training.state import SampleState


class LBGATParams(AdvParams):
    eps: float = Field(0.031, ge=0, description="training budget (in `units`)")
    step_size: float = Field(0.007 / 0.031, gt=0, description="PGD step as a fraction of eps (official 0.007 / 0.031)")
    beta: float = Field(0.0, ge=0, description="TRADES KL weight (released script 0)")
    attack_mode: Literal["eval", "train"] = "eval"


def guide_loss(task, logits_adv: torch.Tensor, logits_guide: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample ``mean over elements of mean over classes (z_R(x') - z_C(x))^2``.

    Args:
        task: the task contract (elements and reduction).
        logits_adv: the robust model's logits at ``x'``; logits_guide: the guide's at ``x``.
        y: targets (only used to shape the reduction).

    Returns:
        ``(B,)``; for classifiers the mean over classes, i.e. ``nn.MSELoss`` per sample.
    """
    za, _ = task.elements(logits_adv, y)
    zc, _ = task.elements(logits_guide, y)
    return task.reduce(((za - zc) ** 2).mean(1), y)


@register_method
class LBGAT(AdversarialMethod):
    name = "lbgat"
    Params = LBGATParams
    description = "learnable boundary guided AT: a clean model's logits guide the robust model's"

    def prepare(self) -> None:
        self.guide: torch.nn.Module | None = None
        self.guide_opt: torch.optim.Optimizer | None = None

    def passes(self) -> tuple[float, float]:
        extra = 1.0 if self.params.beta > 0 else 0.0
        return (self.params.steps + 2 + extra, self.params.steps + 1 + extra)

    def objective_passes(self) -> tuple[float, float]:
        n = 2.0 if self.params.beta > 0 else 1.0
        return (n, n)

    def setup(self, state: SampleState, model) -> None:
        self.build_guide(model)

    def build_guide(self, model: torch.nn.Module) -> None:
        """C: a copy of R's architecture with fresh weights, and its optimiser."""
        guide = copy.deepcopy(model)
        for mod in guide.modules():
            if hasattr(mod, "reset_parameters") and mod is not guide:
                mod.reset_parameters()
        guide.train()
        self.guide = guide
        cfg = self.train_cfg
        if cfg is not None and hasattr(cfg, "optimizer"):
            from medrobust.training.engine import build_optimizer

            self.guide_opt = build_optimizer(cfg, guide)
        else:
            self.guide_opt = torch.optim.SGD(guide.parameters(), lr=0.01, momentum=0.9)

    def generate(self, ctx: StepContext, batch: dict[str, Any]) -> dict[str, Any]:
        y = batch["label"]
        return self.ascend_from_noise(ctx, batch, lambda lg, clean: self.task.reduce(kl_elements(clean, lg, self.task, y), y))

    def objective(self, ctx: StepContext, batch: dict[str, Any], gen: dict[str, Any], forward: Forward) -> StepOutput:
        if self.guide is None:
            self.build_guide(ctx.raw_model)
        x, y = batch["image"], batch["label"]
        for g in self.guide_opt.param_groups:
            g["lr"] = ctx.optimizer.param_groups[0]["lr"]
        logits_adv = forward(gen["x_adv"])
        logits_guide = self.guide(x)
        mse = guide_loss(self.task, logits_adv, logits_guide, y).mean()
        guide_clean = self.task.loss(logits_guide, y).mean()
        loss = mse + guide_clean
        logs = {"guide_mse": float(mse.detach()), "guide_loss_clean": float(guide_clean.detach())}
        tensors = {"logits_adv": logits_adv, "logits_guide": logits_guide}
        if self.params.beta > 0:
            logits = forward(x)
            kl = self.task.reduce(kl_elements(logits, logits_adv, self.task, y), y).mean()
            loss = loss + self.params.beta * kl
            logs["kl"] = float(kl.detach())
            tensors["logits_clean"] = logits
        return StepOutput(loss, logs, tensors)

    def after_step(self, ctx: StepContext) -> None:
        """Step the guide with the gradient the engine's backward left on it, then clear it."""
        average_and_clip_grads([q for q in self.guide.parameters() if q.grad is not None], self.train_cfg)
        self.guide_opt.step()
        self.guide_opt.zero_grad(set_to_none=True)

    def state_dict(self) -> dict[str, Any]:
        if self.guide is None:
            return {}
        return {"guide": {k: v.detach().cpu() for k, v in self.guide.state_dict().items()},
                "guide_optimizer": self.guide_opt.state_dict()}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        if not d:
            return
        self.guide.load_state_dict(d["guide"])
        self.guide_opt.load_state_dict(d["guide_optimizer"])
