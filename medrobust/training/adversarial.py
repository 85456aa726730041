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
