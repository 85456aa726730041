"""AutoAttack for classifiers through the reference package ``pyautoattack`` (standard version).

The attack set adapts to the number of classes (the DLR loss needs >= 3 classes, its targeted
form >= 4; fra31/auto-attack#70, #76, #110), and the choice is logged:

- >= 4 classes: APGD-CE, APGD-T, FAB-T, Square, with ``min(9, C - 1)`` target classes;
- 3 classes: APGD-CE, APGD-DLR, FAB, Square;
- 2 classes: APGD-CE, FAB, Square.

``pyautoattack`` assumes inputs in [0, 1]; medrobust maps the threat model's bounds onto [0, 1]
by an affine change of variables folded into the model (so budgets scale by ``1 / (hi - lo)``),
and for unbounded (z-scored) inputs uses a box wide enough that clipping never binds. Budgets
that differ per sample are run in groups of equal budget.
"""

from __future__ import annotations

import logging
from typing import Literal, Optional

import torch
from torch import nn

from medrobust.attacks.base import Attack, AttackParams, AttackResult

log = logging.getLogger("medrobust")


class AutoAttackParams(AttackParams):
    version: Literal["standard", "plus", "custom"] = "standard"
    attacks: Optional[list[str]] = None
    square_queries: int = 5000
    apgd_iter: int = 100
    restarts: Optional[int] = None  # APGD-CE / FAB restarts of an adapted set; None: 1, the standard version's budget
    batch_size: int = 500


def attacks_for_classes(n_classes: int) -> tuple[list[str], int]:
    if n_classes >= 4:
        return ["apgd-ce", "apgd-t", "fab-t", "square"], min(9, n_classes - 1)
    if n_classes == 3:
        return ["apgd-ce", "apgd-dlr", "fab", "square"], 0
    return ["apgd-ce", "fab", "square"], 0


class _Affine(nn.Module):
    """``u in [0, 1]  ->  model(lo + (hi - lo) * u)``."""

    def __init__(self, model: nn.Module, lo: torch.Tensor, span: torch.Tensor) -> None:
        super().__init__()
        self.model, self.lo, self.span = model, lo, span

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.model(self.lo + self.span * u)


class AutoAttack(Attack):
    name = "autoattack"
    Params = AutoAttackParams
    description = "AutoAttack (pyautoattack reference package), attack set adapted to the number of classes"
    tasks = ("classification",)

    def __init__(self, params: AutoAttackParams, task, threat) -> None:
        super().__init__(params, task, threat)
        self.chosen: list[str] = []

    def cost(self) -> tuple[float, float]:
        p = self.params
        return (4 * p.apgd_iter + p.square_queries, 3 * p.apgd_iter)

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor) -> AttackResult:
        out = x.clone()
        for e in torch.unique(eps):
            sel = torch.nonzero(eps == e).flatten()
            if float(e) == 0.0:
                continue
            out[sel] = self._run_group(model, x[sel], y[sel], float(e))
        return AttackResult(out, flags=[f"autoattack attacks: {', '.join(self.chosen)}"])

    def _run_group(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        from pyautoattack import AutoAttack as RefAutoAttack

        lim = self.threat.limits(x)
        if lim is None:
            lo = torch.full_like(x[:1], float(x.min()) - eps)
            hi = torch.full_like(x[:1], float(x.max()) + eps)
        else:
            lo, hi = lim
        span = (hi - lo).clamp_min(1e-12)
        scale = float(span.reshape(span.shape[0], -1)[:, 0].max()) if span.numel() else 1.0
        if not torch.allclose(span, torch.full_like(span, scale)):
            from medrobust.errors import ConfigError

            raise ConfigError("AutoAttack needs one intensity range for the whole batch; use fixed bounds (e.g. [0, 1]) rather than per_image.")
        wrapped = _Affine(model, lo, span).eval()
        u = ((x - lo) / span).clamp(0, 1)
        n_classes = self.task.num_classes
        p = self.params
        kwargs = dict(norm=self.threat.norm, eps=eps / scale, seed=p.seed, device=x.device)
        if p.version == "custom" or p.attacks:
            chosen = p.attacks or attacks_for_classes(n_classes)[0]
            adversary = RefAutoAttack(wrapped, version="custom", attacks=chosen, **kwargs)
            n_t = min(9, n_classes - 1)
        elif p.version == "plus":
            adversary = RefAutoAttack(wrapped, version="plus", **kwargs)
            chosen, n_t = adversary.attacks_to_run, min(9, n_classes - 1)
        else:
            chosen, n_t = attacks_for_classes(n_classes)
            if chosen == ["apgd-ce", "apgd-t", "fab-t", "square"]:
                adversary = RefAutoAttack(wrapped, version="standard", **kwargs)
            else:
                # pyautoattack's "custom" version keeps the constructors' 5 restarts for APGD-CE and FAB
                # (the "plus" budget); an adapted standard set keeps the standard version's 1 restart
                adversary = RefAutoAttack(wrapped, version="custom", attacks=chosen, **kwargs)
                adversary.apgd.n_restarts = adversary.fab.n_restarts = 1
        if p.restarts is not None:
            adversary.apgd.n_restarts = adversary.fab.n_restarts = p.restarts
        adversary.apgd.n_iter = p.apgd_iter
        adversary.apgd_targeted.n_iter = p.apgd_iter
        if n_t:
            adversary.apgd_targeted.n_target_classes = n_t
            adversary.fab.n_target_classes = n_t
        adversary.square.n_queries = p.square_queries
        adversary.logger.setLevel(logging.WARNING)
        if chosen != self.chosen:
            log.info("AutoAttack (%s, %d classes): running %s%s", self.threat.norm, n_classes, ", ".join(chosen),
                     f" with {n_t} target classes" if n_t and any(a.endswith("-t") for a in chosen) else "")
        self.chosen = list(chosen)
        with torch.enable_grad():
            u_adv, _ = adversary.run_standard_evaluation(u, y, batch_size=p.batch_size)
        return lo + span * u_adv
