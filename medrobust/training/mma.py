"""MMA: Max-Margin Adversarial training (Ding et al., ICLR 2020), from the official code
(``BorealisAI/mma_training`` ``trainer.py::train_one_batch``, ``anpgd.py``, ``config.py``).

Per sample, the shortest successful perturbation along a PGD direction (AN-PGD):

1. clean pass (train mode, with gradient): the clean loss and which samples are correct
   (classification: argmax; segmentation: Dice >= the training config's ``success`` threshold);
2. for the correct samples, PGD at the per-sample radius ``eps_i = max(min_eps, last eps*_i)``
   (state by sample id), ``steps`` steps of ``step_scale * eps_i / steps`` (official 2.5 / 10),
   random start, soft-logit-margin attack loss (segmentation: the task loss, as IMA);
3. bisection (``search_steps``, official 10) on the radius along ``u = (x_pgd - x) / eps_i``:
   the bracket is ``[0, eps_i]`` if ``x_pgd`` already fails, else ``[eps_i, 1.05 d_max]``; it returns
   the midpoint ``eps*`` and ``x' = x + eps* u`` (IMA's :func:`~medrobust.training.ima.bisect`);
4. loss ``(1 - c) [sum_{correct, eps* < d_max} L(x') + sum_{wrong} L(x)] / B + c L_clean``,
   ``c = clean_coeff`` (official 1/3; OMMA: 0).

Segmentation adaptation: one radius per image (2D slice or 3D patch) with the Dice-threshold
success test; ``d_max`` in the method's ``units`` (per-pixel RMS for L2 on z-scored images).
Not copied: ``x + eps* u`` left unclipped to the data range (the threat model's bounds apply).
Cost per step: 1 + K + 1 + NB + 1 forward, 1 + K + 1 backward (clean and adversarial graphs).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from medrobust.attacks.base import model_mode
from medrobust.threat import budget_to_input
from medrobust.training.base import Method, MethodParams, StepContext, StepOutput, register_method
from medrobust.training.common import ascend
from medrobust.training.ima import bisect
from medrobust.training.state import SampleState


class MMAParams(MethodParams):
    d_max: float = Field(..., gt=0, description="hinge_maxeps: radii at or beyond it do not enter the loss (units)")
    units: Literal["input", "rms", "native"] = "input"
    min_eps: float = Field(0.005, gt=0, description="smallest PGD radius (units)")
    steps: int = Field(10, ge=1)
    step_scale: float = Field(2.5, gt=0, description="PGD step = step_scale * eps_i / steps")
    search_steps: int = Field(10, ge=1, description="bisection steps on the radius")
    search_max_factor: float = Field(1.05, gt=1, description="the bisection's upper end is this times d_max")
    clean_coeff: float = Field(1 / 3, ge=0, le=1, description="weight of the clean loss (OMMA: 0)")
    attack_loss: str = Field("auto", description="auto: slm (classification), task loss (segmentation)")
    attack_mode: Literal["eval", "train"] = "eval"


@register_method
class MMA(Method):
    name = "mma"
    Params = MMAParams
    description = "max-margin AT: per-sample shortest successful perturbation (PGD + bisection on the radius)"

    auto_attack_loss = "margin"

    def passes(self) -> tuple[float, float]:
        p = self.params
        return (p.steps + p.search_steps + 3, p.steps + 2)

    def setup(self, state: SampleState, model) -> None:
        state.register("mma_eps", 0.0)

    def compute(self, ctx: StepContext, batch: dict[str, Any]) -> StepOutput:
        p = self.params
        x, y, ids = batch["image"], batch["label"], batch["id"]
        unit = budget_to_input(1.0, p.units, self.threat.norm, batch, x)
        logits_clean = ctx.model(x)
        loss_clean = self.task.loss(logits_clean, y)
        ok = self.task.success(logits_clean.detach(), y)
        b = len(x)
        eps_star = torch.full((b,), float("nan"), dtype=torch.float64)
        use_adv = torch.zeros(b, dtype=torch.bool, device=x.device)
        loss_mma = (loss_clean * (~ok).to(loss_clean.dtype)).sum()
        logits_adv = None
        if ok.any():
            idx = torch.nonzero(ok).flatten()
            prev = ctx.state.get("mma_eps", [ids[i] for i in idx.tolist()]).to(x.device)
            e_units = prev.clamp_min(p.min_eps)
            x_adv, found = self.search(ctx.raw_model, x[idx], y[idx], e_units, unit[idx])
            ctx.state.set("mma_eps", [ids[i] for i in idx.tolist()], found)
            eps_star[idx.cpu()] = found.double().cpu()
            keep = found < p.d_max
            use_adv[idx[keep]] = True
            if keep.any():
                logits_adv = ctx.model(x_adv[keep])
                loss_mma = loss_mma + self.task.loss(logits_adv, y[idx[keep]]).sum()
        loss = (1 - p.clean_coeff) * loss_mma / b + p.clean_coeff * loss_clean.mean()
        found_mean = float(eps_star[~torch.isnan(eps_star)].mean()) if (~torch.isnan(eps_star)).any() else float("nan")
        tensors = {"logits_clean": logits_clean, "mma_eps": eps_star, "mma_in_loss": use_adv}
        if logits_adv is not None:
            tensors["logits_adv"] = logits_adv
        return StepOutput(loss, {"loss_clean": float(loss_clean.mean().detach()), "clean_correct": float(ok.float().mean()),
                                 "adv_frac": float(use_adv.float().mean()), "state_eps_mean": found_mean}, tensors)

    def search(self, m, x: torch.Tensor, y: torch.Tensor, e_units: torch.Tensor, unit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """AN-PGD on correct samples: PGD at ``e_units`` then bisection on the radius along its direction.

        Args:
            m: the network (attacked in ``attack_mode``, parameter gradients off).
            x, y: the samples and targets.
            e_units: ``(B,)`` PGD radii in the method's units.
            unit: ``(B,)`` input-space size of one method unit per sample.

        Returns:
            ``(x', eps*)``: points ``x + eps* u`` inside the threat's bounds and the radii ``eps*`` (units).
        """
        p = self.params
        e_in = (e_units * unit).to(x.dtype)
        lim = self.threat.limits(x)
        with model_mode(m, p.attack_mode):
            start = x + self.threat.random_delta(x, e_in)
            x_pgd = ascend(m, self.threat, x, e_in, p.steps, p.step_scale / p.steps,
                           lambda lg: self.attack_loss(self.task, lg, y, 0, p.steps), start)
            with torch.no_grad():
                u = (x_pgd - x) / e_in.reshape(-1, *([1] * (x.ndim - 1))).clamp_min(1e-12)
                at = lambda r: self.threat.clip(x + r.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1))) * u, lim)  # noqa: E731
                fails = ~self.task.success(m(x_pgd), y)
                hi_max = torch.full_like(e_units, p.search_max_factor * p.d_max)
                lo = torch.where(fails, torch.zeros_like(e_units), e_units)
                hi = torch.where(fails, e_units, hi_max)
                found = bisect(lambda r: self.task.success(m(at(r)), y), lo, hi, p.search_steps, "midpoint")
                x_adv = at(found)
        return x_adv.detach(), found

    def end_epoch(self, ctx: StepContext) -> dict[str, float]:
        e = ctx.state.tensors["mma_eps"]
        seen = e > 0
        return {"state_eps_mean": float(e[seen].mean()) if seen.any() else float("nan"),
                "state_eps_at_max": float((e[seen] >= self.params.d_max).double().mean()) if seen.any() else float("nan")}
