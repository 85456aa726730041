"""Shared shape of the min-max methods (PGD-AT, TRADES, MART): generate, then an objective.

Splitting a step into ``generate`` (the inner maximisation, no parameter gradients) and
``objective`` (the outer loss, given a forward function) lets :mod:`medrobust.training.awp`
wrap any of them: it evaluates the objective once at the weights to find the adversarial weight
direction and once more at the perturbed weights.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from medrobust.training.base import Method, StepContext, StepOutput

Forward = Callable[[torch.Tensor], torch.Tensor]


class AdversarialMethod(Method):
    def objective_passes(self) -> tuple[float, float]:
        """(forward, backward) passes of one evaluation of :meth:`objective` and its backward."""
        return (1.0, 1.0)

    def generate(self, ctx: StepContext, batch: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def objective(self, ctx: StepContext, batch: dict[str, Any], gen: dict[str, Any], forward: Forward) -> StepOutput:
        raise NotImplementedError

    def compute(self, ctx: StepContext, batch: dict[str, Any]) -> StepOutput:
        gen = self.generate(ctx, batch)
        return self.objective(ctx, batch, gen, ctx.model)

    def ascend_from_noise(self, ctx: StepContext, batch: dict[str, Any], attack_objective, need_clean: bool = True) -> dict[str, Any]:
        """TRADES / MART inner maximisation: PGD on ``attack_objective(logits, clean_logits)`` from
        ``x + 0.001 N(0, 1)`` (official start) in ``attack_mode``; clean logits (no gradient) only if needed."""
        from medrobust.attacks.base import model_mode
        from medrobust.training.common import ascend, eps_input

        p = self.params
        x = batch["image"]
        eps = eps_input(p, p.eps, batch, x, self.threat.norm)
        m = ctx.raw_model
        with model_mode(m, p.attack_mode):
            clean = None
            if need_clean:
                with torch.no_grad():
                    clean = m(x).detach()
            start = x + 0.001 * torch.randn_like(x) if p.random_start else x
            x_adv = ascend(m, self.threat, x, eps, p.steps, p.step_size, lambda lg: attack_objective(lg, clean), start)
        return {"x_adv": x_adv}
