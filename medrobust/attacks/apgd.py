"""APGD (Croce & Hein, ICML 2020): step-size-free PGD with momentum and checkpoints.

Follows the reference implementation (``fra31/auto-attack``, MIT licence; as packaged in
``pyautoattack`` 0.2.0, ``autopgd_base.APGDAttack.attack_single_run``): initial step ``2 eps``,
momentum 0.75, checkpoints after 22% of the iterations and then every ``max(prev - 3%, 6%)``; at a
checkpoint the step is halved and the iterate reset to the best point when fewer than ``rho`` of
the steps since the last checkpoint increased the loss, or when the step was not reduced at the
last checkpoint and the best loss did not improve.

medrobust's additions: any loss of :mod:`medrobust.attacks.losses` (segmentation included),
per-sample budgets, intensity bounds other than [0, 1], a progressive radius schedule
(``eps_schedule: [2, 1.5, 1]`` with ``iter_fractions: [0.3, 0.3, 0.4]``, as in SEA), targeted DLR
for classifiers, and the per-sample worst case (lowest score, then highest loss) over all
iterates as the returned point.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from pydantic import model_validator
from torch import nn

from medrobust.attacks.base import Attack, AttackParams, AttackResult, WorstCase
from medrobust.attacks.base import register_attack
from medrobust.attacks.losses import dlr_targeted, get_loss
from medrobust.attacks.pgd import default_loss
from medrobust.threat import lp_norm


class APGDParams(AttackParams):
    n_iter: int = 100
    restarts: int = 1
    loss: str = "auto"
    rho: float = 0.75
    eps_schedule: list[float] = [1.0]
    iter_fractions: Optional[list[float]] = None
    n_target_classes: int = 0
    stop_at_floor: bool = True  # stop a case once its score reached `floor` (AutoAttack stops misclassified points)
    floor: float = 0.0  # segmentation: Dice; classification: 0 = misclassified

    @model_validator(mode="after")
    def _check(self) -> "APGDParams":
        if self.eps_schedule[-1] != 1.0:
            raise ValueError(f"eps_schedule must end at 1.0 (the budget), got {self.eps_schedule}")
        if self.iter_fractions is not None and len(self.iter_fractions) != len(self.eps_schedule):
            raise ValueError("iter_fractions needs one entry per eps_schedule stage")
        if self.n_iter < 1:
            raise ValueError("n_iter must be >= 1")
        return self


def _normalize(g: torch.Tensor, norm: str) -> torch.Tensor:
    n = lp_norm(g, norm).reshape(-1, *([1] * (g.ndim - 1)))
    return g / (n + 1e-12)


def _halve_at_checkpoint(loss_steps: torch.Tensor, i: int, k: int, rho: float, reduced_last: torch.Tensor,
                         loss_best_last: torch.Tensor, loss_best: torch.Tensor, step: torch.Tensor,
                         xs: tuple[torch.Tensor, torch.Tensor], grads: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """APGD's checkpoint: halve the step and go back to the best point where fewer than ``rho`` of the
    last ``k`` steps increased the loss, or where the step was not halved last time and the best loss
    did not improve. ``step``, ``xs = (x_adv, x_best)`` and ``grads = (grad, grad_best)`` are updated
    in place. Returns the new ``reduced_last`` (1.0 where the step was halved)."""
    incr = torch.zeros_like(loss_best)
    for c5 in range(k):
        incr += (loss_steps[i - c5] > loss_steps[i - c5 - 1]).to(loss_best.dtype)
    osc = (incr <= k * rho).to(loss_best.dtype)
    no_impr = (1.0 - reduced_last) * (loss_best_last >= loss_best).to(loss_best.dtype)
    osc = torch.maximum(osc, no_impr)
    sel = osc > 0
    if sel.any():
        step[sel] /= 2.0
        xs[0][sel] = xs[1][sel]
        grads[0][sel] = grads[1][sel]
    return osc.clone()


@register_attack
class APGD(Attack):
    name = "apgd"
    Params = APGDParams
    description = "APGD (Croce & Hein) with any loss, per-sample budgets, radius schedule, targeted DLR"

    def __init__(self, params: APGDParams, task, threat) -> None:
        super().__init__(params, task, threat)
        self.loss_name = params.loss if params.loss != "auto" else default_loss(task.kind)
        if params.n_target_classes > 0:
            if task.kind != "classification":
                from medrobust.errors import ConfigError

                raise ConfigError("targeted APGD (n_target_classes > 0) is for classifiers; set n_target_classes: 0.")
            self.loss_fn = None
        else:
            self.loss_fn = get_loss(self.loss_name, task)
        self.flags: list[str] = []

    def cost(self) -> tuple[float, float]:
        """Nominal passes per sample: every stage of the radius schedule takes ``iters + 1`` gradients."""
        p = self.params
        runs = p.restarts * max(1, p.n_target_classes)
        per_run = sum(it + 1 for _, it in self._stages())
        return (runs * per_run + 1, runs * per_run)

    def _stages(self) -> list[tuple[float, int]]:
        p = self.params
        fr = p.iter_fractions or ([1.0] if len(p.eps_schedule) == 1 else [1.0 / len(p.eps_schedule)] * len(p.eps_schedule))
        iters = [max(1, math.ceil(f * p.n_iter)) for f in fr]
        iters[-1] = max(1, p.n_iter - sum(iters[:-1]))
        return list(zip(p.eps_schedule, iters))

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor) -> AttackResult:
        p = self.params
        self.flags = []
        lim = self.threat.limits(x)
        with torch.no_grad():
            logits0 = model(x)
        targets: list[Optional[torch.Tensor]] = [None]
        if p.n_target_classes > 0:
            n_cls = logits0.shape[1]
            if n_cls < 4:
                from medrobust.errors import ConfigError

                raise ConfigError(f"targeted DLR needs at least 4 classes, the model has {n_cls}; use n_target_classes: 0 with loss ce.")
            order = logits0.sort(dim=1)[1]
            targets = [order[:, -k] for k in range(2, min(p.n_target_classes, n_cls - 1) + 2)]
        loss_for = self._loss_for
        rows = getattr(self, "_row_ids", None)
        self._row_ids = None
        self._rows = rows.to(x.device) if rows is not None else torch.arange(x.shape[0], device=x.device)
        self._grads = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
        self._restart = 0
        best = WorstCase(x, self.task.score(logits0, y), loss_for(targets[0])(logits0, y, 0, p.n_iter))
        for tgt in targets:
            lf = loss_for(tgt)
            for r in range(p.restarts):
                if self.task.kind == "classification":
                    idx = torch.nonzero(best.score > 0.5).flatten()
                    if idx.numel() == 0:
                        break
                else:
                    idx = torch.arange(x.shape[0], device=x.device)
                sub_lim = lim if lim is None or lim[0].shape[0] == 1 else (lim[0][idx], lim[1][idx])
                tsub = tgt[idx] if tgt is not None else None
                self._restart = r
                self._run_stages(model, x[idx], y[idx], eps[idx], sub_lim, loss_for(tsub) if tgt is not None else lf, best, idx,
                                 early=tgt is None)
        return AttackResult(best.x, flags=list(self.flags), extra={"grad_evals": self._grads.cpu()})

    def _init_noise(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Random start per row, drawn from the row's own generator (the same whichever rows run together)."""
        from medrobust.utils import derive_seed

        out = torch.empty_like(x)
        for j, r in enumerate(self._rows[idx].tolist()):
            g = torch.Generator(device="cpu").manual_seed(derive_seed(self.params.seed if self.params.seed is not None else
                                                                      int(torch.randint(0, 2**31 - 1, (1,))), "apgd-init", r, self._restart))
            t = torch.rand(x.shape[1:], generator=g) * 2 - 1 if self.threat.norm == "Linf" else torch.randn(x.shape[1:], generator=g)
            out[j] = t.to(x.device, x.dtype)
        return out

    def _loss_for(self, target: Optional[torch.Tensor]) -> Callable:
        if target is None:
            fn = self.loss_fn
            return lambda logits, y, t, T: fn(self.task, logits, y, t, T)
        return lambda logits, y, t, T: dlr_targeted(logits, y, target)

    def _run_stages(self, model, x, y, eps, lim, lf, best: WorstCase, idx, early: bool = False) -> None:
        x_init = None
        stages = self._stages()
        for si, (mult, iters) in enumerate(stages):
            e = eps * mult
            if x_init is not None:
                x_init = self.threat.project(x_init, x, e, lim)
            last = si == len(stages) - 1
            x_init = self._single_run(model, x, y, e, iters, x_init, lf, lim, best if last else None, idx,
                                      stop=early and last and self.params.stop_at_floor)

    def _single_run(self, model, x, y, eps, n_iter, x_init, lf, lim, best: Optional[WorstCase], idx, stop: bool) -> torch.Tensor:
        norm = self.threat.norm
        rho = self.params.rho
        view = (-1, *([1] * (x.ndim - 1)))
        n_iter_2, n_iter_min, size_decr = (max(int(f * n_iter), 1) for f in (0.22, 0.06, 0.03))  # checkpoint schedule
        if x_init is None:
            t = self._init_noise(x, idx)
            x_adv = self.threat.project(x + eps.reshape(view) * _normalize(t, norm), x, eps, lim)
        else:
            x_adv = x_init.clone()

        def grad_at(xa: torch.Tensor, t: int):
            xa = xa.detach().requires_grad_(True)
            logits = model(xa)
            loss = lf(logits, y, t, n_iter)
            (g,) = torch.autograd.grad(loss.sum(), xa)
            self._grads[idx] += 1
            return logits.detach(), loss.detach(), g.detach()

        logits, loss, grad = grad_at(x_adv, 0)
        zero = (grad.reshape(grad.shape[0], -1).abs().sum(1) == 0)
        if zero.any():
            self.flags.append(f"zero_gradient: {int(zero.sum())} of {len(zero)} samples had an all-zero gradient at the start")
        if best is not None:
            best.update(x_adv, self.task.score(logits, y), loss, idx)
        x_best, grad_best, loss_best = x_adv.clone(), grad.clone(), loss.clone()
        step = 2.0 * eps.reshape(view).clone()
        x_old = x_adv.clone()
        loss_steps = torch.zeros(n_iter, x.shape[0], device=x.device, dtype=loss.dtype)
        counter3, k = 0, n_iter_2
        loss_best_last = loss_best.clone()
        reduced_last = torch.ones_like(loss_best)
        out = x_best  # full-size result; rows that stop early are written into it
        pos = torch.arange(x.shape[0], device=x.device)
        for i in range(n_iter):
            if stop and best is not None:
                done = best.score[idx] <= self.params.floor + 1e-12
                if bool(done.any()):  # these cases cannot get worse: stop spending gradients on them
                    if out is x_best:
                        out = x_best.clone()
                    out[pos[done]] = x_best[done]
                    keep = ~done
                    if not bool(keep.any()):
                        return out
                    x, y, eps = x[keep], y[keep], eps[keep]
                    if lim is not None and lim[0].shape[0] != 1:
                        lim = (lim[0][keep], lim[1][keep])
                    x_adv, x_best, grad_best, loss_best, x_old = x_adv[keep], x_best[keep], grad_best[keep], loss_best[keep], x_old[keep]
                    grad, loss, step = grad[keep], loss[keep], step[keep]
                    loss_steps, loss_best_last, reduced_last = loss_steps[:, keep], loss_best_last[keep], reduced_last[keep]
                    idx, pos = idx[keep], pos[keep]
            with torch.no_grad():
                grad2 = x_adv - x_old
                x_old = x_adv.clone()
                a = 0.75 if i > 0 else 1.0
                x1 = self.threat.project(x_adv + self.threat.step(grad, step.reshape(-1)), x, eps, lim)
                x1 = self.threat.project(x_adv + (x1 - x_adv) * a + grad2 * (1 - a), x, eps, lim)
                x_adv = x1
            logits, loss, grad = grad_at(x_adv, i + 1)
            with torch.no_grad():
                if best is not None:
                    best.update(x_adv, self.task.score(logits, y), loss, idx)
                loss_steps[i] = loss
                imp = loss > loss_best
                x_best[imp] = x_adv[imp]
                grad_best[imp] = grad[imp]
                loss_best[imp] = loss[imp]
                counter3 += 1
                if counter3 == k:
                    reduced_last = _halve_at_checkpoint(loss_steps, i, k, rho, reduced_last, loss_best_last, loss_best,
                                                        step, (x_adv, x_best), (grad, grad_best))
                    loss_best_last = loss_best.clone()
                    k = max(k - size_decr, n_iter_min)
                    counter3 = 0
        if out is x_best:
            return x_best
        out[pos] = x_best
        return out
