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

from medrobust.attacks.base import Attack, AttackParams, AttackResult, register_attack

log = logging.getLogger(__name__)


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


def _rebuilt_apgd(old, n_iter: int, targeted: bool):
    """A fresh ``pyautoattack`` APGD with ``n_iter`` iterations and ``old``'s other settings.

    APGD computes its step-size checkpoints (``n_iter_2 = 0.22 n_iter``, ``n_iter_min``,
    ``size_decr``) in ``__init__``; setting ``n_iter`` afterwards keeps the 100-iteration schedule
    (with 20 iterations the first checkpoint stayed at 22, so the step never halved).
    """
    from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted

    common = dict(n_iter=n_iter, norm=old.norm, n_restarts=old.n_restarts, eps=old.eps, seed=old.seed,
                  eot_iter=old.eot_iter, rho=old.thr_decr, topk=old.topk, verbose=old.verbose, device=old.device,
                  use_largereps=old.use_largereps, is_tf_model=old.is_tf_model, logger=old.logger)
    if targeted:
        return APGDAttack_targeted(old.model, n_target_classes=old.n_target_classes, **common)
    return APGDAttack(old.model, loss=old.loss, **common)


def set_apgd_iter(adversary, n_iter: int) -> None:
    """Give a ``pyautoattack.AutoAttack``'s APGD-CE/DLR and APGD-T ``n_iter`` iterations, schedule included.

    Args:
        adversary: a ``pyautoattack.AutoAttack`` (its version settings already applied).
        n_iter: iterations per restart.
    """
    if adversary.apgd.n_iter_orig != n_iter:
        adversary.apgd = _rebuilt_apgd(adversary.apgd, n_iter, targeted=False)
    if adversary.apgd_targeted.n_iter_orig != n_iter:
        adversary.apgd_targeted = _rebuilt_apgd(adversary.apgd_targeted, n_iter, targeted=True)


def build_reference(model: nn.Module, p: "AutoAttackParams", n_classes: int, norm: str, eps: float, device):
    """The configured ``pyautoattack.AutoAttack`` on inputs in [0, 1].

    Args:
        model: the classifier on [0, 1] inputs.
        p: the attack's settings.
        n_classes: number of classes (chooses the attack set of the standard version).
        norm: "Linf" or "L2".
        eps: budget on [0, 1] inputs.
        device: torch device.

    Returns:
        ``(adversary, attack names, number of target classes)``.
    """
    from pyautoattack import AutoAttack as RefAutoAttack

    kwargs = dict(norm=norm, eps=eps, seed=p.seed, device=device)
    if p.version == "custom" or p.attacks:
        chosen = p.attacks or attacks_for_classes(n_classes)[0]
        adversary = RefAutoAttack(model, version="custom", attacks=chosen, **kwargs)
        n_t = min(9, n_classes - 1)
    elif p.version == "plus":
        adversary = RefAutoAttack(model, version="plus", **kwargs)
        chosen, n_t = adversary.attacks_to_run, min(9, n_classes - 1)
    else:
        chosen, n_t = attacks_for_classes(n_classes)
        if chosen == ["apgd-ce", "apgd-t", "fab-t", "square"]:
            adversary = RefAutoAttack(model, version="standard", **kwargs)
        else:
            # pyautoattack's "custom" version keeps the constructors' 5 restarts for APGD-CE and FAB
            # (the "plus" budget); an adapted standard set keeps the standard version's 1 restart
            adversary = RefAutoAttack(model, version="custom", attacks=chosen, **kwargs)
            adversary.apgd.n_restarts = adversary.fab.n_restarts = 1
    if p.restarts is not None:
        adversary.apgd.n_restarts = adversary.fab.n_restarts = p.restarts
    if n_t:
        adversary.apgd_targeted.n_target_classes = n_t
        adversary.fab.n_target_classes = n_t
    set_apgd_iter(adversary, p.apgd_iter)
    adversary.square.n_queries = p.square_queries
    return adversary, list(chosen), n_t


@register_attack
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
        adversary, chosen, n_t = build_reference(wrapped, p, n_classes, self.threat.norm, eps / scale, x.device)
        adversary.logger.setLevel(logging.WARNING)
        if chosen != self.chosen:
            log.info("AutoAttack (%s, %d classes): running %s%s", self.threat.norm, n_classes, ", ".join(chosen),
                     f" with {n_t} target classes" if n_t and any(a.endswith("-t") for a in chosen) else "")
        self.chosen = list(chosen)
        with torch.enable_grad():
            u_adv, _ = adversary.run_standard_evaluation(u, y, batch_size=p.batch_size)
        return lo + span * u_adv
