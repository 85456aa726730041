"""IMA: Increasing-Margin Adversarial training (Ma & Liang, CMPB 2023), from the official code.

Per-sample margin ``E_i`` (state by sample id; one per image or 2D slice for segmentation),
initialised to ``delta``. Each step:

1. clean pass: task loss ``L_clean`` and clean success ``ok`` (segmentation official: every
   clean sample counts as correct, ``clean_check: always``);
2. PGD with per-sample radius ``E_i``: K steps of ``step_size * E_i`` (official 4 E / K = 0.2 E),
   random start on the sphere of radius ``E_i`` (classification) or ``max(E_i - delta, delta)``
   (segmentation); every iterate (start included) is tested with the success predicate
   (argmax, or Dice >= 0.6 max over foreground classes), recording the last correct iterate before
   the first crossing, the first wrong one, and how many iterates were wrong (``advc``);
3. bisection (10 steps) onto the boundary on the bracket ``x_to_final`` ([x, x_K], classification)
   or ``path`` ([last correct, first wrong], segmentation), returning the ``midpoint`` (CIFAR-10,
   segmentation) or the ``inside`` end (PathMNIST / COVID-19); samples without a crossing keep
   the final PGD point;
4. loss ``(1 - beta) L_clean + beta L_adv``, beta = 0.5, with ``L_adv`` over the samples that are
   clean-correct and crossed (classification) or all samples (segmentation,
   ``include_no_boundary``), divided by the batch size;
5. bookkeeping: for crossed samples ``E_new = (E_new + ||x' - x||) / 2``.

End of epoch (visited samples only): ``E += delta`` where no boundary was found and the clean
sample was correct; ``E = E_new`` where one was found; misclassified samples keep ``E``; clip to
``[0, eps_max]``. The margins of every sample are written each epoch (``margins/epoch_NNN.csv``)
and drawn (``margins_over_epochs.png``).

Not copied from the official code: clipping z-scored inputs to [0, 1] (the threat model's
bounds apply), the constant learning rate (the engine's schedule applies), the fold mismatch.
Choices where the official code couples samples or differs:

- ``success_mode`` (default ``eval``; official ``train``, the attack's mode): the crossing tests,
  the bisection and the clean check run in eval mode, so with BatchNorm a sample's verdict does
  not depend on the other samples of its batch (:mod:`medrobust.training.batchnorm`). The PGD
  steps keep ``attack_mode`` (official ``train``); with a model whose train and eval modes differ
  (running statistics, dropout) the tests cost one extra no-grad forward per iterate.
- the bisection runs on the whole batch, as in the official code (uncrossed samples ride along
  on ``[x, x_K]`` and keep ``x_K``).
- ``empty_dice`` (segmentation): a slice with empty ground truth and empty prediction scores
  Dice 1 and counts as correct (``one``); the official ``getOnlineDiceMax`` gives 0 (``zero``).

Cost per step: 1 + (K + 1) + NB + 1 forward (+ K + 2 with separate success tests); K
input-gradient backward passes + the update through the clean and adversarial graphs (K + 2).
"""

from __future__ import annotations

from typing import Any, Literal, Optional

import torch
from pydantic import Field

from medrobust.attacks.base import model_mode
from medrobust.attacks.loop import projected_gradient
from medrobust.config import SuccessConfig
from medrobust.tasks import SegmentationTask
from medrobust.threat import budget_to_input, lp_norm
from medrobust.training.batchnorm import mode_dependent
from medrobust.training.base import Method, MethodParams, StepContext, StepOutput, register_method
from medrobust.training.state import SampleState


class IMAParams(MethodParams):
    delta: float = Field(..., gt=0, description="margin increment per epoch = initial margin (units)")
    eps_max: float = Field(..., gt=0, description="upper bound of the margin (units)")
    units: Literal["input", "rms", "native"] = "input"
    steps: int = Field(20, ge=1)
    step_size: float = Field(0.2, gt=0, description="PGD step as a fraction of the margin (official 4/K with K=20)")
    bisection_steps: int = Field(10, ge=0)
    beta: float = Field(0.5, ge=0, le=1)
    attack_loss: str = Field("auto", description="auto: slm (classification), task loss (segmentation)")
    attack_mode: Literal["eval", "train"] = "train"
    success_mode: Literal["eval", "train"] = Field("eval", description="mode of the success tests (crossing, bisection, clean check); "
                                                  "official: train (= attack_mode), coupled through BatchNorm")
    empty_dice: Literal["one", "zero"] = Field("one", description="segmentation: Dice of a slice with empty ground truth and "
                                               "empty prediction (official getOnlineDiceMax: zero)")
    bracket: Optional[Literal["path", "x_to_final"]] = None
    returned_point: Optional[Literal["midpoint", "inside"]] = None
    start_radius: Optional[Literal["margin", "margin_minus_delta"]] = None
    include_no_boundary: Optional[bool] = None
    clean_check: Optional[Literal["task", "always"]] = None
    success_threshold: float = Field(0.6, ge=0, le=1, description="segmentation: Dice needed to count as correct")
    success_reduction: Literal["mean", "max"] = "max"
    adv_normalisation: Literal["batch", "count"] = "batch"


SEG_DEFAULTS = {"bracket": "path", "returned_point": "midpoint", "start_radius": "margin_minus_delta",
                "include_no_boundary": True, "clean_check": "always"}
CLS_DEFAULTS = {"bracket": "x_to_final", "returned_point": "midpoint", "start_radius": "margin",
                "include_no_boundary": False, "clean_check": "task"}


def ima_update_margin(E: torch.Tensor, E_new: torch.Tensor, no_boundary: torch.Tensor, correct: torch.Tensor,
                      visited: torch.Tensor, delta: float, eps_max: float) -> torch.Tensor:
    """End-of-epoch margin rule of the official ``IMA_update_margin`` (visited samples only)."""
    out = E.clone()
    grow = visited & no_boundary & correct
    found = visited & ~no_boundary & correct
    out[grow] = E[grow] + delta
    out[found] = E_new[found]
    return out.clamp(0.0, eps_max)


class _EmptyIsWrong:
    """The official ``getOnlineDiceMax`` rule: a slice with no foreground in ground truth and
    prediction scores Dice 0 (wrong) instead of 1."""

    def __init__(self, task: SegmentationTask) -> None:
        self.task = task

    def success(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        d = self.task.class_dice(logits, target)
        fg = d[:, 1:] if d.shape[1] > 1 else d
        return self.task.success_from_dice(d) & ~torch.isnan(fg).all(1)


class FirstCrossing:
    """Observer of the PGD path (:func:`~medrobust.attacks.loop.projected_gradient`): per sample, the
    last correct iterate before the first wrong one (``last_ok``), the first wrong one (``first_wrong``;
    both ``x`` where none) and how many iterates were wrong (``advc``).

    Args:
        x: the clean inputs (the iterate before the start).
        success: ``success(x_t, logits_t) -> (B,)`` bool, the success predicate at an iterate.
    """

    def __init__(self, x: torch.Tensor, success) -> None:
        self.success = success
        self.last_ok = x.clone()
        self.first_wrong = x.clone()
        self.found = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        self.advc = torch.zeros(len(x), dtype=torch.long, device=x.device)
        self.prev = x.clone()

    def __call__(self, t: int, xa: torch.Tensor, logits: torch.Tensor, loss: torch.Tensor) -> None:
        wrong = ~self.success(xa, logits)
        self.advc += wrong.long()
        new = wrong & ~self.found
        self.last_ok[new] = self.prev[new]
        self.first_wrong[new] = xa[new]
        self.found |= new
        self.prev = xa.clone()


def bisect(success_fn, a: torch.Tensor, b: torch.Tensor, steps: int, returned: str) -> torch.Tensor:
    """Bisection between ``a`` (correct) and ``b`` (wrong) per sample; midpoint or inside end."""
    view = (-1, *([1] * (a.ndim - 1)))
    for _ in range(steps):
        mid = (a + b) / 2
        ok = success_fn(mid).reshape(view)
        a = torch.where(ok, mid, a)
        b = torch.where(ok, b, mid)
    return (a + b) / 2 if returned == "midpoint" else a


@register_method
class IMA(Method):
    name = "ima"
    Params = IMAParams
    description = "increasing-margin adversarial training: per-sample margin grown until the attack finds the boundary"

    auto_attack_loss = "margin"

    def prepare(self) -> None:
        params, task = self.params, self.task
        defaults = SEG_DEFAULTS if task.kind == "segmentation" else CLS_DEFAULTS
        self.opt = {k: (getattr(params, k) if getattr(params, k) is not None else v) for k, v in defaults.items()}
        if task.kind == "segmentation":
            self.judge = SegmentationTask(task.num_classes, task.loss_cfg,
                                          SuccessConfig(threshold=params.success_threshold, reduction=params.success_reduction))
            if params.empty_dice == "zero":
                self.judge = _EmptyIsWrong(self.judge)
        else:
            self.judge = task
        self.success_mode = params.success_mode
        self._separate = False  # set in setup: success tests need their own forward pass
        self._epoch_arrays: dict[str, torch.Tensor] = {}

    def passes(self) -> tuple[float, float]:
        p = self.params
        extra = (p.steps + 1 + (self.opt["clean_check"] != "always")) if self._separate else 0
        return (1 + (p.steps + 1) + p.bisection_steps + 1 + extra, p.steps + 2)

    def describe_options(self) -> dict[str, Any]:
        return dict(self.opt)

    def setup(self, state: SampleState, model) -> None:
        state.register("ima_margin", self.params.delta)
        self._separate = self.params.success_mode != self.params.attack_mode and mode_dependent(model)

    def start_epoch(self, ctx: StepContext) -> None:
        n = len(ctx.state)
        self._epoch_arrays = {"E_new": ctx.state.tensors["ima_margin"].clone(), "no_boundary": torch.zeros(n, dtype=torch.bool),
                              "correct": torch.zeros(n, dtype=torch.bool), "visited": torch.zeros(n, dtype=torch.bool)}

    def compute(self, ctx: StepContext, batch: dict[str, Any]) -> StepOutput:
        p = self.params
        x, y, ids = batch["image"], batch["label"], batch["id"]
        rows = ctx.state.rows(ids)
        unit = budget_to_input(1.0, p.units, self.threat.norm, batch, x).to(torch.float64)
        E = ctx.state.tensors["ima_margin"][rows].to(x.device)
        E_in = (E * unit).to(x.dtype)
        lim = self.threat.limits(x)

        logits_clean = ctx.model(x)
        loss_clean = self.task.loss(logits_clean, y)
        m = ctx.raw_model
        # success tests in success_mode; a second forward only where the modes differ in effect
        self._separate = p.success_mode != p.attack_mode and mode_dependent(m)
        if self.opt["clean_check"] == "always":
            ok = torch.ones(len(x), dtype=torch.bool, device=x.device)
        elif p.success_mode == "train" or not mode_dependent(m):
            ok = self.judge.success(logits_clean.detach(), y)
        else:
            with torch.no_grad(), model_mode(m, p.success_mode):
                ok = self.judge.success(m(x), y)

        x_adv, advc = self._attack(m, x, y, E_in, (p.delta * unit).to(x.dtype), lim)

        crossed = advc > 0
        sel = crossed & ok if not self.opt["include_no_boundary"] else ok
        logits_adv = ctx.model(x_adv)
        loss_adv_each = self.task.loss(logits_adv, y)
        denom = len(x) if p.adv_normalisation == "batch" else max(1, int(sel.sum()))
        loss_adv = (loss_adv_each * sel.to(loss_adv_each.dtype)).sum() / denom
        loss = (1 - p.beta) * loss_clean.mean() + p.beta * loss_adv

        with torch.no_grad():
            dist = (lp_norm(x_adv - x, self.threat.norm).double() / unit).cpu()
            arr = self._epoch_arrays
            r = rows
            upd = (crossed & ok).cpu()
            arr["E_new"][r[upd]] = (arr["E_new"][r[upd]] + dist[upd]) / 2
            arr["no_boundary"][r] = ~crossed.cpu()
            arr["correct"][r] = ok.cpu()
            arr["visited"][r] = True
        return StepOutput(loss, {"loss_clean": float(loss_clean.mean().detach()), "loss_adv": float(loss_adv.detach()),
                                 "crossed_frac": float(crossed.float().mean()), "state_margin_mean": float(E.mean())},
                          {"logits_clean": logits_clean, "logits_adv": logits_adv})

    def _attack(self, m, x, y, E_in, delta_in, lim) -> tuple[torch.Tensor, torch.Tensor]:
        """PGD along the margin with first-crossing tracking, then bisection; returns (x', advc)."""
        p = self.params
        r0 = E_in if self.opt["start_radius"] == "margin" else torch.maximum(E_in - delta_in, delta_in)
        start = x + self.threat.random_delta(x, r0, "sphere")
        track = FirstCrossing(x, lambda xa, logits: self._success(m, xa, y) if self._separate else self.judge.success(logits, y))
        x_final = projected_gradient(m, self.threat, x, E_in, E_in * p.step_size, p.steps,
                                     lambda logits, t: self.attack_loss(self.task, logits, y, t, p.steps), start,
                                     observe=track, evaluate_last=True, limits=lim, mode=p.attack_mode)
        last_ok, first_wrong, advc = track.last_ok, track.first_wrong, track.advc
        out = x_final.clone()
        crossed = advc > 0
        if crossed.any() and p.bisection_steps > 0:
            # the whole batch is bisected, as in the official code, so train-mode BatchNorm sees the
            # same batch as during PGD; samples without a crossing ride along on [x, x_K] and keep x_K
            view = (-1, *([1] * (x.ndim - 1)))
            cv = crossed.reshape(view)
            if self.opt["bracket"] == "path":
                a, b = torch.where(cv, last_ok, x), torch.where(cv, first_wrong, x_final)
            else:
                a, b = x, x_final
            with torch.no_grad():
                res = bisect(lambda xx: self._success(m, xx, y), a, b, p.bisection_steps, self.opt["returned_point"])
            out[crossed] = res[crossed]
        elif crossed.any():
            out[crossed] = first_wrong[crossed]
        return out.detach(), advc

    def _success(self, m, xx: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The success predicate on ``m(xx)`` in ``success_mode`` (no gradient)."""
        with torch.no_grad(), model_mode(m, self.params.success_mode):
            return self.judge.success(m(xx), y)

    def end_epoch(self, ctx: StepContext) -> dict[str, float]:
        arr = self._epoch_arrays
        E = ctx.state.tensors["ima_margin"]
        new = ima_update_margin(E, arr["E_new"], arr["no_boundary"], arr["correct"], arr["visited"], self.params.delta,
                                self.params.eps_max)
        ctx.state.tensors["ima_margin"] = new
        if ctx.is_main and ctx.run_dir is not None:
            self._write_margins(ctx, new)
        v = arr["visited"]
        return {"state_margin_mean": float(new[v].mean()) if v.any() else float("nan"),
                "state_margin_median": float(new[v].median()) if v.any() else float("nan"),
                "state_margin_at_max": float((new[v] >= self.params.eps_max - 1e-9).double().mean()) if v.any() else float("nan"),
                "state_boundary_found": float((~arr["no_boundary"][v]).double().mean()) if v.any() else float("nan")}

    def _write_margins(self, ctx: StepContext, E: torch.Tensor) -> None:
        from pathlib import Path

        import pandas as pd

        from medrobust.utils import write_text_atomic

        d = Path(ctx.run_dir) / "margins"
        df = pd.DataFrame({"id": ctx.state.ids, "margin": E.numpy(), "visited": self._epoch_arrays["visited"].numpy()})
        write_text_atomic(d / f"epoch_{ctx.epoch + 1:03d}.csv", df.to_csv(index=False))
        try:
            from medrobust.plotting import plot_margin_history

            files = sorted(f for f in d.glob("epoch_*.csv") if int(f.stem.split("_")[1]) <= ctx.epoch + 1)
            hist = {int(f.stem.split("_")[1]): pd.read_csv(f)["margin"].to_numpy() for f in files}
            plot_margin_history(hist, Path(ctx.run_dir) / "margins_over_epochs.png", self.params.units, self.params.eps_max)
        except Exception as exc:  # noqa: BLE001 - a plot never stops training
            import logging

            logging.getLogger(__name__).warning("could not draw the margin history: %s", exc)

