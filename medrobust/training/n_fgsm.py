"""N-FGSM: single-step AT with noise (de Jorge et al., NeurIPS 2022), from the official code
(``pdejorge/N-FGSM`` ``train.py``, ``experiments.sh``).

1. ``eta ~ U(-k eps, k eps)`` per pixel (Linf; L2: uniform in the ball of radius ``k eps``),
   ``x + eta`` clipped to the data bounds;
2. one forward at ``x + eta`` and the input gradient of the task loss (train mode, as the
   official code);
3. ``delta = eta + alpha * step(grad)`` (Linf sign, L2 normalised), clipped to the data bounds and
   **not** projected onto the eps ball (``--clip -1``), so ``||delta||`` reaches ``(k + 1) eps``;
   ``clip`` projects onto ``clip * eps`` instead;
4. the task loss at ``x + delta``.

Defaults: k = 2 (``--unif``), alpha = eps (``experiments.sh`` sets alpha to eps; ``alpha`` is a
fraction of eps here), eps 8/255; 30 epochs with a cyclic learning rate (0 -> 0.2 -> 0) in the
paper's CIFAR runs. Single-step training can collapse (catastrophic overfitting: multi-step
robust accuracy falls to ~0 within an epoch while single-step accuracy stays high); validate
with a multi-step attack to see it. Segmentation: the same with the task loss, for 2D slices and
3D patches; the cheap baseline for 3D. Implemented as one step of the shared PGD loop
(:func:`~medrobust.training.common.ascend`) from ``x + eta`` with the ball radius set to
``k eps + alpha eps`` (nothing is cut) or ``clip * eps``.
Cost per step: 2 forward, 2 backward (one input-gradient backward, one training backward).
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import Field

from medrobust.threat import lp_norm
from medrobust.training.base import Method, MethodParams, StepContext, StepOutput, register_method
from medrobust.training.common import ascend, eps_input


class NFGSMParams(MethodParams):
    eps: float = Field(8 / 255, ge=0, description="training budget (in `units`)")
    units: Literal["input", "rms", "native"] = "input"
    k: float = Field(2.0, ge=0, description="noise magnitude as a multiple of eps (--unif)")
    alpha: float = Field(1.0, gt=0, description="step as a fraction of eps (official alpha = eps)")
    clip: Optional[float] = Field(None, gt=0, description="project onto clip * eps (official: none)")
    attack_loss: str = "auto"
    attack_mode: Literal["eval", "train"] = "train"


@register_method
class NFGSM(Method):
    name = "n_fgsm"
    Params = NFGSMParams
    description = "single-step AT from noise of twice the radius, no projection to the radius"

    auto_attack_loss = "pgd"

    def passes(self) -> tuple[float, float]:
        return (2.0, 2.0)

    def perturb(self, ctx: StepContext, batch: dict[str, Any]):
        """``x + delta`` (data bounds applied, no eps-ball projection unless ``clip``)."""
        p = self.params
        x, y = batch["image"], batch["label"]
        eps = eps_input(p, p.eps, batch, x, self.threat.norm)
        radius = eps * p.clip if p.clip is not None else eps * (p.k + p.alpha)
        eta = self.threat.random_delta(x, eps * p.k)
        return ascend(ctx.raw_model, self.threat, x, radius, 1, 1.0, lambda lg: self.attack_loss(self.task, lg, y, 0, 1), x + eta,
                      alpha=eps * p.alpha, mode=p.attack_mode), eps

    def compute(self, ctx: StepContext, batch: dict[str, Any]) -> StepOutput:
        x, y = batch["image"], batch["label"]
        x_adv, eps = self.perturb(ctx, batch)
        logits_adv = ctx.model(x_adv)
        loss = self.task.loss(logits_adv, y).mean()
        ratio = (lp_norm(x_adv - x, self.threat.norm) / eps.clamp_min(1e-12)).mean()
        return StepOutput(loss, {"loss_adv": float(loss.detach()), "delta_over_eps": float(ratio)}, {"logits_adv": logits_adv})
