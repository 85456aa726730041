"""FGSM and PGD (Madry et al.): Linf sign steps or L2 normalised steps, random start, restarts,
per-sample budgets, and any loss of :mod:`medrobust.attacks.losses`."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from medrobust.attacks.base import Attack, AttackParams, AttackResult, WorstCase, register_attack
from medrobust.attacks.losses import get_loss
from medrobust.attacks.loop import projected_gradient


def default_loss(task_kind: str) -> str:
    return "dice_ce" if task_kind == "segmentation" else "ce"


class PGDParams(AttackParams):
    steps: int = 10
    step_size: float = 0.25
    random_start: bool = True
    random_radius: Literal["ball", "sphere"] = "ball"
    restarts: int = 1
    loss: str = "auto"
    return_best: bool = True


@register_attack
class PGD(Attack):
    """Projected gradient ascent on the attack loss; step ``step_size * eps`` (relative).

    Linf: ``x += alpha * sign(grad)``; L2: ``x += alpha * grad / ||grad||``; then project onto the
    ball and the bounds. Every iterate is scored and the worst case per sample is returned
    (``return_best: false`` returns the last iterate, as adversarial training does, and skips the
    scoring). ``loss_fn`` (Python API only) replaces the named loss, e.g. TRADES' KL objective.
    Cost per sample: ``restarts * (steps + 1)`` forward and ``restarts * steps`` backward passes.
    """

    name = "pgd"
    Params = PGDParams
    description = "PGD with random start / restarts; losses ce, dice_ce, slm, margin, dlr, segpgd, cospgd, masked_ce(_bal), js"

    def __init__(self, params: PGDParams, task, threat, loss_fn=None) -> None:
        super().__init__(params, task, threat)
        self.loss_name = params.loss if params.loss != "auto" else default_loss(task.kind)
        self.loss_fn = loss_fn or get_loss(self.loss_name, task)

    def cost(self) -> tuple[float, float]:
        p = self.params
        return (p.restarts * (p.steps + 1) + 1, p.restarts * p.steps)

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor) -> AttackResult:
        p = self.params
        lim = self.threat.limits(x)
        if not p.return_best:
            return AttackResult(self._last_iterate(model, x, y, eps, lim))
        with torch.no_grad():
            logits0 = model(x)
            best = WorstCase(x, self.task.score(logits0, y), self.loss_fn(self.task, logits0, y, 0, p.steps))
        alpha = eps * p.step_size
        for r in range(p.restarts):
            if self.task.kind == "classification" and r > 0:
                idx = torch.nonzero(best.score > 0.5).flatten()
                if idx.numel() == 0:
                    break
            else:
                idx = torch.arange(x.shape[0], device=x.device)
            xs, ys, es = x[idx], y[idx], eps[idx]
            ls = lim if lim is None or lim[0].shape[0] == 1 else (lim[0][idx], lim[1][idx])
            start = xs + self.threat.random_delta(xs, es, p.random_radius) if p.random_start else None

            def keep(t, xa, logits, loss, ys=ys, idx=idx):
                best.update(xa, self.task.score(logits, ys), loss, idx)

            projected_gradient(model, self.threat, xs, es, alpha[idx], p.steps, self._objective(ys), start, observe=keep,
                               evaluate_last=True, limits=ls)
        return AttackResult(best.x)

    def _objective(self, y: torch.Tensor):
        return lambda logits, t: self.loss_fn(self.task, logits, y, t, self.params.steps)

    def _last_iterate(self, model, x, y, eps, lim) -> torch.Tensor:
        p = self.params
        start = x + self.threat.random_delta(x, eps, p.random_radius) if p.random_start else None
        return projected_gradient(model, self.threat, x, eps, eps * p.step_size, p.steps, self._objective(y), start, limits=lim)


class FGSMParams(AttackParams):
    loss: str = "auto"


@register_attack
class FGSM(Attack):
    """Fast gradient (sign) method: one step of size ``eps`` from the clean input."""

    name = "fgsm"
    Params = FGSMParams
    description = "one-step FGSM (Linf sign / L2 normalised gradient)"

    def __init__(self, params: FGSMParams, task, threat) -> None:
        super().__init__(params, task, threat)
        self.pgd = PGD(PGDParams(steps=1, step_size=1.0, random_start=False, loss=params.loss, seed=params.seed,
                                 model_mode=params.model_mode), task, threat)

    def cost(self) -> tuple[float, float]:
        return (2.0, 1.0)

    def run(self, model, x, y, eps):
        return self.pgd.run(model, x, y, eps)
