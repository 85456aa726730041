"""Black-box random search in the spirit of Square (Andriushchenko et al. 2020), for 2D squares
and 3D cubes, usable on segmentation through the task's score.

Linf: the perturbation starts as random +-eps stripes (as Square does) and each query redraws a
random window (square / cube, one sign per channel, +-2 eps then clipped to the ball); L2: each
query adds a random +-window pattern whose size keeps the update at a fraction of the budget and
re-projects onto the L2 sphere. A proposal is kept when it lowers the sample's score (or keeps
it and raises the loss: the margin loss for classifiers, Dice + CE for segmentation). The
window side follows Square's ``p`` schedule, rescaled to the number of queries. Only forward
passes are used, so it also detects gradient masking (see :mod:`medrobust.attacks.sanity`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from medrobust.attacks.base import Attack, AttackParams, AttackResult, WorstCase, register_attack
from medrobust.tasks import margin_from_logits


class RandomSearchParams(AttackParams):
    queries: int = 100
    p_init: float = 0.8


def p_selection(p_init: float, it: int, n_queries: int) -> float:
    """Square's schedule of the fraction of pixels changed, rescaled to ``n_queries``."""
    it = int(it / max(1, n_queries) * 10000)
    for lim, div in ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64), (6000, 128), (8000, 256)):
        if it <= lim:
            return p_init / div
    return p_init / 512


@register_attack
class RandomSearch(Attack):
    name = "random_search"
    Params = RandomSearchParams
    description = "black-box Square-style random search (2D squares, 3D cubes), objective = task score"
    kind = "black-box"

    def cost(self) -> tuple[float, float]:
        return (self.params.queries + 2, 0.0)

    def _objective(self, model: nn.Module, xa: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            logits = model(xa)
            score = self.task.score(logits, y)
            if self.task.kind == "classification":
                loss = -margin_from_logits(logits.unsqueeze(-1), y.reshape(-1, 1)).reshape(-1)
            else:
                loss = self.task.loss(logits, y)
        return score, loss

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor) -> AttackResult:
        p = self.params
        lim = self.threat.limits(x)
        b, c = x.shape[:2]
        spatial = x.shape[2:]
        nd = len(spatial)
        n_feat = x[0].numel()
        view = (-1, *([1] * (x.ndim - 1)))
        s0, l0 = self._objective(model, x, y)
        best = WorstCase(x, s0, l0)
        # initial point
        if self.threat.norm == "Linf":
            stripe_shape = (b, c, *([1] * (nd - 1)), spatial[-1])
            delta = eps.reshape(view) * torch.sign(2 * torch.rand(stripe_shape, device=x.device) - 1).expand_as(x)
        else:
            delta = self.threat.random_delta(x, eps, "sphere")
        xa = self.threat.project(x + delta, x, eps, lim)
        s, l = self._objective(model, xa, y)
        best.update(xa, s, l)
        queries = torch.ones(b, device=x.device)
        for it in range(p.queries):
            active = torch.ones(b, dtype=torch.bool, device=x.device)
            if self.task.kind == "classification":
                active = best.score > 0.5
            idx = torch.nonzero(active).flatten()
            if idx.numel() == 0:
                break
            frac = p_selection(p.p_init, it, p.queries)
            side = max(1, int(round((frac * n_feat / c) ** (1.0 / nd))))
            sides = [min(side, s_) for s_ in spatial]
            xb, xs = best.x[idx], x[idx]
            es = eps[idx]
            mask = torch.zeros((len(idx), 1, *spatial), device=x.device, dtype=x.dtype)
            for j in range(len(idx)):
                starts = [int(torch.randint(0, s_ - w + 1, (1,))) for s_, w in zip(spatial, sides)]
                sl = (j, slice(None)) + tuple(slice(a, a + w) for a, w in zip(starts, sides))
                mask[sl] = 1.0
            signs = torch.sign(2 * torch.rand(len(idx), c, *([1] * nd), device=x.device) - 1)
            sub_lim = lim if lim is None or lim[0].shape[0] == 1 else (lim[0][idx], lim[1][idx])
            if self.threat.norm == "Linf":
                cand = xb + mask * signs * 2 * es.reshape(view)
            else:
                window = mask * signs
                wn = window.reshape(len(idx), -1).norm(dim=1).clamp_min(1e-12).reshape(view)
                # move a share of the budget into the window, then renormalise onto the sphere
                d = (xb - xs) * (1 - mask) + window / wn * es.reshape(view) * math.sqrt(max(frac, 1e-3))
                dn = d.reshape(len(idx), -1).norm(dim=1).clamp_min(1e-12).reshape(view)
                cand = xs + d / dn * es.reshape(view)
            cand = self.threat.project(cand, xs, es, sub_lim)
            s, l = self._objective(model, cand, y[idx])
            best.update(cand, s, l, idx)
            queries[idx] += 1
        return AttackResult(best.x, queries=queries)
