"""AWP (Wu, Xia & Wang 2020) as a wrapper around any min-max method (``pgd_at``, ``trades``, ``mart``).

``min_theta max_{||v_l|| <= gamma ||w_l||} rho(theta + v)``: after the base method's inner
maximisation, one ascent step on the base objective gives the per-layer weight direction
(every tensor with ndim > 1: conv, transposed conv, linear; norm and bias parameters excluded),
scaled to ``gamma * ||w_l||``; the base objective is then evaluated at ``theta + v`` and its
gradient applied to ``theta`` (see :mod:`medrobust.training.common`). ``warmup_epochs``: AWP
off for the first epochs.

Defaults per base method, from the official code (``csdongxian/AWP``): AT-AWP (``pgd_at``)
gamma 1e-2, no warm-up (``at-awp/train_cifar10.py``); TRADES-AWP (``trades``) gamma 5e-3 and a
10-epoch warm-up (``trades-awp/train_trades_cifar.py``). MART-AWP has results in the AWP README
but no released code; ``mart`` takes AT-AWP's values (gamma 1e-2, no warm-up), a choice, not an
official value. Setting ``gamma`` / ``warmup_epochs`` overrides them.

    method: {name: awp, base: {name: trades, eps: 0.5}}          # gamma 5e-3, warm-up 10

Cost: the base method's passes plus one more evaluation of its objective (forward and backward).
"""

from __future__ import annotations

from typing import Any, Optional, Union

from pydantic import Field

from medrobust.errors import ConfigError
from medrobust.training.adversarial import AdversarialMethod
from medrobust.training.base import Method, MethodParams, StepContext, StepOutput, build_method, register_method
from medrobust.training.common import awp_direction, forward_perturbed
from medrobust.training.state import SampleState


class AWPParams(MethodParams):
    base: Union[str, dict[str, Any]] = "pgd_at"
    gamma: Optional[float] = Field(None, ge=0, description="null: the official value for the base method")
    warmup_epochs: Optional[int] = Field(None, ge=0, description="null: the official value for the base method")


# (gamma, warmup_epochs) of the official code per base method; mart: no official code, AT's values
AWP_DEFAULTS: dict[str, tuple[float, int]] = {"pgd_at": (1e-2, 0), "trades": (5e-3, 10), "mart": (1e-2, 0)}


@register_method
class AWP(Method):
    name = "awp"
    Params = AWPParams
    description = "adversarial weight perturbation around pgd_at / trades / mart"

    def prepare(self) -> None:
        params = self.params
        self.base = build_method(params.base, self.task, self.threat, self.train_cfg)
        if not isinstance(self.base, AdversarialMethod):
            raise ConfigError(f"awp wraps a min-max method (pgd_at, trades, mart), not '{self.base.name}'; set base to one of them.")
        gamma, warmup = AWP_DEFAULTS.get(self.base.name, AWP_DEFAULTS["pgd_at"])
        self.gamma = params.gamma if params.gamma is not None else gamma
        self.warmup_epochs = params.warmup_epochs if params.warmup_epochs is not None else warmup

    def describe_options(self) -> dict[str, Any]:
        return {"gamma": self.gamma, "warmup_epochs": self.warmup_epochs}

    def passes(self) -> tuple[float, float]:
        f, b = self.base.passes()
        fo, bo = self.base.objective_passes()
        return (f + fo, b + bo)

    def setup(self, state: SampleState, model) -> None:
        self.base.setup(state, model)

    def compute(self, ctx: StepContext, batch: dict[str, Any]) -> StepOutput:
        gen = self.base.generate(ctx, batch)
        if ctx.epoch < self.warmup_epochs or self.gamma == 0:
            return self.base.objective(ctx, batch, gen, ctx.model)
        probe = self.base.objective(ctx, batch, gen, ctx.raw_model).loss
        v = awp_direction(ctx.raw_model, probe, self.gamma)
        out = self.base.objective(ctx, batch, gen, lambda x: forward_perturbed(ctx.raw_model, v, x))
        out.logs["awp_norm_ratio"] = self.gamma
        return out
