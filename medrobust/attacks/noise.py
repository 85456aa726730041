"""White noise: N random draws per case; reports the mean and the worst draw.

- Linf: symmetric uniform noise ``U[-eps, eps]`` per voxel (``one_sided: true`` reproduces the IMA
  code's ``eps * U[0, 1]``);
- L2: Gaussian noise rescaled to exactly the L2 radius ``eps`` (a uniform direction on the
  sphere); ``one_sided: true`` reproduces the IMA code's ``U[0, 1]`` per voxel rescaled to
  the radius ``eps`` (non-negative only).

Noisy inputs are clipped to the threat model's bounds (none for z-scored inputs). The returned
input is the draw with the lowest score (the worst case, a true running minimum over draws, not
the IMA code's comparison with the previous draw); ``extra`` holds per-sample
``score_mean``, ``score_sd`` and ``score_worst`` over the draws.
"""

from __future__ import annotations

import torch
from torch import nn

from medrobust.attacks.base import Attack, AttackParams, AttackResult, register_attack, worst_of_draws
from medrobust.threat import lp_norm


class WhiteNoiseParams(AttackParams):
    draws: int = 20
    one_sided: bool = False


@register_attack
class WhiteNoise(Attack):
    name = "white_noise"
    Params = WhiteNoiseParams
    description = "white noise: uniform (Linf) or Gaussian scaled to the L2 radius; N draws, mean and worst"
    kind = "noise"

    def cost(self) -> tuple[float, float]:
        return (float(self.params.draws + 1), 0.0)

    def sample(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        view = (-1, *([1] * (x.ndim - 1)))
        if self.threat.norm == "Linf":
            u = torch.rand_like(x) if self.params.one_sided else 2 * torch.rand_like(x) - 1
            return u * eps.reshape(view)
        g = torch.rand_like(x) if self.params.one_sided else torch.randn_like(x)
        return g / lp_norm(g, "L2").reshape(view).clamp_min(1e-12) * eps.reshape(view)

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor) -> AttackResult:
        lim = self.threat.limits(x)
        return worst_of_draws(model, x, y, self.task, self.params.draws, lambda _i: self.threat.clip(x + self.sample(x, eps), lim))
