"""AWP (Wu, Xia & Wang 2020) as a wrapper around any min-max method (``pgd_at``, ``trades``, ``mart``).

``min_theta max_{||v_l|| <= gamma ||w_l||} rho(theta + v)``: after the base method's inner
maximisation, one ascent step on the base objective gives the per-layer weight direction
(every tensor with ndim > 1: conv, transposed conv, linear; norm and bias parameters excluded),
scaled to ``gamma * ||w_l||``; the base objective is then evaluated at ``theta + v`` and its
gradient applied to ``theta`` (see :mod:`medrobust.training.common`). ``warmup_epochs``: AWP
off for the first epochs (TRADES-AWP uses 10 on CIFAR). gamma 5e-3 (TRADES-AWP) or 7e-3 (ISEAT).

    method: {name: awp, base: {name: trades, eps: 0.5}, gamma: 0.005}

Cost: the base method's passes plus one more evaluation of its objective (forward and backward).
"""

from __future__ import annotations

from typing import Any, Union

from pydantic import Field

from medrobust.errors import ConfigError
from medrobust.training.adversarial import AdversarialMethod
from medrobust.training.base import Method, MethodParams, StepContext, StepOutput, build_method, register_method
from medrobust.training.common import awp_direction, forward_perturbed
from medrobust.training.state import SampleState


class AWPParams(MethodParams):
    base: Union[str, dict[str, Any]] = "pgd_at"
    gamma: float = Field(5e-3, ge=0)
    warmup_epochs: int = Field(0, ge=0)


@register_method
class AWP(Method):
    name = "awp"
    Params = AWPParams
    description = "adversarial weight perturbation around pgd_at / trades / mart"

    def __init__(self, params, task, threat, train_cfg) -> None:
        super().__init__(params, task, threat, train_cfg)
        self.base = build_method(params.base, task, threat, train_cfg)
        if not isinstance(self.base, AdversarialMethod):
            raise ConfigError(f"awp wraps a min-max method (pgd_at, trades, mart), not '{self.base.name}'; set base to one of them.")

    def passes(self) -> tuple[float, float]:
        f, b = self.base.passes()
        fo, bo = self.base.objective_passes()
        return (f + fo, b + bo)

    def setup(self, state: SampleState, model) -> None:
        self.base.setup(state, model)

    def compute(self, ctx: StepContext, batch: dict[str, Any]) -> StepOutput:
        gen = self.base.generate(ctx, batch)
        if ctx.epoch < self.params.warmup_epochs or self.params.gamma == 0:
            return self.base.objective(ctx, batch, gen, ctx.model)
        probe = self.base.objective(ctx, batch, gen, ctx.raw_model).loss
        v = awp_direction(ctx.raw_model, probe, self.params.gamma)
        out = self.base.objective(ctx, batch, gen, lambda x: forward_perturbed(ctx.raw_model, v, x))
        out.logs["awp_norm_ratio"] = self.params.gamma
        return out
